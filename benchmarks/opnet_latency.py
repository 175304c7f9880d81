"""Batch-1 CPU latency of OpNet (MobileNetV1 and ResNet18 backbones) at 129x129.

The paper reports about 5 ms or less for the MobileNet variant on a desktop CPU. This runs
the whole :class:`~hpelib.methods.opnet.OpNetModel` (backbone + every head + covariances,
eval mode, ``torch.inference_mode``) on one monochrome crop with ``torch.set_num_threads``,
after a warm-up, and prints the median (and 10/90th percentiles) of ``--runs`` calls as a
Markdown table, with the median process CPU time per call (a contention-free figure when
``--threads 1``; on a busy host the wall-clock numbers include waiting for a core).

Each backbone runs in up to four forms (``--variants``): ``eager`` (the module as trained),
``channels_last`` (NHWC weights and input: oneDNN's preferred layout), ``jit`` (traced,
frozen and ``torch.jit.optimize_for_inference``: conv + BN folded, oneDNN-fused ops) and
``onnx`` (the graph ``hpelib export`` writes, :func:`hpelib.export.module_to_onnx`, run by
onnxruntime's CPU provider with ``--threads`` intra-op threads and graph optimisations on;
needs ``pip install 'hpelib[onnx]'``). Every form gets the same input and thread count and
must reproduce the eager rotation before it is timed.

    python benchmarks/opnet_latency.py                 # 2 threads, 129 px
    python benchmarks/opnet_latency.py --threads 1 --runs 500
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import time
import warnings

import torch

from hpelib.methods.opnet import OpNetModel, synthetic_keypoint_model
from hpelib.methods.opnet.model import DeformableKeypoints
from hpelib.nn import count_parameters


def measure(model: torch.nn.Module, image: torch.Tensor, warmup: int, runs: int) -> tuple[list[float], list[float]]:
    """Per-call wall-clock and process CPU times in ms (CPU time summed over threads: with
    one thread it is the latency on an idle core, robust to other processes on the host)."""
    wall, cpu = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            model(image)
        for _ in range(runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            model(image)
            wall.append((time.perf_counter() - start) * 1e3)
            cpu.append((time.process_time() - start_cpu) * 1e3)
    return wall, cpu


VARIANTS = ("eager", "channels_last", "jit", "onnx")


class OnnxRuntimeModel:
    """An onnxruntime session with the torch model's call convention: ``(B, C, S, S)``
    tensor in, dict of output tensors out (zero-copy views of onnxruntime's arrays)."""

    def __init__(self, model: torch.nn.Module, image: torch.Tensor, threads: int) -> None:
        import onnxruntime as ort

        from hpelib.export import module_to_onnx

        # A batch of 2 in the trace keeps the graph's batch dimension free.
        proto, self.keys = module_to_onnx(model, image.expand(2, -1, -1, -1).contiguous())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # the torch forms' torch.set_num_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(None, {"image": image.numpy()})
        return {k: torch.from_numpy(v) for k, v in zip(self.keys, outputs, strict=True)}


def prepare(
    model: torch.nn.Module, image: torch.Tensor, variant: str, threads: int = 1
) -> tuple[torch.nn.Module | OnnxRuntimeModel, torch.Tensor]:
    """The deployable form of an eval-mode model (and its input layout) for one variant."""
    if variant == "eager":
        return model, image
    if variant == "channels_last":
        image = image.contiguous(memory_format=torch.channels_last)
        return model.to(memory_format=torch.channels_last), image
    if variant == "jit":
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            traced = torch.jit.trace(model, image, strict=False)  # dict output needs strict=False
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced)), image
    if variant == "onnx":
        with torch.inference_mode(False), torch.no_grad():
            return OnnxRuntimeModel(model, image, threads), image
    raise ValueError(f"unknown variant {variant!r}, expected one of {VARIANTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["mobilenetv1_100", "resnet18"])
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    if "onnx" in args.variants and importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed (pip install 'hpelib[onnx]'): no onnx rows\n")
        args.variants = [v for v in args.variants if v != "onnx"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    keypoints = DeformableKeypoints(*synthetic_keypoint_model(10))
    image = torch.rand(1, 1, args.size, args.size) - 0.5
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, input 1x1x{args.size}x{args.size}, median of {args.runs} runs\n")  # fmt: skip
    print("| backbone | form | parameters | median [ms] | p10 [ms] | p90 [ms] | median CPU time [ms] | goal <= 5 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.backbones:
        for variant in args.variants:
            model = OpNetModel(name, in_chans=1, keypoints=keypoints).eval()
            params = count_parameters(model) / 1e6
            with torch.inference_mode():  # before `prepare`, which may convert `model` in place
                reference = model(image)["rotation"]
            runnable, x = prepare(model, image, variant, args.threads)
            with torch.inference_mode():  # a faster form must still compute the same pose
                torch.testing.assert_close(runnable(x)["rotation"], reference, atol=1e-4, rtol=1e-4)
            wall, cpu = measure(runnable, x, args.warmup, args.runs)
            t = sorted(wall)
            med = statistics.median(t)
            p10, p90 = t[len(t) // 10], t[(9 * len(t)) // 10]
            ok = "yes" if med <= 5.0 else "no"
            print(
                f"| {name} | {variant} | {params:.2f} M | {med:.2f} | {p10:.2f} | {p90:.2f} "
                f"| {statistics.median(cpu):.2f} | {ok} |"
            )


if __name__ == "__main__":
    main()
