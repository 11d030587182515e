"""Benchmark the registered slice encoders on this machine: train-step and inference images/s.

For every encoder in ``ich3d.models.encoder.ENCODERS`` (plus MONAI's default ResNet-18 stem, to show
what the 2-D stem saves), or the ``timm/<model>`` backbones given with ``--encoders``, and every image size: parameters, inference images/s in the default
(NCHW) and channels_last memory formats, and train-step images/s (forward, weighted BCE on a
linear head, backward, AdamW step) in the faster of the two formats. Each figure runs one warm-up
iteration, then steps until ``--seconds`` have passed (at least one), so slow networks get fewer; the figure is
batch / median step time.

Run (glibc tunables as in docs/design.md §7, they must be set before Python starts)::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 MALLOC_TOP_PAD_=67108864 \\
        python scripts/bench_encoders.py --write BENCHMARKS.md
    python scripts/bench_encoders.py --encoders timm/resnet18 timm/tf_efficientnet_b0 \
        --section "## Encoders: timm backbones" --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from benchmarks_md import write_section  # noqa: E402  (scripts/ is on sys.path when run)
from rich.console import Console
from rich.table import Table

from ich3d.constants import LABELS
from ich3d.models.encoder import ENCODERS, build_encoder, check_encoder_name
from ich3d.training.losses import WeightedBCELoss

MALLOC_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
SECTION = "## Encoders"


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: a registered encoder with optional keyword arguments."""

    label: str
    name: str
    kwargs: dict


@dataclass(frozen=True)
class Result:
    variant: Variant
    size: int
    params_m: float
    features: int
    infer_nchw: float
    infer_cl: float
    train: float
    train_format: str
    cpu_share: float


def variants(names: list[str], with_monai_default: bool) -> list[Variant]:
    """The registered encoders, plus ResNet-18 with MONAI's default stride-1 stem when asked."""
    rows = [Variant(name, name, {}) for name in names]
    if with_monai_default and "resnet18" in names:
        rows.insert(names.index("resnet18") + 1,
                    Variant("resnet18 (MONAI default conv1_t_stride=1)", "resnet18", {"conv1_t_stride": 1}))
    return rows


class CpuShare:
    """Process CPU time over (wall time x threads) across measurements: near 1 on a quiet machine."""

    def __init__(self, threads: int) -> None:
        self.threads, self.cpu, self.wall = threads, 0.0, 0.0

    def add(self, cpu: float, wall: float) -> None:
        self.cpu, self.wall = self.cpu + cpu, self.wall + wall

    @property
    def value(self) -> float:
        return self.cpu / (self.wall * self.threads) if self.wall else float("nan")


def images_per_second(step: Callable[[], None], batch: int, seconds: float, share: CpuShare) -> float:
    """Run ``step`` once to warm up, then until ``seconds`` have passed (at least once).

    Returns:
        ``batch`` / median step time: robust to the odd preempted step on a shared VM.
    """
    step()
    times: list[float] = []
    cpu_start = time.process_time()
    while not times or sum(times) < seconds:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    share.add(time.process_time() - cpu_start, sum(times))
    return batch / statistics.median(times)


def measure_inference(encoder: torch.nn.Module, x: torch.Tensor, seconds: float, share: CpuShare) -> float:
    encoder.eval()

    def step() -> None:
        with torch.inference_mode():
            encoder(x)

    return images_per_second(step, x.shape[0], seconds, share)


def measure_training(encoder: torch.nn.Module, x: torch.Tensor, seconds: float, share: CpuShare) -> float:
    """Train-step images/s: encoder + linear head, weighted BCE, backward, AdamW step."""
    model = torch.nn.Sequential(encoder, torch.nn.Linear(encoder.out_features, len(LABELS))).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = WeightedBCELoss()
    targets = (torch.rand(x.shape[0], len(LABELS)) < 0.2).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), targets).backward()
        optimizer.step()

    return images_per_second(step, x.shape[0], seconds, share)


def bench(variant: Variant, size: int, args: argparse.Namespace) -> Result:
    """All figures of one encoder at one image size."""
    torch.manual_seed(0)
    encoder = build_encoder(variant.name, args.channels, **variant.kwargs)
    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    x = torch.rand(args.batch, args.channels, size, size)
    share = CpuShare(args.threads)
    infer_nchw = measure_inference(encoder, x, args.seconds, share)
    encoder = encoder.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    infer_cl = measure_inference(encoder, x_cl, args.seconds, share)
    use_cl = infer_cl > infer_nchw
    if not use_cl:
        encoder = encoder.to(memory_format=torch.contiguous_format)
    train = measure_training(encoder, x_cl if use_cl else x, args.seconds, share)
    return Result(variant, size, params, encoder.out_features, infer_nchw, infer_cl, train,
                  "channels_last" if use_cl else "NCHW", share.value)


def bench_until_quiet(variant: Variant, size: int, args: argparse.Namespace) -> Result:
    """:func:`bench`, repeated up to ``--retries`` times while the CPU share is below ``--min-cpu-share``.

    Returns:
        The attempt with the highest CPU share (the least disturbed by other processes).
    """
    attempts = [bench(variant, size, args)]
    while attempts[-1].cpu_share < args.min_cpu_share and len(attempts) <= args.retries:
        attempts.append(bench(variant, size, args))
    return max(attempts, key=lambda r: r.cpu_share)


def render(results: list[Result]) -> Table:
    table = Table(title="Encoders: images/s on this machine (higher is better)")
    columns = ("encoder", "params (M)", "F", "size", "infer NCHW", "infer channels_last", "train", "train fmt",
               "CPU share")
    for column in columns:
        table.add_column(column, justify="left" if column == "encoder" else "right")
    for r in results:
        table.add_row(r.variant.label, f"{r.params_m:.2f}", str(r.features), str(r.size), f"{r.infer_nchw:.1f}",
                      f"{r.infer_cl:.1f}", f"{r.train:.1f}", r.train_format, f"{r.cpu_share:.2f}")
    return table


def markdown_section(results: list[Result], args: argparse.Namespace, elapsed: float) -> str:
    """The ``## Encoders`` section of BENCHMARKS.md."""
    tunables = all(os.environ.get(name) for name in MALLOC_TUNABLES)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        args.section, "",
        f"`scripts/bench_encoders.py` on {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"CPU, torch {torch.__version__}, batch {args.batch}, {args.channels} channels, random input; "
        f"glibc malloc tunables {'set' if tunables else 'NOT set'}; {args.seconds:g} s per figure after one "
        f"warm-up, batch / median step time; whole run {elapsed:.0f} s, load average at the end {load}. "
        "Images/s, higher is better; noisy (±15-25 %, more on a busy shared VM).",
        "Train = forward + weighted BCE on a linear head + backward + AdamW step, in the memory format "
        "that was faster for inference. CPU share = process CPU time / (wall time x threads) while measuring: "
        f"well below 1 means other processes competed for the cores and the row is too low (rows under "
        f"{args.min_cpu_share:g} were re-measured up to {args.retries} times, keeping the least disturbed).",
        "ResNets are built with the 2-D torchvision stem (7x7 conv with `conv1_t_stride=2`, max pool); the "
        "row with MONAI's default stride-1 stem is there for reference. All encoders: random weights (timm backbones "
        "include the input normalisation their pretrained weights expect).", "",
        "| encoder | params (M) | F | size | infer NCHW | infer channels_last | train | train format | CPU share |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        lines.append(f"| {r.variant.label} | {r.params_m:.2f} | {r.features} | {r.size} | {r.infer_nchw:.1f} | "
                     f"{r.infer_cl:.1f} | {r.train:.1f} | {r.train_format} | {r.cpu_share:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), help="registry names or timm/<model>")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure after warm-up")
    parser.add_argument("--min-cpu-share", type=float, default=0.9,
                        help="re-measure a row whose CPU share is below this (other processes competed)")
    parser.add_argument("--retries", type=int, default=2, help="re-measurements per disturbed row")
    parser.add_argument("--no-monai-default", action="store_true", help="skip the stride-1 ResNet-18 row")
    parser.add_argument("--write", type=Path, help="write/replace the --section of this Markdown file")
    parser.add_argument("--section", default=SECTION, help="the '## ' heading of the section written")
    args = parser.parse_args()
    for name in args.encoders:
        check_encoder_name(name)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=140)
    if not all(os.environ.get(name) for name in MALLOC_TUNABLES):
        console.print("[yellow]glibc malloc tunables not set: expect slower, noisier figures (see docstring)")
    start, results = time.perf_counter(), []
    for variant in variants(args.encoders, not args.no_monai_default):
        for size in args.sizes:
            if "conv1_t_stride" in variant.kwargs and size != min(args.sizes):
                continue  # the MONAI-default row is a reference point: smallest size only
            r = bench_until_quiet(variant, size, args)
            results.append(r)
            console.print(f"{variant.label} @ {size}: infer {r.infer_nchw:.1f} / {r.infer_cl:.1f} (channels_last), "
                          f"train {r.train:.1f} img/s, CPU share {r.cpu_share:.2f}")
    console.print(render(results))
    if args.write:
        write_section(markdown_section(results, args, time.perf_counter() - start), args.write)
        console.print(f"wrote the {args.section!r} section of {args.write}")


if __name__ == "__main__":
    main()
