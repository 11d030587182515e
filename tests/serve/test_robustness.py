"""The node under the faults a hospital network brings: kills, a destination that is down, an unknown
sender, a full disk, resends, a study that arrives in two parts. Real peers only (dcmtk, the node's
own process)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from peers import (SCANNER, Storescp, dcmtk, destination, free_port, node_factory, objects_by_study,  # noqa: F401
                   storescu, studies, wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.peers]


def _db_rows(node, sql_view: str) -> list[dict]:
    store = node.db()
    try:
        return {"results": store.worklist, "metrics": store.metrics}[sql_view]()
    finally:
        store.close()


def _results(node) -> list[dict]:
    """Every result of every study (from the study pages' data)."""
    store = node.db()
    try:
        return [r for row in store.worklist() for r in store.study(row["study_key"])["results"]]
    finally:
        store.close()


def _srs(destination) -> list[Path]:
    """The SR files a storescp destination received (dcmtk names them SR...)."""
    return [p for p in destination.received() if p.name.startswith("SR")]


def _acknowledged(output: str) -> list[Path]:
    """Files dcmtk's storescu (verbose) saw answered with success."""
    acked, current = [], None
    for line in output.splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        if sending:
            current = Path(sending.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
    return acked


def test_unknown_calling_ae_is_rejected(trained_run: Path, node_factory) -> None:
    node = node_factory(trained_run).start()
    for calling, called in ((SCANNER, "ICH3D"), ("INTRUDER", "ICH3D"), (SCANNER, "NOTME")):
        echo = subprocess.run([dcmtk("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(node.port)],
                              capture_output=True, text=True, timeout=30)
        assert (echo.returncode == 0) == (calling == SCANNER and called == "ICH3D"), (calling, called, echo.stderr)
        if echo.returncode:
            assert "rejected" in (echo.stdout + echo.stderr).lower()
    assert node.stop() == 0
    elsewhere = node_factory(trained_run, name="hosts", allow_hosts=["10.9.9.9"]).start()
    echo = subprocess.run([dcmtk("echoscu"), "-aet", SCANNER, "-aec", "ICH3D", "127.0.0.1", str(elsewhere.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode != 0, "an address outside allow_hosts was accepted"
    assert elsewhere.stop() == 0


def test_sigterm_finishes_the_study_in_hand(trained_run: Path, studies: dict, node_factory) -> None:
    node = node_factory(trained_run).start()
    assert storescu(node.port, studies["negative"]).returncode == 0
    wait_for(lambda: any(r["job_state"] == "running" for r in node.db().worklist()), 60, "the analysis to start")
    assert node.stop() == 0
    (row,) = node.db().worklist()
    assert row["job_state"] == "done" and row["status"] == "analysed"


def test_destination_down_then_up_gets_the_result(trained_run: Path, studies: dict, node_factory,
                                                  tmp_path: Path) -> None:
    later = Storescp(tmp_path / "later")
    node = node_factory(trained_run, destinations=[later.address]).start()
    assert storescu(node.port, studies["negative"]).returncode == 0
    failed = wait_for(lambda: [d for r in _results(node) for d in r["deliveries"] if d["attempts"] >= 1], 90,
                      "a failed delivery attempt")
    assert failed[0]["state"] == "pending" and "no connection" in failed[0]["last_status"]
    later.start()
    try:
        (delivery,) = wait_for(lambda: [d for r in _results(node) for d in r["deliveries"] if d["state"] == "sent"],
                               60, "the result after the destination came back")
        assert delivery["attempts"] >= 2 and delivery["last_status"] == "0x0000"
        assert len(_srs(later)) == 1
    finally:
        later.stop()
    assert node.stop() == 0


def test_resend_is_stored_once_and_a_second_part_supersedes(trained_run: Path, studies: dict, node_factory,
                                                            destination, tmp_path: Path) -> None:
    study = studies["negative"]
    first_part = tmp_path / "part1"
    shutil.copytree(next(p for p in study.iterdir() if p.name == "CT 5mm plain"), first_part / "CT 5mm plain")
    node = node_factory(trained_run, destinations=[destination.address]).start()
    assert storescu(node.port, first_part).returncode == 0
    wait_for(lambda: len(_srs(destination)) == 1, 90, "the first result")
    assert storescu(node.port, study).returncode == 0  # the rest of the study, minutes later in a hospital
    wait_for(lambda: len(_srs(destination)) == 2, 90, "the superseding result")
    first, second = sorted((pydicom.dcmread(p) for p in _srs(destination)),
                           key=lambda ds: "PredecessorDocumentsSequence" in ds)
    assert second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert "supersedes" in second.SeriesDescription
    results = _results(node)
    assert len(results) == 2 and results[1]["superseded_by"] == results[0]["id"]
    n_instances = _db_rows(node, "metrics")["counts"]["instances"]
    assert storescu(node.port, study).returncode == 0  # a resend of the whole study: nothing changed
    time.sleep(3 * node.settings["stable_after"])
    assert _db_rows(node, "metrics")["counts"]["instances"] == n_instances
    assert len(_results(node)) == 2 and len(_srs(destination)) == 2
    assert node.stop() == 0


def test_kill_while_arriving_and_while_analysing(trained_run: Path, studies: dict, node_factory,
                                                 destination) -> None:
    node = node_factory(trained_run, destinations=[destination.address]).start()
    sending = subprocess.Popen([dcmtk("storescu"), "-v", "-aet", SCANNER, "-aec", "ICH3D", "+sd", "+r", "127.0.0.1",
                                str(node.port), str(studies["positive"])], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: _db_rows(node, "metrics")["counts"]["instances"] >= 20, 60, "20 instances received")
    node.kill()
    acked = _acknowledged(sending.communicate(timeout=60)[0])
    assert acked, "storescu saw no acknowledged instance before the kill"
    node.start()
    store = node.db()
    for path in acked:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        digest = store.instance_digest(uid)
        assert digest is not None, f"acknowledged instance {uid} lost"
        assert hashlib.sha256(Path(digest[1]).read_bytes()).hexdigest() == digest[0]
    wait_for(lambda: len(_srs(destination)) == 1, 120, "the answer to what arrived")
    assert storescu(node.port, studies["negative"]).returncode == 0
    wait_for(lambda: any(r["job_state"] == "running" for r in node.db().worklist()), 60, "the analysis to start")
    node.kill()
    node.start()
    wait_for(lambda: len(_srs(destination)) == 2, 120, "the answer after the restart")
    assert node.stop() == 0
    found = objects_by_study(destination.received())
    assert [len(objects["sr"]) for objects in found.values()] == [1, 1], "a study answered more than once"
    results = _results(node)
    assert len(results) == 2 and [d["state"] for r in results for d in r["deliveries"]] == ["sent", "sent"]


def test_full_disk_answers_out_of_resources_and_leaves_nothing_half_written(trained_run: Path, studies: dict,
                                                                            node_factory, tmp_path: Path) -> None:
    data = tmp_path / "small"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    try:
        node = node_factory(trained_run, name="small").start()
        sent = storescu(node.port, studies["positive"])
        output = (sent.stdout + sent.stderr).lower()
        assert re.search(r"outofresources|out of resources|0xa700", output), output[-2000:]
        assert "store response (success)" in output  # what fitted was stored
        node.kill()  # storescu is done: nothing was in flight
        store = node.db()
        stored = {Path(row_path) for row_path in store.instance_paths()}
        on_disk = {p for p in (data / "studies").rglob("*") if p.is_file()}
        assert stored and on_disk == stored, "a file without its database row, or a row without its file"
        for path in stored:
            pydicom.dcmread(path)  # complete files only
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
