"""Training-speed benchmark: our training step against a bare PyTorch loop, side by side in one process.

    python -m phases.bench.training_step                    # every arch at width 1 and 0.25 (make bench)
    python -m phases.bench.training_step --archs vgg8 resnet18 --widths 0.25 --repeats 5

For each arch and width: the same model, optimizer (the run's SGD), batch size and batches, timed
alternately with our `TrainingStep` and with the four lines of a bare loop; the table shows images/s
of each, their ratio, and our achieved GFLOP/s as a fraction of this machine's measured matmul rate.
FLOPs are nominal (torch's FlopCounterMode, direct convolution): oneDNN's and cuDNN's convolution
algorithms can need fewer, so a share above 100% is possible and not an error.
Inputs are random CIFAR-shaped batches (3x32x32, 10 classes): speed does not depend on pixel values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from phases.config.compose import compose
from phases.training.data import DatasetInfo
from phases.training.device import autocast, place_model, resolve_device, uses_channels_last
from phases.training.models import MODELS, build_model
from phases.training.optimizers import build_optimizer
from phases.training.train import TrainingStep

INFO = DatasetInfo(channels=3, classes=10, image_size=32)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Best-of GFLOP/s of a square matmul in the precision training uses (float32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    left, right = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats):
        synchronise(device)
        started = time.perf_counter()
        left @ right
        synchronise(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def bare_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
    """What a researcher writes by hand: the reference our step is compared with."""

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad()
        with autocast(device):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def images_per_second(step: Callable, batches: list, steps: int, device: torch.device) -> float:
    synchronise(device)
    started = time.perf_counter()
    for index in range(steps):
        loss = step(*batches[index % len(batches)])
    loss.item()  # waits for the last step
    return steps * len(batches[0][1]) / (time.perf_counter() - started)


def benchmark(arch: str, width: float, device: torch.device, batch_size: int, seconds: float, repeats: int) -> dict:
    cfg = compose([f"arch={arch}", f"arch.width={width}"])
    torch.manual_seed(0)
    model = place_model(build_model(cfg.arch, INFO), device).train()
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    memory_format = torch.channels_last if uses_channels_last(device) else torch.contiguous_format
    batches = [(torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format),
                torch.randint(0, INFO.classes, (batch_size,), device=device)) for _ in range(4)]
    ours, bare = TrainingStep(model, optimizer, device), bare_step(model, optimizer, device)
    with FlopCounterMode(display=False) as counter:
        ours(*batches[0])
    flops_per_step = counter.get_total_flops()
    images_per_second(bare, batches, 2, device)  # warm-up: allocator, cuDNN autotuning, caches
    # Enough steps per timing to last `seconds`, so fast models are not timed on a few milliseconds.
    steps = max(2, round(seconds * images_per_second(bare, batches, 2, device) / batch_size))
    timings: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(repeats):  # alternate, so drifts of the machine's speed hit both alike
        timings["ours"].append(images_per_second(ours, batches, steps, device))
        timings["bare"].append(images_per_second(bare, batches, steps, device))
    ours_rate, bare_rate = statistics.median(timings["ours"]), statistics.median(timings["bare"])
    return {"arch": arch, "width": width, "steps": steps, "ours": ours_rate, "bare": bare_rate,
            "ratio": ours_rate / bare_rate, "gflops": flops_per_step / batch_size * ours_rate / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--widths", nargs="+", type=float, default=[1.0, 0.25])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timing (at least 2 steps)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timings per method; the median counts")
    arguments = parser.parse_args()
    device = resolve_device(arguments.device)
    peak = matmul_rate(device)
    print(f"device {device}, batch {arguments.batch_size}, {arguments.repeats} alternating timings of about "
          f"{arguments.seconds:g} s per method (median shown); matmul rate {peak:.0f} GFLOP/s")
    header = (f"{'arch':<9} {'width':>5} {'steps':>5} {'ours img/s':>11} {'bare img/s':>11} {'ours/bare':>9} "
              f"{'GFLOP/s':>8} {'of matmul':>9}")
    print(header)
    print("-" * len(header))
    for arch in arguments.archs:
        for width in arguments.widths:
            row = benchmark(arch, width, device, arguments.batch_size, arguments.seconds, arguments.repeats)
            print(f"{arch:<9} {width:>5} {row['steps']:>5} {row['ours']:>11.0f} {row['bare']:>11.0f} "
                  f"{row['ratio']:>9.3f} {row['gflops']:>8.1f} {row['gflops'] / peak:>9.1%}", flush=True)


if __name__ == "__main__":
    main()
