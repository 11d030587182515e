"""End to end with dcmtk: studies sent with storescu come back at a storescp destination as DICOM answers.

A positive and a negative study come back as one SR + key images, or one SR; a study holding only a
contrast-enhanced series as one SR saying it was not analysed, and why. The answers must be in the right study, state the right finding at the configured threshold and the
same probabilities as ``ich3d infer`` on the same files (within ``helpers.TOLERANCE``).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pydicom
import pytest

from peers import SCANNER, free_port, TOLERANCE, content_items, dcmtk, destination, node_factory, objects_by_study, reference_exam, sr_answer, storescu, studies, wait_for  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.peers]


@pytest.fixture(scope="module")
def references(trained_run: Path, studies: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``infer``'s exam of the positive and negative studies, and a threshold between their p(any)."""
    out = tmp_path_factory.mktemp("reference")
    exams = {name: reference_exam(trained_run, studies[name], out / name) for name in ("positive", "negative")}
    high, low = sorted(exams, key=lambda name: -exams[name]["p_any"])
    assert exams[high]["p_any"] > exams[low]["p_any"], "the two studies need different p(any)"
    return {"exams": exams, "threshold": (exams[high]["p_any"] + exams[low]["p_any"]) / 2, "called": high}


def test_dcmtk_studies_come_back_answered(trained_run: Path, studies: dict[str, Path], references: dict,
                                          node_factory, destination) -> None:
    node = node_factory(trained_run, destinations=[destination.address], threshold=references["threshold"],
                        web=f"127.0.0.1:{free_port()}").start()
    echo = subprocess.run([dcmtk("echoscu"), "-aet", SCANNER, "-aec", "ICH3D", "127.0.0.1", str(node.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    for name in ("positive", "negative", "contrast"):
        sent = storescu(node.port, studies[name])
        assert sent.returncode == 0, sent.stderr
    exams = references["exams"]
    expected = {exams[name]["study_uid"]: name for name in exams}
    contrast = str(pydicom.dcmread(next(studies["contrast"].iterdir()), stop_before_pixels=True).StudyInstanceUID)

    def complete() -> dict | None:
        found = objects_by_study(destination.received())
        ready = all(found.get(uid, {}).get("sr") for uid in [*expected, contrast])
        return found if ready and len(found[exams[references["called"]]["study_uid"]]["sc"]) >= 1 else None

    found = wait_for(complete, 120, "the answers at storescp")
    assert set(found) == {*expected, contrast}, "answers arrived for studies that were not sent"
    not_read = found.pop(contrast)
    assert len(not_read["sr"]) == 1 and not not_read["sc"]
    assert sr_answer(not_read["sr"][0]) == {"probabilities": {}, "finding_type": "1386000", "evaluation": (
        "STATUS", "NA-CONTRAST", "Not analysed: contrast-enhanced series only")}
    for uid, name in expected.items():
        objects, exam = found[uid], exams[name]
        assert len(objects["sr"]) == 1 and not objects["other"]
        sr = objects["sr"][0]
        answer = sr_answer(sr)
        present = name == references["called"]
        assert answer["evaluation"][:2] == ("1386000", "52101004" if present else "272519000")
        assert answer["probabilities"].keys() == exam["probabilities"].keys()
        for label, p in exam["probabilities"].items():
            assert answer["probabilities"][label] == pytest.approx(p, abs=TOLERANCE), label
        assert sr.PatientID == exam["patient_id"]
        assert (len(objects["sc"]) >= 1) == present
        for image in objects["sc"]:
            assert image.BurnedInAnnotation == "YES" and image.StudyInstanceUID == uid
            assert image.SeriesInstanceUID != sr.SeriesInstanceUID
        if present:
            first = min(objects["sc"], key=lambda image: image.InstanceNumber)
            assert first.SourceImageSequence[0].ReferencedSOPInstanceUID == exam["key_sop_uid"]
        key = [i for i in content_items(sr) if "ReferencedSOPSequence" in i]
        assert any(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == exam["key_sop_uid"] for i in key)
    first_sr = next(p for p in destination.received() if p.name.startswith("SR"))
    dump = subprocess.run([dcmtk("dsrdump"), str(first_sr)], capture_output=True, text=True)
    assert dump.returncode == 0 and '(1386000,SCT,"Intracranial hemorrhage")' in dump.stdout, dump.stdout
    check_worklist(node, references)
    assert node.stop() == 0


def check_worklist(node, references: dict) -> None:
    """The worklist lists the answered studies (the contrast-only one not analysed), the suspected bleed first, with its key image; the JSON
    API, /healthz and /metrics answer."""
    base = "http://" + node.settings["web"]
    rows = json.loads(urllib.request.urlopen(base + "/api/studies", timeout=10).read())
    called = references["exams"][references["called"]]["study_uid"]
    assert [r["study_uid"] for r in rows][0] == called and rows[0]["finding"] == "present"
    assert sorted(r["state"] for r in rows) == ["analysed", "analysed", "not analysed"]
    assert all(r["delivered"] for r in rows)
    page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
    assert "ICH suspected" in page and called in page
    study = urllib.request.urlopen(f"{base}/study/{rows[0]['study_key']}", timeout=10).read().decode()
    assert "<polyline" in study and f"/results/{rows[0]['result_id']}/key-1.png" in study
    png = urllib.request.urlopen(f"{base}/results/{rows[0]['result_id']}/key-1.png", timeout=10).read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(urllib.request.urlopen(base + "/healthz", timeout=10).read())["ok"]
    metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    assert "ich3d_deliveries_sent 3" in metrics and 'ich3d_stable_to_delivered_s{quantile="0.5"}' in metrics
