"""The node's database: instances, studies, jobs, results and deliveries in one SQLite file (WAL mode).

The only module that speaks SQL (docs/design.md §13): the receiver, the scheduler, the worker, the
sender and the worklist call the methods of :class:`Store`, so a server database could replace it
behind the same methods. Each thread (and process) opens its own connection; every change is one
transaction, committed with ``synchronous=FULL`` before the caller acknowledges anything.

A study's ``generation`` counts the changes it received (a new instance, or an instance resent with
other bytes); a job records the generation it analyses, so a study is queued again exactly when it
changed after its last job, and a resend of identical instances changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ich3d.errors import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY, study_uid TEXT NOT NULL UNIQUE, patient_id TEXT, accession TEXT,
    study_date TEXT, description TEXT, calling_ae TEXT, first_received REAL, last_received REAL,
    n_instances INTEGER NOT NULL DEFAULT 0, generation INTEGER NOT NULL DEFAULT 0, images_deleted REAL);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, study_key TEXT NOT NULL REFERENCES studies, series_uid TEXT, sop_class TEXT,
    modality TEXT, path TEXT NOT NULL, sha256 TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, study_key TEXT NOT NULL REFERENCES studies, generation INTEGER NOT NULL,
    state TEXT NOT NULL, queued REAL NOT NULL, started REAL, finished REAL, error TEXT);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL UNIQUE REFERENCES jobs, study_key TEXT NOT NULL,
    created REAL NOT NULL, status TEXT NOT NULL, finding TEXT, p_any REAL, flagged TEXT, reason TEXT,
    folder TEXT, summary TEXT, supersedes INTEGER, superseded_by INTEGER);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY, result_id INTEGER NOT NULL REFERENCES results, destination TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL, last_status TEXT,
    sent REAL);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_key);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_try);
"""
#: Job states; a ``running`` job found at start was interrupted and is queued again.
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
#: Delivery states: ``pending`` (to send; after a failed attempt it keeps the status and waits for its
#: next try), ``sent``, ``superseded`` (a newer result of the study replaced it before it was sent).
DELIVERY_STATES = ("pending", "sent", "superseded")


def study_key(study_uid: str) -> str:
    """The folder key of a study: ``s`` + 24 hex digits of the SHA-256 of its UID (never the UID itself)."""
    return "s" + hashlib.sha256(study_uid.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def instance_key(sop_uid: str) -> str:
    """The file key of an instance: ``i`` + 32 hex digits of the SHA-256 of its SOPInstanceUID."""
    return "i" + hashlib.sha256(sop_uid.encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass(frozen=True)
class InstanceRow:
    """What the database keeps of a received instance (identifiers, no names)."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class: str
    modality: str
    patient_id: str
    accession: str
    study_date: str
    description: str
    calling_ae: str


@dataclass(frozen=True)
class Job:
    id: int
    study_key: str
    study_uid: str
    generation: int


@dataclass(frozen=True)
class ResultRow:
    """A job's answer as the database holds it.

    Attributes:
        status: ``analysed``, ``not analysed`` or ``failed``.
        finding: ``present`` / ``absent`` (analysed), None otherwise.
        flagged: labels at or above their threshold, comma-separated.
        folder: the result folder (DICOM objects, thumbnails); None when there is nothing to send.
        summary: JSON-able details (probabilities, key slice, series, strip of p(any) along the series).
    """

    status: str
    finding: str | None
    p_any: float | None
    flagged: str
    reason: str
    folder: str | None
    summary: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    id: int
    result_id: int
    destination: str
    folder: str
    attempts: int


class Store:
    """The node's database (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connection().executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # --- receiving ---
    def instance_digest(self, sop_uid: str) -> tuple[str, str] | None:
        """(sha256, path) of a stored instance, None when it is new."""
        row = self._connection().execute("SELECT sha256, path FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return (row["sha256"], row["path"]) if row else None

    def add_instance(self, row: InstanceRow, path: Path, sha256: str, now: float | None = None) -> None:
        """Records a new instance, or one resent with other bytes, and makes its study's generation grow.

        Raises:
            InputError: the instance is already recorded under another study (a SOPInstanceUID must be unique).
        """
        now = time.time() if now is None else now
        key = study_key(row.study_uid)
        with self._transaction() as db:
            known = db.execute("SELECT study_key FROM instances WHERE sop_uid = ?", (row.sop_uid,)).fetchone()
            if known and known["study_key"] != key:
                raise InputError(f"instance {row.sop_uid} was received before in another study")
            db.execute("INSERT INTO studies (study_key, study_uid, patient_id, accession, study_date, description, "
                       "calling_ae, first_received) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       (key, row.study_uid, row.patient_id, row.accession, row.study_date, row.description,
                        row.calling_ae, now))
            db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.sop_uid, key, row.series_uid, row.sop_class, row.modality, str(path), sha256, now))
            db.execute("UPDATE studies SET last_received = ?, generation = generation + 1, images_deleted = NULL, "
                       "n_instances = (SELECT COUNT(*) FROM instances WHERE study_key = ?) WHERE study_key = ?",
                       (now, key, key))

    def instance_paths(self) -> set[str]:
        return {r[0] for r in self._connection().execute("SELECT path FROM instances")}

    # --- stability and jobs ---
    def queue_stable(self, stable_after: float, now: float | None = None) -> list[Job]:
        """Queues a job for every study without a new instance for ``stable_after`` seconds that changed
        since its last job; a queued job of the study not yet started is cancelled (the new one covers it)."""
        now = time.time() if now is None else now
        queued = []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT s.study_key, s.study_uid, s.generation FROM studies s WHERE s.last_received <= ? AND "
                "s.generation > COALESCE((SELECT MAX(generation) FROM jobs j WHERE j.study_key = s.study_key "
                "AND j.state != 'cancelled'), 0) ORDER BY s.last_received", (now - stable_after,)).fetchall()
            for row in rows:
                db.execute("UPDATE jobs SET state = 'cancelled' WHERE study_key = ? AND state = 'queued'",
                           (row["study_key"],))
                cursor = db.execute("INSERT INTO jobs (study_key, generation, state, queued) VALUES (?, ?, 'queued', ?)",
                                    (row["study_key"], row["generation"], now))
                queued.append(Job(cursor.lastrowid, row["study_key"], row["study_uid"], row["generation"]))
        return queued

    def claim_job(self) -> Job | None:
        """The oldest queued job, now ``running``; None when there is none."""
        with self._transaction() as db:
            row = db.execute("SELECT j.id, j.study_key, s.study_uid, j.generation FROM jobs j JOIN studies s "
                             "USING (study_key) WHERE j.state = 'queued' ORDER BY j.id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started = ? WHERE id = ?", (time.time(), row["id"]))
        return Job(row["id"], row["study_key"], row["study_uid"], row["generation"])

    def study_instances(self, key: str) -> dict[str, Path]:
        """SOPInstanceUID → stored file of every instance of a study."""
        return {r[0]: Path(r[1]) for r in self._connection().execute(
            "SELECT sop_uid, path FROM instances WHERE study_key = ?", (key,))}

    def previous_result(self, key: str) -> dict[str, Any] | None:
        """The study's current result (the newest not superseded), None before its first."""
        row = self._connection().execute("SELECT * FROM results WHERE study_key = ? AND superseded_by IS NULL "
                                         "ORDER BY id DESC LIMIT 1", (key,)).fetchone()
        return dict(row) if row else None

    def finish_job(self, job: Job, result: ResultRow, destinations: list[str]) -> int:
        """Records a job's result in one transaction: the result, the study's previous result marked
        superseded (its unsent deliveries too), one pending delivery per destination, the job done.

        Returns:
            The result's id.
        """
        now = time.time()
        with self._transaction() as db:
            previous = db.execute("SELECT id FROM results WHERE study_key = ? AND superseded_by IS NULL",
                                  (job.study_key,)).fetchone()
            cursor = db.execute(
                "INSERT INTO results (job_id, study_key, created, status, finding, p_any, flagged, reason, folder, "
                "summary, supersedes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.study_key, now, result.status, result.finding, result.p_any, result.flagged,
                 result.reason, result.folder, json.dumps(result.summary), previous["id"] if previous else None))
            result_id = int(cursor.lastrowid)
            if previous:
                db.execute("UPDATE results SET superseded_by = ? WHERE id = ?", (result_id, previous["id"]))
                db.execute("UPDATE deliveries SET state = 'superseded' WHERE result_id = ? AND state = 'pending'",
                           (previous["id"],))
            if result.folder:
                db.executemany("INSERT INTO deliveries (result_id, destination, state, next_try) "
                               "VALUES (?, ?, 'pending', ?)", [(result_id, d, now) for d in destinations])
            db.execute("UPDATE jobs SET state = 'done', finished = ? WHERE id = ?", (now, job.id))
        return result_id

    def fail_job(self, job: Job, error: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                       (time.time(), error, job.id))

    def recover(self) -> dict[str, int]:
        """At start: jobs interrupted while running are queued again. Returns what is left to do."""
        with self._transaction() as db:
            requeued = db.execute("UPDATE jobs SET state = 'queued', started = NULL WHERE state = 'running'").rowcount
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            pending = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()[0]
        return {"jobs_interrupted": requeued, "jobs_queued": queued, "deliveries_pending": pending}

    # --- sending ---
    def due_deliveries(self, now: float | None = None) -> list[Delivery]:
        now = time.time() if now is None else now
        rows = self._connection().execute(
            "SELECT d.id, d.result_id, d.destination, r.folder, d.attempts FROM deliveries d JOIN results r "
            "ON r.id = d.result_id WHERE d.state = 'pending' AND d.next_try <= ? ORDER BY d.id", (now,)).fetchall()
        return [Delivery(r["id"], r["result_id"], r["destination"], r["folder"], r["attempts"]) for r in rows]

    def delivery_done(self, delivery: Delivery, status: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE deliveries SET state = 'sent', attempts = attempts + 1, last_status = ?, sent = ? "
                       "WHERE id = ? AND state = 'pending'", (status, time.time(), delivery.id))

    def delivery_failed(self, delivery: Delivery, status: str, next_try: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE deliveries SET attempts = attempts + 1, last_status = ?, next_try = ? WHERE id = ?",
                       (status, next_try, delivery.id))

    # --- retention ---
    def studies_to_purge(self, before: float) -> list[str]:
        """Studies whose last instance arrived before ``before`` (epoch s) and whose images are still kept."""
        return [r[0] for r in self._connection().execute(
            "SELECT study_key FROM studies WHERE last_received < ? AND images_deleted IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM jobs j WHERE j.study_key = studies.study_key AND j.state IN ('queued', 'running'))",
            (before,))]

    def images_deleted(self, key: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM instances WHERE study_key = ?", (key,))
            db.execute("UPDATE studies SET images_deleted = ? WHERE study_key = ?", (time.time(), key))

    # --- reading (worklist, metrics) ---
    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._connection().execute(sql, args)]

    def worklist(self, limit: int = 500) -> list[dict[str, Any]]:
        """Per study (newest first): its row, its last job and its current result with delivery times."""
        return self._rows(_WORKLIST + " ORDER BY s.last_received DESC LIMIT ?", (limit,))

    def study(self, key: str) -> dict[str, Any] | None:
        """A study's worklist row, every result (newest first) with its deliveries, its series."""
        rows = self._rows(_WORKLIST + " WHERE s.study_key = ?", (key,))
        if not rows:
            return None
        results = self._rows("SELECT * FROM results WHERE study_key = ? ORDER BY id DESC", (key,))
        for result in results:
            result["deliveries"] = self._rows("SELECT * FROM deliveries WHERE result_id = ? ORDER BY id",
                                              (result["id"],))
        series = self._rows("SELECT series_uid, modality, COUNT(*) AS n FROM instances WHERE study_key = ? "
                            "GROUP BY series_uid, modality ORDER BY series_uid", (key,))
        return rows[0] | {"results": results, "series": series}

    def result_folder(self, result_id: int) -> str | None:
        row = self._connection().execute("SELECT folder FROM results WHERE id = ?", (result_id,)).fetchone()
        return row[0] if row else None

    def metrics(self) -> dict[str, Any]:
        """Counts by state and the latencies (seconds) of answered and delivered studies."""
        one = self._connection().execute
        counts = {"instances": one("SELECT COUNT(*) FROM instances").fetchone()[0],
                  "studies": one("SELECT COUNT(*) FROM studies").fetchone()[0]}
        for table, column in (("jobs", "state"), ("results", "status"), ("deliveries", "state")):
            for value, n in one(f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}"):
                counts[f"{table}_{value.replace(' ', '_')}"] = n
        latencies = {
            "stable_to_answer_s": [r[0] for r in one("SELECT r.created - j.queued FROM results r JOIN jobs j "
                                                     "ON j.id = r.job_id")],
            "analysis_s": [r[0] for r in one("SELECT finished - started FROM jobs WHERE state = 'done'")],
            "stable_to_delivered_s": [r[0] for r in one("SELECT d.sent - j.queued FROM deliveries d JOIN results r "
                                                        "ON r.id = d.result_id JOIN jobs j ON j.id = r.job_id "
                                                        "WHERE d.state = 'sent'")]}
        return {"counts": counts, "latencies": latencies}


_WORKLIST = """
SELECT s.*, j.id AS job_id, j.state AS job_state, j.queued AS job_queued, j.started AS job_started, j.error AS job_error,
       r.id AS result_id, r.status, r.finding, r.p_any, r.flagged, r.reason, r.created AS answered, r.summary,
       r.supersedes, (SELECT MAX(d.sent) FROM deliveries d WHERE d.result_id = r.id) AS delivered,
       (SELECT COUNT(*) FROM deliveries d WHERE d.result_id = r.id AND d.state = 'pending') AS pending
FROM studies s
LEFT JOIN jobs j ON j.id = (SELECT MAX(id) FROM jobs WHERE study_key = s.study_key AND state != 'cancelled')
LEFT JOIN results r ON r.id = (SELECT MAX(id) FROM results WHERE study_key = s.study_key)"""
