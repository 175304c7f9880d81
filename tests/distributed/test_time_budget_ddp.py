"""TimeBudgetLR under DDP (gloo, 2 CPU processes): rank 0's clock sets every rank's learning
rate and stop, even when the ranks' clocks disagree (different rates would make the
replicas diverge; different stops would hang the next all-reduce)."""

from __future__ import annotations

import json
import math

import pytest

from tests.distributed.launch import run_module


def test_ranks_step_with_rank_zero_schedule_and_stop_together(tmp_path):
    run_module("tests.distributed._time_budget", [str(tmp_path)], tmp_path, timeout=600)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Rank 0's clock: 1 s per step, budget 10 s -> 10 steps at 0.1 * (1 + cos(pi k / 10)) / 2.
    expected = [0.1 * (1 + math.cos(math.pi * k / 10)) / 2 for k in range(10)]
    for rank in ranks:
        assert rank["steps"] == 10
        assert rank["lrs"] == pytest.approx(expected)
