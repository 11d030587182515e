"""Scale benchmark: how each data step's time and memory grow to the RSNA 2019 size (752,803 images).

Usage: python scripts/bench_scale.py --data /tmp/ich3d-bench-scale [--fractions 0.01 0.1 1]
       [--steps labels order ...] [--repeats 1] [--gru-steps 50] [--epochs 1] [--write]

No pixel data is involved: ``scripts/scale_inputs.py`` synthesizes, once per fraction of the RSNA
size and outside every timed region, the header table, labels CSV, index, fold table, fp16
embedding files, test index, sample submission and test labels (see its docstring). Each step then
runs in a fresh process (this script with ``--step NAME --fraction F``), so its peak RSS (VmHWM of
/proc/self/status, file-backed pages of memory maps included) is its own; the RSS after the step's
imports is its baseline and the RSS after its inputs are loaded is reported too. Steps:

* labels: ``read_labels`` of the training CSV (6 rows per image) + ``join_labels`` onto the header
  (its image keys assigned beforehand, untimed).
* order: ``order_slices`` + ``series_table`` of the labelled header.
* index: ``make_index(header, read_labels(csv))``, the two steps above as ``build-series`` runs them
  in one process (its peak is that of the index pass).
* splits: ``make_folds`` (5 folds) + ``split_series`` + ``save_splits`` + ``build_table`` of fold 0's
  training and validation series (what ``fit`` does before training).
* sequence: the sequence stage's data path over fold 0's training table: the two fp16 embedding
  views memory-mapped (as ``cached_embeddings`` opens them) and one epoch of batches drawn as
  ``SequenceStage.batches``/``loss`` draw them (``rng.permutation``, ``crop_starts``,
  ``sequence_index``, ``Embeddings.gather``, the readable and label gathers; rsna_256's batch size and
  crop), the first ``--gru-steps`` batches also through a small GRU head (cpu_small's: 64 per
  direction, one layer), loss, backward and AdamW (reported apart: a fixed number of steps, not
  part of the growth).
* infer: what ``ich3d infer`` does after the model pass, on the test index: ``requested_images``,
  ``build_table`` of the predicted series, ``predicted_rows`` (random probabilities) + ``other_rows``,
  the part and its meta written as ``_predict`` writes them, and ``merge_parts`` (predictions.parquet,
  the submission in the sample's order, the exam table).
* submission: ``write_submission`` of the test images in the sample's order + ``score_submission``
  against the test labels (series-level AUC included).
* score_train: the same at the training size (752,803 images, 4.5 M rows, no sample order).

--write replaces the "Scale" section of BENCHMARKS.md with the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from benchmarks_md import write_section  # scripts/ is on sys.path when run
from scale_inputs import FEATURES, FOLDS, SEED, Inputs, inputs_for, keyed, load_table

SECTION = "## Scale"
#: The sequence stage's settings are rsna_256's (batch 32, whole series); the head is cpu_small's.
CONFIG, HEAD_OVERRIDES = "rsna_256", ["model.head.hidden=64", "model.head.num_layers=1", "model.head.dropout=0.2"]
GIB = 1024 ** 3
_SAMPLE_S = 0.01  # RssAnon sampling period


def _status_kib(*fields: str) -> list[int]:
    """Fields of /proc/self/status (KiB), e.g. VmRSS, VmHWM, RssAnon."""
    found = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return [int(found[name].split()[0]) for name in fields]


class Meter:
    """Wall and CPU time of a step's phases, its RSS after imports and inputs, its peak RSS.

    A background thread samples RssAnon (anonymous memory: the heap, not mapped files) every 10 ms;
    VmHWM, the kernel's exact peak of the resident set, includes mapped file pages.
    """

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.extra: dict[str, float] = {}
        self.rss: dict[str, float] = {}
        self._excluded_cpu = 0.0
        self._anon_peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            self._anon_peak = max(self._anon_peak, _status_kib("RssAnon")[0])

    def imported(self) -> None:
        """Marks the end of the step's imports: the process's baseline."""
        self.rss["baseline_gib"] = _status_kib("VmRSS")[0] * 1024 / GIB

    def loaded(self) -> None:
        """Marks the end of loading the step's inputs (untimed); starts the clock."""
        self.rss["inputs_gib"] = _status_kib("VmRSS")[0] * 1024 / GIB
        self._cpu_start = self._cpu()
        self._last = time.perf_counter()

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def lap(self, name: str) -> None:
        """Wall seconds since the previous lap (or :meth:`loaded`), as ``name``."""
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now

    @contextlib.contextmanager
    def excluded(self, name: str) -> Iterator[None]:
        """A block left out of the laps and CPU time; its wall seconds add up in ``extra[name]``."""
        wall, cpu = time.perf_counter(), self._cpu()
        yield
        self._excluded_cpu += self._cpu() - cpu
        self.extra[name] = self.extra.get(name, 0.0) + time.perf_counter() - wall
        self._last = time.perf_counter()

    def result(self, **facts: object) -> dict:
        """The step's figures: seconds (sum of laps), cpu_s, laps, RSS figures and ``facts``."""
        cpu = self._cpu() - self._cpu_start - self._excluded_cpu
        self._stop.set()
        peak, anon = _status_kib("VmHWM", "RssAnon")
        return {"seconds": sum(self.laps.values()), "cpu_s": cpu, "laps": self.laps, "extra": self.extra,
                **self.rss, "peak_gib": peak * 1024 / GIB, "anon_peak_gib": max(self._anon_peak, anon) * 1024 / GIB,
                **facts}


def step_labels(inputs: Inputs, meter: Meter, args: argparse.Namespace) -> dict:
    from ich3d.dataset.labels import join_labels, read_labels

    meter.imported()
    header = keyed(pd.read_parquet(inputs.train.header))
    meter.loaded()
    table = read_labels(inputs.train.labels)
    meter.lap("read_labels")
    slices, _ = join_labels(header, table)
    meter.lap("join_labels")
    return meter.result(rows=table.n_rows, images=len(slices))


def step_order(inputs: Inputs, meter: Meter, args: argparse.Namespace) -> dict:
    from ich3d.dataset.series import order_slices, series_table

    meter.imported()
    joined = pd.read_parquet(inputs.train.joined)
    meter.loaded()
    slices = order_slices(joined)
    meter.lap("order_slices")
    series = series_table(slices)
    meter.lap("series_table")
    return meter.result(images=len(slices), series=len(series))


def step_index(inputs: Inputs, meter: Meter, args: argparse.Namespace) -> dict:
    from ich3d.dataset.index import make_index
    from ich3d.dataset.labels import read_labels

    meter.imported()
    header = pd.read_parquet(inputs.train.header)
    meter.loaded()
    slices, series, _ = make_index(header, read_labels(inputs.train.labels))
    meter.lap("make_index")
    return meter.result(images=len(slices), series=len(series))


def step_splits(inputs: Inputs, meter: Meter, args: argparse.Namespace) -> dict:
    from ich3d.data.tables import build_table
    from ich3d.dataset.index import load_index
    from ich3d.training.splits import make_folds, save_splits, split_series

    meter.imported()
    dataset = inputs.train.dataset.root
    slices, series = load_index(dataset)
    out = inputs.root / "out"
    out.mkdir(exist_ok=True)
    meter.loaded()
    fold_of = make_folds(series, FOLDS, SEED)
    meter.lap("make_folds")
    train_uids, valid_uids = split_series(fold_of, 0)
    meter.lap("split_series")
    save_splits(out / "splits.json", fold_of, series, SEED)
    meter.lap("save_splits")
    train, valid = build_table(dataset, slices, train_uids), build_table(dataset, slices, valid_uids)
    meter.lap("build_table")
    return meter.result(series=len(fold_of), train_slices=train.n_slices, valid_slices=valid.n_slices)


def step_sequence(inputs: Inputs, meter: Meter, args: argparse.Namespace) -> dict:
    import dataclasses

    import torch

    from ich3d.config import load_config
    from ich3d.data.samplers import batches
    from ich3d.data.batching import sequence_index
    from ich3d.models.heads import build_head
    from ich3d.training.embeddings import Embeddings
    from ich3d.training.losses import WeightedBCELoss
    from ich3d.training.stages import crop_starts, hide_slices

    meter.imported()
    table = load_table(inputs.train.table, inputs.train.dataset.root)
    config = load_config(CONFIG, HEAD_OVERRIDES)
    stage = config.stages.sequence
    torch.manual_seed(SEED)
    head = build_head(dataclasses.asdict(config.model.head), FEATURES)
    optimizer = torch.optim.AdamW(head.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)
    criterion = WeightedBCELoss()
    paths = inputs.train.views()
    meter.loaded()
    embeddings = Embeddings(tuple(np.load(path, mmap_mode="r") for path in paths))
    meter.lap("open")
    rng, generator = np.random.default_rng(SEED), torch.Generator().manual_seed(SEED)
    readable_all, labels_all = torch.from_numpy(table.readable), torch.from_numpy(table.labels)
    n_batches, n_rows = 0, 0
    for _ in range(args.epochs):  # each epoch draws its order, crops and views, as SequenceStage.batches
        order, starts = rng.permutation(len(table.series_uids)), crop_starts(table, stage.crop_len, rng)
        view_of = rng.integers(len(embeddings.views), size=len(order))
        for chunk in batches(order, stage.batch_size):
            index, mask = sequence_index(table, chunk, starts=starts[chunk], crop_len=stage.crop_len)
            emb = embeddings.gather(view_of[chunk], index)
            readable = readable_all[index] & mask
            labels = labels_all[index]
            meter.lap("batches")
            n_batches, n_rows = n_batches + 1, n_rows + int(mask.sum())
            if n_batches <= args.gru_steps:
                with meter.excluded("gru_s"):  # the GRU steps are not the data path
                    shown = hide_slices(readable, stage.drop_slices, generator)
                    loss = criterion(head(emb, mask, shown), labels, readable & mask)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
    meter.extra["gru_steps"] = min(args.gru_steps, n_batches)
    file_bytes = sum(path.stat().st_size for path in paths)
    return meter.result(batches=n_batches, rows_gathered=n_rows, slices=table.n_slices, file_gib=file_bytes / GIB,
                        batch_size=stage.batch_size, crop_len=stage.crop_len, epochs=args.epochs)


def step_infer(inputs: Inputs, meter: Meter, args: argparse.Namespace) -> dict:
    from ich3d.data.tables import build_table
    from ich3d.dataset.index import load_index, part_series
    from ich3d.inference.merge import merge_parts, requested_images
    from ich3d.inference.outputs import other_rows, predicted_rows
    from ich3d.inference.exams import THRESHOLD
    from ich3d.shard import Shard
    from ich3d.inference.submission import read_submission_ids
    from ich3d.layout import InferFolder

    meter.imported()
    dataset = inputs.test.dataset.root
    slices, series = load_index(dataset)
    requested = read_submission_ids(inputs.test.sample)
    predicted = series[series["predict"]]
    probs = np.random.default_rng(SEED).random((int(predicted["n_slices"].sum()), 6), dtype=np.float32)
    prior = slices.filter(like="label_").mean().fillna(0.1).to_numpy()
    folder = InferFolder(inputs.root / "out" / "infer")
    folder.parts.mkdir(parents=True, exist_ok=True)
    meter.loaded()
    requested_images(slices, series, requested, False)
    table = build_table(dataset, slices, part_series(predicted, Shard()))
    meter.lap("build_table")
    part = predicted_rows(table, probs, slices, np.full(table.n_slices, "", dtype=object))
    part = pd.concat([part, other_rows(slices, series, prior)], ignore_index=True)
    meter.lap("part_rows")
    part.to_parquet(folder.part(0, 1), index=False)  # the part and its meta, as _predict writes them
    folder.parts_meta.write_text(json.dumps({"prior": prior.tolist(), "num_parts": 1, "n_index_rows": len(slices),
                                             "dataset": str(dataset), "exam_threshold": [THRESHOLD] * 6}))
    meter.lap("write_part")
    summary = merge_parts(folder, inputs.test.sample, False)
    meter.lap("merge_parts")
    return meter.result(images=summary["images"], model=summary["model"], prior=summary["prior"],
                        exams=summary["exams"])


def _score_step(meter: Meter, dataset: Path, labels: Path, sample: Path | None, out: Path) -> dict:
    """write_submission of random probabilities for every image of ``dataset`` (in ``sample``'s rows when
    given) + score_submission against ``labels``."""
    from ich3d.constants import LABELS
    from ich3d.dataset.index import load_index
    from ich3d.inference.submission import score_submission, write_submission

    meter.imported()
    slices, _ = load_index(dataset)
    images = pd.Index(slices["image_id"], name="image_id")
    probs = pd.DataFrame(np.random.default_rng(SEED).random((len(images), len(LABELS))), index=images,
                         columns=list(LABELS))
    series_of = slices.dropna(subset=["series_uid"]).set_index("image_id")["series_uid"]
    out.mkdir(parents=True, exist_ok=True)
    del slices
    meter.loaded()
    write_submission(out / "submission.csv", probs, sample)
    meter.lap("write_submission")
    score = score_submission(out / "submission.csv", labels, series_of)
    meter.lap("score_submission")
    return meter.result(images=score["n_images"], rows=6 * score["n_images"])


def step_submission(inputs: Inputs, meter: Meter, args: argparse.Namespace) -> dict:
    test = inputs.test
    return _score_step(meter, test.dataset.root, test.labels, test.sample, inputs.root / "out" / "submission")


def step_score_train(inputs: Inputs, meter: Meter, args: argparse.Namespace) -> dict:
    train = inputs.train
    return _score_step(meter, train.dataset.root, train.labels, None, inputs.root / "out" / "score_train")


STEPS: dict[str, Callable[[Inputs, Meter, argparse.Namespace], dict]] = {
    "labels": step_labels, "order": step_order, "index": step_index, "splits": step_splits, "sequence": step_sequence,
    "infer": step_infer, "submission": step_submission, "score_train": step_score_train,
}
#: The steps the index bar adds up.
INDEX_STEPS = ("index", "splits")


def run_step(args: argparse.Namespace, fraction: float, name: str) -> dict:
    """Runs one step in a fresh process; its result dict."""
    command = [sys.executable, __file__, "--data", str(args.data), "--fraction", repr(fraction), "--step", name,
               "--gru-steps", str(args.gru_steps), "--epochs", str(args.epochs)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"step {name} at {fraction:g} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cell(result: dict | None) -> str:
    return "-" if result is None else f"{result['seconds']:.2f} s / {result['peak_gib']:.2f} GiB"


def _growth(small: dict, full: dict) -> tuple[float, float, float]:
    """(wall, CPU, peak-above-baseline) ratios of two results of one step."""
    def above(result: dict) -> float:
        return max(result["peak_gib"] - result["baseline_gib"], 1e-9)

    return full["seconds"] / small["seconds"], full["cpu_s"] / max(small["cpu_s"], 1e-9), above(full) / above(small)


def tables(results: dict[str, dict[str, dict]], fractions: list[float], counts: dict[str, dict]) -> str:
    """Per step: time and peak at each fraction, the 10 %→100 % ratios, the ×10 projection."""
    head = " | ".join(f"{f:.0%} ({counts[f'{f:g}']['train_images']:,} train / {counts[f'{f:g}']['test_images']:,} test)"
                      for f in fractions)
    lines = [f"| step | baseline GiB | {head} | ratio 10 %→100 %: wall, CPU, peak − baseline | ×10 projected |",
             "|---|---|" + "---|" * len(fractions) + "---|---|"]
    for name in STEPS:
        row = [results.get(f"{f:g}", {}).get(name) for f in fractions]
        last = next((r for r in reversed(row) if r is not None), None)
        if last is None:
            continue
        small, full = results.get("0.1", {}).get(name), results.get("1", {}).get(name)
        ratios = projection = "-"
        if small and full:
            wall, cpu, memory = _growth(small, full)
            ratios = f"{wall:.1f}, {cpu:.1f}, {memory:.1f}"
            peak = full["baseline_gib"] + (full["peak_gib"] - full["baseline_gib"]) * max(memory, 10)
            projection = f"{full['seconds'] * max(wall, 10):.0f} s / {peak:.1f} GiB"
        lines.append(f"| {name} | {last['baseline_gib']:.2f} | " + " | ".join(_cell(r) for r in row)
                     + f" | {ratios} | {projection} |")
    return "\n".join(lines)


def laps_table(results: dict[str, dict]) -> str:
    """Each step's phases at the largest fraction."""
    lines = ["| step | phases (s) | CPU s | RSS after inputs GiB | peak RssAnon GiB (sampled) | facts |",
             "|---|---|---|---|---|---|"]
    for name, result in results.items():
        phases = ", ".join(f"{k} {v:.2f}" for k, v in result["laps"].items())
        phases += "".join(f"; {k} {v:.2f}" if isinstance(v, float) else f"; {k} {v}" for k, v in result["extra"].items())
        skip = {"seconds", "cpu_s", "laps", "extra", "baseline_gib", "inputs_gib", "peak_gib", "anon_peak_gib",
                "runs_s"}
        facts = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v:,}" for k, v in result.items()
                          if k not in skip)
        lines.append(f"| {name} | {phases} | {result['cpu_s']:.1f} | {result['inputs_gib']:.2f} | "
                     f"{result['anon_peak_gib']:.2f} | {facts} |")
    return "\n".join(lines)


def bars(full: dict[str, dict]) -> list[str]:
    """The issue's bars at 100 %, met or not."""
    out = []
    if all(name in full for name in INDEX_STEPS):
        seconds = sum(full[name]["seconds"] for name in INDEX_STEPS)
        peak = max(full[name]["peak_gib"] for name in INDEX_STEPS)
        out.append(f"index steps (make_index: labels + order + series table; splits) {seconds:.1f} s, peak {peak:.2f} GiB "
                   f"(bar < 60 s, < 4 GiB): {_met(seconds < 60 and peak < 4)}")
    if "sequence" in full:
        seq = full["sequence"]
        ratio = seq["peak_gib"] / seq["file_gib"]
        out.append(f"sequence data path peak {seq['peak_gib']:.2f} GiB = {ratio:.2f} × the fp16 files "
                   f"({seq['file_gib']:.2f} GiB, two views) (bar ≤ 1.3 ×): {_met(ratio <= 1.3)}")
    if "submission" in full:
        seconds = full["submission"]["seconds"]
        out.append(f"submission writing + scoring of {full['submission']['images']:,} images {seconds:.1f} s "
                   f"(bar < 30 s): {_met(seconds < 30)}")
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(results: dict[str, dict[str, dict]], fractions: list[float], counts: dict[str, dict], repeats: int) -> str:
    largest = f"{max(fractions):g}"
    load = os.getloadavg()
    machine = (f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
               f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB RAM, "
               f"{datetime.date.today().isoformat()}, python {platform.python_version()}, pandas {pd.__version__}, "
               f"numpy {np.__version__}; load average at the end {load[0]:.1f} (other jobs share the machine: "
               f"wall times are noisy, CPU seconds less so). Inputs synthesized by `scripts/scale_inputs.py` "
               f"(no pixels; RSNA-like geometry and labels, seeded), each step in a fresh process (the fastest of "
               f"{repeats} runs), page cache warm. "
               f"A cell is wall seconds / peak RSS (VmHWM, mapped file pages included); baseline is the step's "
               f"process after its imports (torch for `sequence`). A ratio of ≈ 10 from 10 % to 100 % is linear "
               f"growth; ×10 projected (a 7.5 M-image archive) applies the same ratios once more, at least 10 (linear).")
    lines = [
        machine,
        "",
        tables(results, fractions, counts),
        "",
        f"Phases at {float(largest):.0%}:",
        "",
        laps_table(results[largest]),
        "",
        *[f"- {line}" for line in bars(results.get("1", {}))],
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Cache folder of the synthetic inputs (reused).")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--gru-steps", type=int, default=50, help="Batches of the epoch also run through the head.")
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each step; the fastest is reported.")
    parser.add_argument("--epochs", type=int, default=1, help="Epochs of the sequence stage's batches.")
    parser.add_argument("--step", choices=list(STEPS), help="Run one step here and print its JSON (internal).")
    parser.add_argument("--fraction", type=float, help="The fraction of --step (internal).")
    parser.add_argument("--write", action="store_true", help="Write the tables into BENCHMARKS.md.")
    args = parser.parse_args()
    if args.step:
        meter = Meter()
        print(json.dumps(STEPS[args.step](Inputs(args.data / f"f{args.fraction:g}"), meter, args)))
        return
    results: dict[str, dict[str, dict]] = {}
    counts = {}
    for fraction in args.fractions:
        counts[f"{fraction:g}"] = inputs_for(args.data, fraction).counts()
        for name in args.steps:
            runs = [run_step(args, fraction, name) for _ in range(args.repeats)]
            result = min(runs, key=lambda run: run["seconds"]) | {"runs_s": [run["seconds"] for run in runs]}
            results.setdefault(f"{fraction:g}", {})[name] = result
            print(f"{fraction:g} {name}: {result['seconds']:.2f} s, peak {result['peak_gib']:.2f} GiB", flush=True)
    (args.data / "results.json").write_text(json.dumps({"counts": counts, "results": results}, indent=1))
    body = report(results, args.fractions, counts, args.repeats)
    print(body)
    if args.write:
        command = " ".join(["python scripts/bench_scale.py", *sys.argv[1:]])
        write_section(f"{SECTION}\n\n`{command}`\n\n{body}\n")


if __name__ == "__main__":
    main()
