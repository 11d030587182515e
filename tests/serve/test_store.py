"""The node's database and settings without a network: stability and generations, supersession,
deliveries and their backoff, recovery after a kill, retention, and the config's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from ich3d.errors import ConfigError, InputError
from ich3d.serve.config import Destination, load_serve_config
from ich3d.serve.sender import backoff
from ich3d.serve.store import InstanceRow, ResultRow, Store, study_key


def _row(sop: str, study: str = "1.2.3") -> InstanceRow:
    return InstanceRow(sop, study, study + ".1", "1.2.840.10008.5.1.4.1.1.2", "CT", "P1", "A1", "20260101", "Head",
                       "SCANNER")


def _result(folder: str | None = "/tmp/x") -> ResultRow:
    return ResultRow("analysed", "absent", 0.1, "", "", folder, {"probabilities": {"any": 0.1}})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "serve.db")


def test_a_study_is_queued_once_stable_and_again_only_when_it_changed(store: Store) -> None:
    store.add_instance(_row("1"), Path("/a"), "h1", now=100.0)
    store.add_instance(_row("2"), Path("/b"), "h2", now=105.0)
    assert store.queue_stable(30, now=130.0) == []  # 25 s since the last instance
    (job,) = store.queue_stable(30, now=135.0)
    assert job.study_uid == "1.2.3" and job.generation == 2
    assert store.queue_stable(30, now=200.0) == []  # nothing changed since
    store.add_instance(_row("3"), Path("/c"), "h3", now=210.0)  # a later instance: queued again
    (again,) = store.queue_stable(30, now=241.0)
    assert again.generation == 3
    states = [r["job_state"] for r in store.worklist()]
    assert states == ["queued"]  # the first job, not started, was replaced


def test_a_new_result_supersedes_the_old_and_cancels_its_unsent_deliveries(store: Store) -> None:
    store.add_instance(_row("1"), Path("/a"), "h1", now=0.0)
    first = store.queue_stable(1, now=10.0)[0]
    assert store.claim_job() == first
    old = store.finish_job(first, _result(), ["DEST@127.0.0.1:104"])
    store.add_instance(_row("2"), Path("/b"), "h2", now=20.0)
    second = store.queue_stable(1, now=30.0)[0]
    store.claim_job()
    new = store.finish_job(second, _result(), ["DEST@127.0.0.1:104"])
    study = store.study(study_key("1.2.3"))
    by_id = {r["id"]: r for r in study["results"]}
    assert by_id[old]["superseded_by"] == new and by_id[new]["supersedes"] == old
    assert [d["state"] for d in by_id[old]["deliveries"]] == ["superseded"]
    assert [d.result_id for d in store.due_deliveries()] == [new]


def test_failed_deliveries_wait_their_backoff_and_a_kill_requeues_the_running_job(store: Store) -> None:
    store.add_instance(_row("1"), Path("/a"), "h1", now=0.0)
    job = store.queue_stable(1, now=10.0)[0]
    store.claim_job()
    assert store.recover()["jobs_interrupted"] == 1  # the worker was killed while reading it
    assert store.claim_job() == job
    store.finish_job(job, _result(), ["DEST@127.0.0.1:104"])
    (delivery,) = store.due_deliveries()
    store.delivery_failed(delivery, "no connection", next_try=1e12)
    assert store.due_deliveries() == [] and store.recover()["deliveries_pending"] == 1
    assert [backoff(n, 5, 300) for n in (1, 2, 3, 8)] == [5, 10, 20, 300]


def test_an_instance_cannot_move_to_another_study_and_retention_keeps_results(store: Store) -> None:
    store.add_instance(_row("1", "1.2.3"), Path("/a"), "h1", now=0.0)
    with pytest.raises(InputError, match="another study"):
        store.add_instance(_row("1", "9.9.9"), Path("/b"), "h1", now=1.0)
    job = store.queue_stable(1, now=10.0)[0]
    assert store.studies_to_purge(before=100.0) == []  # a job is waiting for its images
    store.claim_job()
    store.finish_job(job, _result(), [])
    assert store.studies_to_purge(before=100.0) == [study_key("1.2.3")]
    store.images_deleted(study_key("1.2.3"))
    study = store.study(study_key("1.2.3"))
    assert study["series"] == [] and len(study["results"]) == 1 and study["images_deleted"]


def test_config_from_yaml_with_command_line_overrides(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("run: r\ndata: d\nport: 104\ndestinations: [PACS@10.0.0.5:104]\nallow_ae: PACS\n")
    config = load_serve_config(path, {"port": 11112, "ae_title": None})
    assert config.port == 11112 and config.allow_ae == ("PACS",)
    assert config.destinations == (Destination("PACS", "10.0.0.5", 104),) and config.stable_after == 30
    for bad, message in (({"colour": "red"}, "unknown key"), ({"web": "0.0.0.0:80"}, "needs web_token"),
                         ({"destinations": ["PACS@host"]}, "AE@HOST:PORT"), ({"ae_title": "A" * 17}, "AE title"),
                         ({"stable_after": 0}, "positive"), ({"threshold": 1.5}, "between 0 and 1")):
        with pytest.raises(ConfigError, match=message):
            load_serve_config(path, bad)
    with pytest.raises(ConfigError, match="run and data missing"):
        load_serve_config(None, {})
