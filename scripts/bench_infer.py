"""Inference throughput, DICOM folder → submission.csv, split into read/decode, model and writing.

Usage: python scripts/bench_infer.py [--data /tmp/ich3d-bench-infer] [--run RUN] [--device cpu] [--write]

A synthetic set (--series test series of 512x512 files, plus a few training series) is generated once
into --data. Without --run, a tiny cpu_small run is trained there first with ``ich3d.fit``
(1 slice epoch of 64 samples, 1 sequence epoch: the weights do not matter for speed, the
architecture does). ``ich3d.predict`` with ``--dicom-dir`` then runs into a fresh OUT folder and its
own phase timings (``timings`` of its summary, also in ``infer.json``) are reported:

* read/decode (``read_s``): ``build_series`` of the test folder into ``OUT/dataset`` at the model's
  image size (header pass, index, pixel pass with all cores);
* model (``model_s``): index load, the table and the ensemble (``Predictor.predict_table`` with the run's TTA);
* writing (``write_s``): the part frame and ``merge`` → ``predictions.parquet`` + ``submission.csv``.

Model loading (``load_s``) is reported apart (paid once per job). The projection to the 121,232 images of the
RSNA stage-2 test set scales the measured per-image time linearly.
--write appends (or replaces) the "## Inference" section at the end of BENCHMARKS.md.

``--engines`` instead compares the engines on the same data, one run each: the tiny cpu_small run (the
demo's model, 128 px) and a tiny run of ``--encoder`` (default ``timm/resnet18``) at 256 px are exported
with ``ich3d export``, and ``ich3d.predict`` of the test set's dataset (built once per size) runs with
``--engine torch`` (eager PyTorch) and ``--engine onnxruntime``: images/s end to end (index → submission,
exams; model loading apart) and of the model phase, and their ratio. --write puts the
"## ONNX Runtime vs PyTorch" section into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch
from benchmarks_md import write_section  # noqa: E402  (scripts/ is on sys.path when run)

from ich3d.config import load_config
from ich3d.dataset.build import BuildOptions, build_series
from ich3d.dataset.index import load_index
from ich3d.inference.run import InferOptions, model_checkpoints, predict
from ich3d.models.io import load_trained
from ich3d.layout import RunFolder
from ich3d.runtime import setup_runtime
from ich3d.synth.generate import make_synthetic_dataset
from ich3d.synth.plan import SynthConfig
from ich3d.training.fit import TrainOptions, fit

SECTION = "## Inference"
RSNA_STAGE2_TEST_IMAGES = 121_232
TINY_RUN = ["stages.slice.epochs=1", "stages.slice.samples_per_epoch=64", "stages.sequence.epochs=1"]


def prepare(data: Path, n_series: int, run: Path | None, device: str | None) -> Path:
    """Generates the synthetic set (once) and trains the tiny run (once) unless ``run`` is given."""
    if not (data / "stage_2_test").is_dir():
        make_synthetic_dataset(data, SynthConfig(n_train_series=6, n_test_series=n_series, image_size=512,
                                                 min_slices=30, max_slices=45, seed=1))
    if run is not None:
        return run
    run = data / "run"
    if not RunFolder(run).fold(0).model.is_file():
        shutil.rmtree(run, ignore_errors=True)
        began = time.perf_counter()
        build_series([data / "stage_2_train"], data / "train_dataset", labels_csv=data / "stage_2_train.csv",
                     options=BuildOptions(image_size=load_config("cpu_small").data.image_size,
                                          progress=False))
        fit(data / "train_dataset", run, "cpu_small", TINY_RUN, TrainOptions(device=device))
        print(f"tiny run trained in {time.perf_counter() - began:.1f} s: {run}")
    return run


def infer_phases(run: Path, test_dir: Path, sample: Path, out: Path, device: str | None,
                 workers: int | None) -> tuple[dict, dict]:
    """``ich3d.predict`` into a fresh ``out``; returns its phase timings and its summary (plus input facts)."""
    shutil.rmtree(out, ignore_errors=True)
    summary = predict([run], out, dicom_dirs=[test_dir], sample_submission=sample,
                      options=InferOptions(device=device, workers=workers), progress=False)
    names = {"load_s": "load model", "read_s": "read/decode", "model_s": "model", "write_s": "writing"}
    timings = {names[k]: v for k, v in summary["timings"].items()}
    trained = load_trained(model_checkpoints([run])[0])
    slices, _ = load_index(out / "dataset")
    summary.update(n_files=len(slices), image_size=trained.image_size, tta=trained.tta, spec=trained.spec)
    return timings, summary


def markdown(t: dict[str, float], s: dict, args: argparse.Namespace, device: str) -> str:
    n = s["n_files"]
    total = sum(v for k, v in t.items() if k != "load model")
    tta = s["tta"]
    lines = [SECTION, "",
             f"`python scripts/bench_infer.py --device {device}` — machine: {args.machine}, date {args.date},"
             f" torch {torch.__version__}, python {platform.python_version()}, {torch.get_num_threads()} torch threads,"
             f" build workers {args.workers or os.cpu_count()}. Input: {n} synthetic 512x512 DICOM files"
             f" ({args.series} series, incl. one corrupt and one junk file) → submission.csv with {s['images']} images"
             f" ({s['model']} model, {s['context']} context, {s['prior']} prior). Model: cpu_small"
             f" (encoder `{s['spec']['encoder']['name']}`, head `{s['spec']['head']['name']}`,"
             f" {s['image_size']} px), TTA flip {tta.tta_flip}, reverse {tta.tta_reverse}.",
             "", "| phase | seconds | share | images/s | projected for 121,232 images |", "|---|---|---|---|---|"]
    for name in ("read/decode", "model", "writing"):
        lines.append(f"| {name} | {t[name]:.2f} | {100 * t[name] / total:.0f} % | {n / t[name]:,.1f} |"
                     f" {_hours(t[name] / n * RSNA_STAGE2_TEST_IMAGES)} |")
    lines.append(f"| **total** | {total:.2f} | 100 % | {n / total:,.1f} | {_hours(total / n * RSNA_STAGE2_TEST_IMAGES)} |")
    lines.append(f"| load model (once per job, not in total) | {t['load model']:.2f} | - | - | - |")
    return "\n".join(lines) + "\n"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h ({seconds / 60:,.0f} min)"


ENGINES_SECTION = "## ONNX Runtime vs PyTorch"


def engine_run(data: Path, encoder: str, size: int, device: str | None) -> Path:
    """A tiny run of ``encoder`` at ``size`` px (trained once), for the engine comparison."""
    run = data / f"run_{encoder.replace('/', '_')}_{size}"
    if not RunFolder(run).fold(0).model.is_file():
        shutil.rmtree(run, ignore_errors=True)
        train = data / f"train_dataset_{size}"
        build_series([data / "stage_2_train"], train, labels_csv=data / "stage_2_train.csv",
                     options=BuildOptions(image_size=size, progress=False))
        fit(train, run, "cpu_small", TINY_RUN + [f"model.encoder.name={encoder}", f"data.image_size={size}"],
            TrainOptions(device=device))
    return run


def compare_engines(run: Path, data: Path, device: str | None) -> dict:
    """``predict`` of the test set's dataset with each engine (the dataset built once at the run's size)."""
    from ich3d.inference.export import export_run

    trained = load_trained(model_checkpoints([run])[0])
    dataset = data / f"test_dataset_{trained.image_size}"
    if not (dataset / "build.json").is_file():
        build_series([data / "stage_2_test"], dataset, options=BuildOptions(image_size=trained.image_size,
                                                                           progress=False))
    export = data / f"export_{run.name}"
    shutil.rmtree(export, ignore_errors=True)
    export_run([run], export)
    n_files = len(load_index(dataset)[0])
    row = {"encoder": trained.spec["encoder"]["name"], "size": trained.image_size, "files": n_files,
           "tta": trained.tta}
    for engine, source in (("torch", run), ("onnxruntime", export)):
        out = data / f"out_{engine}"
        shutil.rmtree(out, ignore_errors=True)
        summary = predict([source], out, dataset=dataset, progress=False,
                          options=InferOptions(device=device, engine=engine))
        t = summary["timings"]
        row[engine] = {"total": sum(v for k, v in t.items() if k != "load_s"), "model": t["model_s"],
                       "load": t["load_s"]}
    return row


def engines_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    import onnxruntime

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [ENGINES_SECTION, "",
             f"`nice -n 10 python scripts/bench_infer.py --engines --device cpu --encoder {args.encoder}` — machine: "
             f"{args.machine}, {os.cpu_count()} cores, date {args.date}, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads, eager), onnxruntime {onnxruntime.__version__} (CPU execution "
             f"provider, its default intra-op threads: one per core), python {platform.python_version()}; load "
             f"average at the end {load} (a shared VM: other jobs ran). One run each. End to end = `ich3d.predict` "
             "of a built dataset (index → per-image rows, submission.csv, exams), model loading apart; model = "
             "its model phase. Each run's own TTA (flip + reverse) in both engines.", "",
             "| model | encoder | size | images | PyTorch img/s (end to end / model) "
             "| ONNX Runtime img/s (end to end / model) | ratio end to end | ratio model |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row, label in zip(rows, ("demo (cpu_small)", "tiny run")):
        n, eager, ort = row["files"], row["torch"], row["onnxruntime"]
        lines.append(f"| {label} | `{row['encoder']}` | {row['size']} | {n} | {n / eager['total']:.1f} / "
                     f"{n / eager['model']:.1f} | {n / ort['total']:.1f} / {n / ort['model']:.1f} | "
                     f"{eager['total'] / ort['total']:.2f}x | {eager['model'] / ort['model']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/ich3d-bench-infer"))
    parser.add_argument("--run", type=Path, default=None, help="a trained run folder (default: train a tiny one)")
    parser.add_argument("--series", type=int, default=8, help="synthetic test series (about 37 files each)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=None, help="build_series processes (default: all cores)")
    parser.add_argument("--machine", default="2-core CPU VM")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--write", action="store_true", help="write the '## Inference' section of BENCHMARKS.md")
    parser.add_argument("--engines", action="store_true", help="compare PyTorch and ONNX Runtime (docstring)")
    parser.add_argument("--encoder", default="timm/resnet18", help="--engines: the 256 px model's encoder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run = prepare(args.data, args.series, args.run, args.device)
    if args.engines:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        rows = [compare_engines(r, args.data, args.device)
                for r in (run, engine_run(args.data, args.encoder, 256, args.device))]
        text = engines_markdown(rows, args)
        print(text)
        if args.write:
            write_section(text)
        return
    t, summary = infer_phases(run, args.data / "stage_2_test", args.data / "stage_2_sample_submission.csv",
                              args.data / "out", args.device, args.workers)
    text = markdown(t, summary, args, str(setup_runtime(args.device, amp=True).device.type))
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
