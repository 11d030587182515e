"""Real peers for the DICOM node's tests (dcmtk programs, the node itself, on free loopback ports), their
fixtures, and readers of the answers.

The tests never mock the network: ``storescu``/``echoscu`` (dcmtk) send, ``storescp`` (dcmtk)
receives the answers, ``ich3d serve`` runs as its own process (so a test can kill -9 it). dcmtk's
programs are found among the PATH's executables that are not Python scripts (pynetdicom installs
Python programs of the same names); a test that needs them fails, never skips, when they are missing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from ich3d.constants import LABELS

REPO = Path(__file__).resolve().parents[2]
SCANNER = "SCANNER"
#: Probabilities in the SR equal ``ich3d infer``'s on the same files within this (the SR stores them as
#: decimal strings of 16 characters).
TOLERANCE = 1e-6
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: Settings every node of the tests gets: a short stable time, quick retries, no worklist unless asked.
FAST = {"stable_after": 1.5, "retry_first_s": 0.5, "retry_max_s": 2.0, "device": "cpu", "web": ""}


def dcmtk(name: str) -> str:
    """The path of dcmtk's ``name`` (echoscu, storescu, storescp, dcmdump, dsrdump).

    Raises:
        AssertionError: dcmtk is not installed (CI installs it: ``apt-get install dcmtk``).
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK) and path.read_bytes()[:2] != b"#!":
            return str(path)
    raise AssertionError(f"dcmtk's {name} is not installed: apt-get install dcmtk")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, period: float = 0.2) -> Any:
    """Polls ``condition`` until it returns something truthy; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def storescu(port: int, *paths: Path, calling: str = SCANNER, called: str = "ICH3D") -> subprocess.CompletedProcess:
    """Sends files or folders (recursively) with dcmtk's storescu (verbose: one line per response)."""
    return subprocess.run([dcmtk("storescu"), "-v", "-aet", calling, "-aec", called, "+sd", "+r", "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True, timeout=300)


class Storescp:
    """dcmtk's storescp as a result destination (AE ``DEST``), writing into ``folder``."""

    def __init__(self, folder: Path, port: int | None = None, ae_title: str = "DEST") -> None:
        self.folder, self.port, self.ae_title = folder, port or free_port(), ae_title
        self.process: subprocess.Popen | None = None

    def start(self) -> Storescp:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([dcmtk("storescp"), "-aet", self.ae_title, "-od", str(self.folder),
                                         str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 10, "storescp to listen")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


class NodeProcess:
    """``ich3d serve`` as a process of its own (a YAML config in ``data``'s parent)."""

    def __init__(self, data: Path, run: Path, **settings: Any) -> None:
        self.data, self.port = data, settings.pop("port", None) or free_port()
        self.settings = FAST | {"run": str(run), "data": str(data), "port": self.port,
                                "allow_ae": [SCANNER]} | settings
        self.process: subprocess.Popen | None = None
        self.log = data.parent / f"{data.name}.log"

    def start(self, wait: bool = True) -> NodeProcess:
        config = self.data.parent / f"{self.data.name}.yaml"
        config.write_text(yaml.safe_dump(self.settings))
        env = os.environ | {"PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "ich3d.app.cli", "serve", "--config", str(config)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        if wait:
            wait_for(lambda: port_open(self.port) or self.process.poll() is not None, 60, "the node to listen")
            assert self.process.poll() is None, self.log.read_text()[-3000:]
        return self

    def kill(self) -> None:
        """kill -9 (the worker dies with it)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        self.process = None
        return code

    def db(self) -> Any:
        from ich3d.layout import ServeFolder
        from ich3d.serve.store import Store

        return Store(ServeFolder(self.data).database)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Makes nodes (and storescp destinations) that are stopped when the test ends."""
    made: list[Any] = []

    def make(run: Path, name: str = "data", **settings: Any) -> NodeProcess:
        node = NodeProcess(tmp_path / name, run, **settings)
        made.append(node)
        return node

    yield make
    for node in made:
        node.kill()


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[Storescp]:
    scp = Storescp(tmp_path / "dest").start()
    yield scp
    scp.stop()


@pytest.fixture(scope="session")
def studies(clinical_export: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders to send: ``positive`` (a study with a bleed), ``negative`` (one without), ``contrast`` (the
    contrast-enhanced series of a study alone, as a study of its own: new Study, Series and SOP Instance UIDs)."""
    from pydicom.uid import generate_uid

    summary = json.loads((clinical_export / "synth.json").read_text())
    by_truth = {bool(s["labels"]["any"]): clinical_export / s["folder"] for s in summary["studies"]}
    contrast = next(p for p in (clinical_export / "export").glob("*/*") if p.name.endswith("C+"))
    only_contrast = tmp_path_factory.mktemp("contrast_only") / contrast.name
    only_contrast.mkdir()
    for path in sorted(contrast.iterdir()):
        ds = pydicom.dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, generate_uid(entropy_srcs=["contrast only", str(getattr(ds, keyword))]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(only_contrast / path.name)
    return {"positive": by_truth[True], "negative": by_truth[False], "contrast": only_contrast}


def content_items(ds: Any) -> list[Any]:
    """Every content item of an SR, depth first."""
    found = []
    for item in ds.get("ContentSequence", []):
        found.append(item)
        found += content_items(item)
    return found


def sr_answer(ds: Any) -> dict[str, Any]:
    """The finding, the evaluation and the six probabilities an SR states."""
    answer: dict[str, Any] = {"probabilities": {}}
    for item in content_items(ds):
        name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        if name is None:
            continue
        if item.ValueType == "NUM" and name.CodeMeaning.startswith("Probability of"):
            label = name.CodeMeaning.removeprefix("Probability of ").split()[0].replace("intracranial", "any")
            answer["probabilities"][label] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE" and name.CodeValue in ("1386000", "STATUS"):
            answer["evaluation"] = (name.CodeValue, item.ConceptCodeSequence[0].CodeValue,
                                    item.ConceptCodeSequence[0].CodeMeaning)
        elif item.ValueType == "CODE" and name.CodeMeaning == "Finding":
            answer["finding_type"] = item.ConceptCodeSequence[0].CodeValue
    return answer


def objects_by_study(files: list[Path]) -> dict[str, dict[str, list[Any]]]:
    """StudyInstanceUID → {"sr": [...], "sc": [...]} data sets of received files."""
    studies: dict[str, dict[str, list[Any]]] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        kind = {SR_CLASS: "sr", SC_CLASS: "sc"}.get(str(ds.SOPClassUID), "other")
        studies.setdefault(str(ds.StudyInstanceUID), {"sr": [], "sc": [], "other": []})[kind].append(ds)
    return studies


def reference_exam(run: Path, folder: Path, out: Path) -> dict[str, Any]:
    """``ich3d infer --dicom-dir folder`` (the API under it): the study's exam row."""
    from ich3d.inference.run import InferOptions, predict
    from ich3d.layout import InferFolder

    predict([run], out, dicom_dirs=[folder], options=InferOptions(device="cpu", workers=1), progress=False)
    (exam,) = json.loads(InferFolder(out).exams_json.read_text())
    return exam | {"probabilities": {name: exam[f"p_{name}"] for name in LABELS}}
