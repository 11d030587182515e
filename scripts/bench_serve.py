"""The DICOM node under load: receive rate, stable → delivered per study, studies per hour.

Usage: nice -n 10 python scripts/bench_serve.py [--data /tmp/ich3d-bench-serve] [--run RUN] [--device cpu] [--write]

Synthetic 32-slice 512x512 studies (one axial 5 mm series each) are generated once into --data;
without --run a tiny cpu_small run is trained there (the weights do not matter for speed, the
architecture does). An ``ich3d serve`` process (stable_after --stable-after s) answers to a dcmtk
``storescp``; dcmtk ``storescu`` sends:

1. wave 1: --studies studies over as many concurrent associations, the worker idle;
2. wave 2: --studies other studies (the same pixels under new UIDs) while the worker reads wave 1:
   the receive rate of both waves shows whether analysing slows receiving;
3. single: --single studies one at a time, each sent once the previous answer was delivered: the
   stable → delivered time of a study on an otherwise idle node (the bar: ≤ 15 s median on 2 cores).

Per study, stable → delivered comes from the node's database (job queued → delivery sent); a burst's
includes the wait behind the studies queued before it. --write replaces the "## Serve" section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import yaml
from benchmarks_md import write_section  # noqa: E402  (scripts/ is on sys.path when run)
from pydicom.uid import generate_uid

from ich3d.config import load_config
from ich3d.dataset.build import BuildOptions, build_series
from ich3d.layout import RunFolder, ServeFolder
from ich3d.serve.store import Store
from ich3d.synth.generate import make_synthetic_dataset
from ich3d.synth.plan import SynthConfig
from ich3d.training.fit import TrainOptions, fit

SECTION = "## Serve"
TINY_RUN = ["stages.slice.epochs=1", "stages.slice.samples_per_epoch=64", "stages.sequence.epochs=1"]
REPO = Path(__file__).resolve().parents[1]


def dcmtk(name: str) -> str:
    """dcmtk's program (not pynetdicom's Python script of the same name)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        path = Path(folder) / name
        if path.is_file() and path.read_bytes()[:2] != b"#!":
            return str(path)
    sys.exit(f"dcmtk's {name} is not installed: apt-get install dcmtk")


def prepare(data: Path, n_studies: int, run: Path | None, device: str | None) -> tuple[list[Path], Path]:
    """The studies (one folder each) and the run (trained once unless given)."""
    synth = data / "synth"
    if not (synth / "stage_2_train").is_dir():
        make_synthetic_dataset(synth, SynthConfig(n_train_series=n_studies, n_test_series=1, image_size=512,
                                                  min_slices=32, max_slices=32, slice_spacings=(5.0,),
                                                  quirks=False, seed=3))
    studies = data / "studies"
    if not studies.is_dir():
        for path in sorted((synth / "stage_2_train").glob("*.dcm")):
            uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
            folder = studies / uid
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)
    if run is None:
        run = data / "run"
        if not RunFolder(run).fold(0).model.is_file():
            shutil.rmtree(run, ignore_errors=True)
            build_series([synth / "stage_2_train"], data / "train_dataset", labels_csv=synth / "stage_2_train.csv",
                         options=BuildOptions(image_size=load_config("cpu_small").data.image_size, progress=False))
            fit(data / "train_dataset", run, "cpu_small", TINY_RUN, TrainOptions(device=device))
    return sorted(studies.iterdir()), run


def renamed(studies: list[Path], out: Path, tag: str) -> list[Path]:
    """Copies of ``studies`` under new Study/Series/SOP Instance UIDs (deterministic in ``tag``)."""
    copies = []
    for study in studies:
        target = out / f"{tag}-{study.name}"
        if not target.is_dir():
            target.mkdir(parents=True)
            for path in sorted(study.glob("*.dcm")):
                ds = pydicom.dcmread(path)
                for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                    setattr(ds, keyword, generate_uid(entropy_srcs=[tag, str(getattr(ds, keyword))]))
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(target / path.name)
        copies.append(target)
    return copies


def send_burst(port: int, studies: list[Path]) -> tuple[int, float]:
    """One storescu association per study, all at once. Returns (instances sent, wall seconds)."""
    began = time.perf_counter()
    processes = [subprocess.Popen([dcmtk("storescu"), "-aet", "BENCH", "-aec", "ICH3D", "+sd", "127.0.0.1", str(port),
                                   str(study)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for study in studies]
    failed = [p.args[-1] for p in processes if p.wait() != 0]
    if failed:
        sys.exit(f"storescu failed for {failed}")
    return sum(len(list(s.glob("*.dcm"))) for s in studies), time.perf_counter() - began


def wait_delivered(store: Store, n: int, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while store.metrics()["counts"].get("deliveries_sent", 0) < n:
        if time.monotonic() > deadline:
            sys.exit(f"only {store.metrics()['counts']} after {timeout:.0f} s")
        time.sleep(0.5)


def latencies(store: Store, first: int, last: int) -> list[float]:
    """Stable → delivered (s) of deliveries ``first``..``last``-1 in the order they were sent."""
    return store.metrics()["latencies"]["stable_to_delivered_s"][first:last]


def _summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.1f} / {p95:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/ich3d-bench-serve"))
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--studies", type=int, default=20, help="studies (and concurrent associations) per wave")
    parser.add_argument("--single", type=int, default=5, help="studies sent one at a time at the end")
    parser.add_argument("--stable-after", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--machine", default="2-core CPU VM")
    parser.add_argument("--load", default="shared with other jobs")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    studies, run = prepare(args.data, args.studies, args.run, args.device)
    node_data, copies = args.data / "node", args.data / "copies"
    shutil.rmtree(node_data, ignore_errors=True)
    # RSNA-style synthetic files carry ID_<hex> UIDs, which storescu will not send: every wave gets valid UIDs
    wave1, wave2 = renamed(studies, copies, "wave1"), renamed(studies, copies, "wave2")
    single = renamed(studies[:args.single], copies, "single")
    port, dest_port = 11400 + os.getpid() % 500, 11900 + os.getpid() % 500
    (args.data / "dest").mkdir(exist_ok=True)
    storescp = subprocess.Popen([dcmtk("storescp"), "-aet", "DEST", "-od", str(args.data / "dest"), str(dest_port)])
    config = {"run": str(run), "data": str(node_data), "port": port, "web": "", "device": args.device,
              "stable_after": args.stable_after, "destinations": [f"DEST@127.0.0.1:{dest_port}"]}
    (args.data / "serve.yaml").write_text(yaml.safe_dump(config))
    node = subprocess.Popen([sys.executable, "-m", "ich3d.app.cli", "-q", "serve", "--config", str(args.data / "serve.yaml")],
                            env=os.environ | {"PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while subprocess.run([dcmtk("echoscu"), "-aec", "ICH3D", "127.0.0.1", str(port)],
                             capture_output=True).returncode != 0:  # listening once the model is loaded
            if time.monotonic() > deadline or node.poll() is not None:
                sys.exit("the node did not start")
            time.sleep(1)
        store = Store(ServeFolder(node_data).database)
        began = time.perf_counter()
        n1, t1 = send_burst(port, wave1)
        time.sleep(args.stable_after + 2)  # wave 1 stable: the worker is reading it
        busy = store.metrics()["counts"].get("jobs_running", 0) + store.metrics()["counts"].get("jobs_queued", 0)
        n2, t2 = send_burst(port, wave2)
        wait_delivered(store, 2 * len(studies))
        burst, burst_s = latencies(store, 0, 2 * len(studies)), time.perf_counter() - began
        started = time.perf_counter()
        for number, study in enumerate(single, 1):
            send_burst(port, [study])
            wait_delivered(store, 2 * len(studies) + number)
        alone = latencies(store, 2 * len(studies), 2 * len(studies) + len(single))
        analysis = store.metrics()["latencies"]["analysis_s"]
    finally:
        node.terminate()
        node.wait(120)
        storescp.terminate()
    lines = [SECTION, "", f"`nice -n 10 python scripts/bench_serve.py` — machine: {args.machine} ({os.cpu_count()} cores), "
             f"load: {args.load}, date {datetime.date.today().isoformat()}, python {platform.python_version()}, "
             f"device {args.device}, model cpu_small (tiny training), stable_after {args.stable_after:g} s. "
             f"Studies: one axial series of 32 slices of 512x512 each; dcmtk storescu → ich3d serve → dcmtk storescp.",
             "", "| measure | value |", "|---|---|",
             f"| wave 1 receive rate ({len(studies)} concurrent associations, worker idle) | {n1 / t1:.0f} instances/s ({n1} in {t1:.1f} s) |",
             f"| wave 2 receive rate (same, while the worker reads wave 1: {busy} jobs waiting) | {n2 / t2:.0f} instances/s ({n2} in {t2:.1f} s) |",
             f"| analysis per study (job start → result recorded), median / p95 | {_summary(analysis)} s |",
             f"| stable → delivered, burst of {2 * len(studies)} (queueing included), median / p95 | {_summary(burst)} s |",
             f"| stable → delivered, one study at a time ({len(single)}), median / p95 | {_summary(alone)} s |",
             f"| studies per hour (the {len(single)} single studies, back to back) | "
             f"{len(single) / (time.perf_counter() - started) * 3600:.0f} |",
             f"| studies per hour (both waves: first instance sent → last answer delivered, {burst_s:.0f} s) | "
             f"{2 * len(studies) / burst_s * 3600:.0f} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
