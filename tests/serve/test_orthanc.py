"""Orthanc as the hospital's PACS: it sends a study to the node (``/modalities/ich3d/store``), the node
sends its answer back to Orthanc, and the SR and key images are found in that study through Orthanc's
REST API with the probabilities of ``ich3d infer`` on the same files."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from peers import (TOLERANCE, free_port, node_factory, port_open, reference_exam, sr_answer,  # noqa: F401
                   studies, wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.peers]
ORTHANC = "/usr/sbin/Orthanc"


class Orthanc:
    """An Orthanc server of the test's own (config, storage and index in a temporary folder)."""

    def __init__(self, folder: Path, node_port: int) -> None:
        self.http, self.dicom = free_port(), free_port()
        folder.mkdir(parents=True)
        config = {"Name": "ich3d-test", "StorageDirectory": str(folder / "storage"),
                  "IndexDirectory": str(folder / "index"), "HttpPort": self.http, "DicomPort": self.dicom,
                  "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "DicomModalities": {"ich3d": ["ICH3D", "127.0.0.1", node_port]}, "Plugins": [],
                  "DicomCheckCalledAet": True}
        (folder / "orthanc.json").write_text(json.dumps(config))
        binary = shutil.which("Orthanc") or ORTHANC
        assert Path(binary).is_file(), "Orthanc is not installed: apt-get install orthanc"
        self.process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.http) and port_open(self.dicom), 30, "Orthanc to listen")

    def rest(self, path: str, data: bytes | None = None) -> object:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data,
                                         method="POST" if data is not None else "GET")
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture
def orthanc_and_node(trained_run: Path, node_factory, tmp_path: Path) -> Iterator[tuple[Orthanc, object]]:
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port)
    try:
        node = node_factory(trained_run, port=node_port, allow_ae=["ORTHANC"],
                            destinations=[f"ORTHANC@127.0.0.1:{orthanc.dicom}"])
        yield orthanc, node
    finally:
        orthanc.stop()


def test_orthanc_sends_a_study_and_finds_the_answer_in_it(trained_run: Path, studies: dict, orthanc_and_node,
                                                         tmp_path: Path) -> None:
    orthanc, node = orthanc_and_node
    exam = reference_exam(trained_run, studies["positive"], tmp_path / "reference")
    node.settings["threshold"] = exam["p_any"] - 1e-3  # positive at the operating threshold: SR + key images
    node.start()
    study_id = None
    for path in sorted(p for p in studies["positive"].rglob("*.dcm")):
        study_id = orthanc.rest("/instances", path.read_bytes())["ParentStudy"]
    orthanc.rest("/modalities/ich3d/store", json.dumps(study_id).encode())

    def answered() -> dict | None:
        series = {s["MainDicomTags"].get("Modality"): s for s in orthanc.rest(f"/studies/{study_id}/series")}
        return series if "SR" in series and len(series) >= 2 and _has_sc(orthanc, series) else None

    series = wait_for(answered, 120, "the SR and key images in Orthanc's study")
    (sr_id,) = series["SR"]["Instances"]
    sr = pydicom.dcmread(_file(orthanc, sr_id))
    assert sr.StudyInstanceUID == exam["study_uid"]
    answer = sr_answer(sr)
    assert answer["evaluation"][:2] == ("1386000", "52101004")
    for label, p in exam["probabilities"].items():
        assert answer["probabilities"][label] == pytest.approx(p, abs=TOLERANCE), label
    key_images = [pydicom.dcmread(_file(orthanc, i)) for s in series.values() for i in s["Instances"]
                  if i != sr_id and _is_sc(orthanc, i)]
    assert key_images and all(k.BurnedInAnnotation == "YES" for k in key_images)
    first = min(key_images, key=lambda k: k.InstanceNumber)
    assert first.SourceImageSequence[0].ReferencedSOPInstanceUID == exam["key_sop_uid"]
    assert node.stop() == 0


def _file(orthanc: Orthanc, instance: str) -> io.BytesIO:
    return io.BytesIO(orthanc.rest(f"/instances/{instance}/file"))


def _is_sc(orthanc: Orthanc, instance: str) -> bool:
    return orthanc.rest(f"/instances/{instance}/metadata/SopClassUid") == b"1.2.840.10008.5.1.4.1.1.7"


def _has_sc(orthanc: Orthanc, series: dict) -> bool:
    return any(_is_sc(orthanc, i) for s in series.values() for i in s["Instances"])
