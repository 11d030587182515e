"""Training throughput of a config: slice stage (slices/s), sequence stage (series/s), data-wait share.

Usage: python scripts/bench_train.py [--data /tmp/ich3d-bench-train] [--config cpu_small] [--device cpu]
       [--steps 20] [--write]

A synthetic dataset (12 train series at 256 px) is generated once into --data and built into
``--data/dataset`` at the config's image size; both are reused when present. The timing loops use
the package's own pieces, as ``ich3d.training.stages`` does:

* slice stage: ``SliceDataset`` through a ``DataLoader`` with the config's ``num_workers``, batches of
  the stage's ``batch_size`` drawn by ``sample_slices``; per step ``sample_augment`` + ``to_input``
  (prep), the encoder + slice head forward/backward under ``runtime.autocast()`` and an AdamW step.
* sequence stage: the GRU head on embedding batches indexed by ``sequence_index`` (crops of
  ``crop_len``), the embeddings made once by ``encode_table`` with the slice model (timed too).

"data wait" is the time blocked in ``next(loader)`` (slice stage) or in building the embedding
batch (sequence stage); the first --warmup steps (worker start-up, allocator warm-up) are left out.
--write appends (or replaces) the "## Training" section at the end of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from ich3d.dataset.build import build_series
from ich3d.dataset.index import load_index
from ich3d.config import Config, load_config
from ich3d.data.tables import SeriesTable, SliceDataset, batches, build_table, sample_slices
from ich3d.training.engine import model_spec
from ich3d.training.losses import WeightedBCELoss
from ich3d.models.model import build_model
from ich3d.inference.predictor import encode_table, sequence_index
from ich3d.runtime import Runtime, seed_everything, setup_runtime
from ich3d.training.stages import EmbeddingForward, SliceForward
from ich3d.synth.generate import SynthConfig, make_synthetic_dataset
from ich3d.data.transforms import sample_augment, to_input

from benchmarks_md import write_section  # noqa: E402  (scripts/ is on sys.path when run)

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
                     image_size=image_size, overwrite=True, progress=False)
    return dataset


def sync(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def timed_steps(batches_in: Iterator[Any], step: Callable[[Any], None], runtime: Runtime, warmup: int) -> dict[str, float]:
    """Runs ``step`` on each batch; sums the time blocked fetching a batch and the time computing it."""
    wait = compute = 0.0
    steps = 0
    while True:
        began = time.perf_counter()
        batch = next(batches_in, None)
        fetched = time.perf_counter()
        if batch is None:
            break
        step(batch)
        sync(runtime)
        if steps >= warmup:
            wait += fetched - began
            compute += time.perf_counter() - fetched
        steps += 1
    return {"steps": steps - warmup, "wait_s": wait, "compute_s": compute}


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def bench_slice(config: Config, table: SeriesTable, runtime: Runtime, steps: int, warmup: int) -> tuple[dict, Any]:
    """Slice-stage steps through the real loader; returns the timings and the (trained a little) model."""
    cfg, data = config.stages["slice"], config.data
    generator = seed_everything(config.seed)
    model = build_model(model_spec(config, head="slice"), data.in_channels).to(runtime.device)
    forward, criterion, scaler = SliceForward(model), WeightedBCELoss(), runtime.grad_scaler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ids = sample_slices(table, (steps + warmup) * cfg.batch_size, cfg.positive_fraction, np.random.default_rng(0))
    plan = list(batches(np.arange(len(ids)), cfg.batch_size))
    context = data.context if data.input == "bsb25d" else 0
    loader = DataLoader(SliceDataset(table, ids, context), batch_sampler=plan, num_workers=config.num_workers,
                        pin_memory=runtime.device.type == "cuda")
    prep = [0.0]

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        hu, target = batch
        began = time.perf_counter()
        params = sample_augment(len(hu), config.augment, generator)
        x = to_input(hu.to(runtime.device, non_blocking=True), data.image_size, params, True)
        sync(runtime)
        prep[0] += time.perf_counter() - began
        with runtime.autocast():
            logits = forward(x)[:, 0].float()
        optimizer_step(criterion(logits, target.to(runtime.device)), optimizer, scaler)

    model.train()
    result = timed_steps(iter(loader), step, runtime, warmup)
    result["prep_s"] = prep[0] * result["steps"] / (result["steps"] + warmup)  # warm-up share removed (approx.)
    result["items"] = result["steps"] * cfg.batch_size
    return result, model


def bench_sequence(config: Config, table: SeriesTable, model: Any, runtime: Runtime, steps: int, warmup: int) -> dict:
    """Sequence-stage steps of the head on embedding crops (embeddings from ``encode_table``)."""
    cfg = config.stages["sequence"]
    began = time.perf_counter()
    views = torch.stack(encode_table(model, table, config.data, runtime, np.arange(len(table.series_uids)),
                                     (False, True), num_workers=config.num_workers))
    encode_s = time.perf_counter() - began
    seq = build_model(model_spec(config), config.data.in_channels, load_weights=False).to(runtime.device)
    seq.encoder.load_state_dict(model.encoder.state_dict())
    seq.encoder.requires_grad_(False)
    forward, criterion, scaler = EmbeddingForward(seq), WeightedBCELoss(), runtime.grad_scaler()
    optimizer = torch.optim.AdamW([p for p in seq.parameters() if p.requires_grad], lr=cfg.lr)
    rng = np.random.default_rng(0)
    readable_all, labels_all = torch.from_numpy(table.readable), torch.from_numpy(table.labels)

    def make_batches() -> Iterator[tuple[torch.Tensor, ...]]:
        for _ in range(steps + warmup):
            chunk = rng.choice(len(table.series_uids), min(cfg.batch_size, len(table.series_uids)), replace=False)
            starts = (rng.random(len(chunk)) * (np.maximum(table.lengths[chunk] - cfg.crop_len, 0) + 1)).astype(np.int64)
            index, mask = sequence_index(table, chunk, starts=starts, crop_len=cfg.crop_len)
            emb = views[torch.from_numpy(rng.integers(len(views), size=len(chunk)))[:, None], index]
            yield emb, mask, readable_all[index] & mask, labels_all[index]

    def step(batch: tuple[torch.Tensor, ...]) -> None:
        emb, mask, readable, labels = (t.to(runtime.device) for t in batch)
        with runtime.autocast():
            logits = forward(emb, mask, readable).float()
        optimizer_step(criterion(logits, labels, readable), optimizer, scaler)

    seq.train()
    seq.encoder.eval()
    result = timed_steps(make_batches(), step, runtime, warmup)
    result["items"] = result["steps"] * min(cfg.batch_size, len(table.series_uids))
    result["encode_s"], result["encode_slices"] = encode_s, 2 * int(table.readable.sum())
    return result


def rows(slice_r: dict, seq_r: dict, config: Config) -> list[tuple[str, str, str, str, str]]:
    """Table rows: stage, throughput, step ms, data-wait share, notes."""
    out = []
    for name, r, unit in (("slice", slice_r, "slices/s"), ("sequence", seq_r, "series/s")):
        total = r["wait_s"] + r["compute_s"]
        note = f"batch {config.stages[name].batch_size}, {r['steps']} timed steps"
        if name == "slice":
            note += f", prep (augment+window) {100 * r['prep_s'] / total:.0f} % of step"
        else:
            note += f", crop_len {config.stages[name].crop_len}"
        out.append((name, f"{r['items'] / total:,.1f} {unit}", f"{1000 * total / r['steps']:.1f}",
                    f"{100 * r['wait_s'] / total:.1f} %", note))
    enc = seq_r["encode_slices"] / seq_r["encode_s"]
    out.append(("embed (encode_table, x2 flip)", f"{enc:,.1f} slices/s", "-", "-", "inference-mode pass before the sequence stage"))
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
    slice_r, model = bench_slice(config, table, runtime, args.steps, args.warmup)
    seq_r = bench_sequence(config, table, model, runtime, args.steps, args.warmup)
    text = markdown(rows(slice_r, seq_r, config), args, config, runtime, table.n_slices, len(table.series_uids))
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
