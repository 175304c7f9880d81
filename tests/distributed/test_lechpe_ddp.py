"""LEC-HPE under 2-process CPU DDP (gloo): DEC's cluster frequencies ``f_j = sum_i q_ij``
are summed over the samples of both ranks, so each rank's target distribution is the one a
single device computes on the global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.distributed.launch import run_module

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed gloo unavailable",
)


@pytest.mark.slow  # two interpreter starts: ~40 s on the loaded 2-core machine
def test_cluster_frequencies_are_summed_over_both_ranks(tmp_path: Path):
    run_module("tests.distributed._lechpe_ddp", [str(tmp_path)], tmp_path)
    r0, r1 = (torch.load(tmp_path / f"lechpe_freq_rank{r}.pt") for r in range(2))
    assert r0["world_size"] == 2 and r1["world_size"] == 2
    assert len(r0["records"]) == len(r1["records"]) == 2  # 32 samples / (2 ranks x 8)
    for (local0, used0), (local1, used1) in zip(r0["records"], r1["records"], strict=True):
        assert not torch.allclose(local0, local1)  # the ranks hold different samples
        torch.testing.assert_close(used0, local0 + local1)
        torch.testing.assert_close(used1, used0)
