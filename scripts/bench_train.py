"""Training throughput of a config, measured on the real stages: slice (slices/s), sequence (series/s), data wait.

Usage: python scripts/bench_train.py [--data /tmp/ich3d-bench-train] [--config cpu_small] [--device cpu]
       [--steps 20] [--write]

A synthetic dataset (12 train series at 256 px) is generated once into --data and built into
``--data/dataset`` at the config's image size; both are reused when present. The timed loop is the
engine's: the stage objects of ``ich3d.training.stages`` (built from a ``StageContext`` as ``fit``
builds them), their ``batches()`` and ``ich3d.training.engine.train_step`` (the stage's loss,
backward, AdamW and the schedule), so the figures measure the training code itself:

* slice stage: ``SliceStage`` (its DataLoader with the config's ``num_workers``, augmentation and
  windowing on the device inside the step);
* sequence stage: ``SequenceStage`` on the fp16 embeddings it computes at construction (timed too),
  with the slice stage's (briefly trained) encoder.

"data wait" is the time blocked fetching the next batch from ``stage.batches()``; the first --warmup
steps (worker start-up, allocator warm-up) are left out. --write replaces the "## Training" section
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchmarks_md import write_section  # noqa: E402  (scripts/ is on sys.path when run)

from ich3d.config import Config, load_config
from ich3d.data.tables import build_table
from ich3d.dataset.build import BuildOptions, build_series
from ich3d.dataset.index import load_index
from ich3d.layout import RunFolder
from ich3d.runtime import Runtime, derive_seed, seed_everything, setup_runtime
from ich3d.synth.generate import make_synthetic_dataset
from ich3d.synth.plan import SynthConfig
from ich3d.training.engine import (
    FoldData,
    Optimisation,
    Stage,
    StageContext,
    train_step,
)
from ich3d.training.stages import SequenceStage, SliceStage

SECTION = "## Training"


def prepare_dataset(data: Path, image_size: int, n_series: int, source_size: int) -> Path:
    """The built dataset under ``data/dataset`` (synthetic DICOMs generated and built when absent)."""
    if not (data / "stage_2_train").is_dir():
        make_synthetic_dataset(data, SynthConfig(n_train_series=n_series, n_test_series=1, image_size=source_size,
                                                 min_slices=28, max_slices=40, seed=0))
    dataset = data / "dataset"
    build = dataset / "build.json"
    if not build.is_file() or f'"image_size": {image_size}' not in build.read_text():
        build_series([data / "stage_2_train"], dataset, labels_csv=data / "stage_2_train.csv",
                     options=BuildOptions(image_size=image_size, overwrite=True, progress=False))
    return dataset


def sync(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def timed_steps(stage: Stage, runtime: Runtime, steps: int, warmup: int, seed: int) -> dict[str, float]:
    """Runs ``warmup + steps`` engine steps of ``stage``; sums the time blocked fetching a batch and the
    time computing the step (epochs are drawn as the engine draws them, as many as needed)."""
    optimisation = Optimisation.of(stage, runtime)
    wait = compute = 0.0
    done = 0
    stage.train_mode()
    for epoch in range(10_000):
        generator = seed_everything(derive_seed(seed, stage.name, epoch, runtime.rank))
        batches: Iterator[Any] = iter(stage.batches(epoch, np.random.default_rng(derive_seed(seed, stage.name, epoch)),
                                                    generator))
        while done < steps + warmup:
            began = time.perf_counter()
            batch = next(batches, None)
            fetched = time.perf_counter()
            if batch is None:
                break
            train_step(stage, batch, generator, optimisation)
            sync(runtime)
            if done >= warmup:
                wait += fetched - began
                compute += time.perf_counter() - fetched
            done += 1
        if done >= steps + warmup:
            break
    return {"steps": steps, "wait_s": wait, "compute_s": compute}


def bench(config: Config, ctx: StageContext, steps: int, warmup: int) -> tuple[dict, dict]:
    """Timings of the slice stage, then of the sequence stage (its embedding pass timed apart)."""
    slice_stage = SliceStage(ctx)
    slice_r = timed_steps(slice_stage, ctx.runtime, steps, warmup, config.seed)
    slice_r["items"] = steps * config.stages.slice.batch_size
    slice_stage.save({"stage": "slice", "epoch": 0, "valid": {}})  # the encoder the sequence stage starts from
    began = time.perf_counter()
    sequence_stage = SequenceStage(ctx)
    encode_s = time.perf_counter() - began
    seq_r = timed_steps(sequence_stage, ctx.runtime, steps, warmup, config.seed)
    seq_r["items"] = steps * min(config.stages.sequence.batch_size, len(ctx.data.train.series_uids))
    seq_r["encode_s"], seq_r["encode_slices"] = encode_s, 2 * int(ctx.data.train.readable.sum())
    return slice_r, seq_r


def rows(slice_r: dict, seq_r: dict, config: Config) -> list[tuple[str, str, str, str, str]]:
    """Table rows: stage, throughput, step ms, data-wait share, notes."""
    out = []
    for name, r, unit in (("slice", slice_r, "slices/s"), ("sequence", seq_r, "series/s")):
        total = r["wait_s"] + r["compute_s"]
        cfg = getattr(config.stages, name)
        note = f"batch {cfg.batch_size}, {r['steps']} timed steps"
        if name == "sequence":
            note += f", crop_len {cfg.crop_len}"
        out.append((name, f"{r['items'] / total:,.1f} {unit}", f"{1000 * total / r['steps']:.1f}",
                    f"{100 * r['wait_s'] / total:.1f} %", note))
    enc = seq_r["encode_slices"] / seq_r["encode_s"]
    out.append(("embed (plain + flipped view, fp16 files)", f"{enc:,.1f} slices/s", "-", "-",
                "once per fold, before the sequence stage (includes its validation embeddings)"))
    return out


def markdown(table_rows: list[tuple[str, ...]], args: argparse.Namespace, config: Config, runtime: Runtime,
             n_slices: int, n_series: int) -> str:
    lines = [SECTION, "",
             f"`python scripts/bench_train.py --config {args.config} --device {runtime.device.type} --steps {args.steps}`"
             f" — machine: {args.machine}, date {args.date}, torch {torch.__version__}, python {platform.python_version()},"
             f" {torch.get_num_threads()} torch threads, num_workers {config.num_workers},"
             f" amp {'on' if runtime.amp else 'off'}. Data: {n_series} synthetic series ({n_slices} slices) built at"
             f" {config.data.image_size} px, encoder `{config.model.encoder.name}`, head `{config.model.head.name}`.",
             "", "| stage | throughput | step (ms) | data wait | notes |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/ich3d-bench-train"))
    parser.add_argument("--config", default="cpu_small")
    parser.add_argument("--device", default=None, help="cpu, cuda (mixed precision per the config's amp) or automatic")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--series", type=int, default=12)
    parser.add_argument("--source-size", type=int, default=256, help="pixel size of the synthetic DICOMs")
    parser.add_argument("--machine", default="2-core CPU VM")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--write", action="store_true", help="write the '## Training' section of BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config)
    runtime = setup_runtime(args.device, config.amp)
    began = time.perf_counter()
    dataset = prepare_dataset(args.data, config.data.image_size, args.series, args.source_size)
    print(f"dataset ready in {time.perf_counter() - began:.1f} s: {dataset}")
    slices, series = load_index(dataset)
    table = build_table(dataset, slices, list(series["series_uid"]))
    prevalence = table.labels[table.labeled_readable()].mean(axis=0)
    with tempfile.TemporaryDirectory() as run:
        folder = RunFolder(Path(run)).fold(0)
        folder.root.mkdir()
        ctx = StageContext(config, runtime, FoldData(0, table, table.subset(np.arange(2)), prevalence, 5.0), folder)
        slice_r, seq_r = bench(config, ctx, args.steps, args.warmup)
    text = markdown(rows(slice_r, seq_r, config), args, config, runtime, table.n_slices, len(table.series_uids))
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
