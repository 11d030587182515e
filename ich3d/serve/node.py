"""The node: receiver, scheduler, worker, sender and worklist around one data folder (docs/design.md §13).

```
PACS ─C-STORE─▶ receiver ─file + row─▶ DATA ─ stable ─▶ job ─▶ worker (model) ─▶ SR + key images
     ◀─C-STORE── sender ◀─ deliveries ◀──────────────────────────────────────────────┘   worklist (web)
```

The receiver (pynetdicom's threads), the scheduler, the sender and the web worklist run in this
process; the worker in a process of its own. :meth:`Node.start` first recovers what a previous run
left: jobs interrupted while running are queued again, results not yet delivered are sent, and
files in a study folder without a database row (written but never acknowledged before a kill) are
removed. :meth:`Node.stop` (SIGTERM, Ctrl-C) stops receiving, lets the worker finish the study in
hand, and returns.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ich3d.atomic import write_text_atomic
from ich3d.errors import InputError
from ich3d.folders import FolderLock
from ich3d.layout import ServeFolder
from ich3d.serve.config import ServeConfig, dump_config
from ich3d.serve.receiver import Receiver
from ich3d.serve.sender import Sender, sender_loop
from ich3d.serve.store import Store

log = logging.getLogger(__name__)
PURGE_PERIOD_S = 60.0


class Node:
    """One running node (see the module docstring).

    Args:
        config: the resolved settings.
        host: the address the Storage SCP listens on.
    """

    def __init__(self, config: ServeConfig, host: str = "0.0.0.0") -> None:
        self.config, self.host = config, host
        self.folder = ServeFolder(Path(config.data))
        self.folder.root.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.folder.lock, f"serve folder {self.folder.root}")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._worker: Any = None
        self._worker_stop: Any = None
        self.worker_ready: Any = None
        self.store: Store | None = None
        self.receiver: Receiver | None = None
        self.port = config.port
        self.web_port: int | None = None

    def start(self) -> dict[str, int]:
        """Recovers, then starts every part. Returns what was left to do from the previous run."""
        self._lock.__enter__()
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per instance is too much
        write_text_atomic(self.folder.config, dump_config(self.config))
        self.store = Store(self.folder.database)
        recovered = self.store.recover() | {"orphan_files_removed": self._remove_orphans()}
        context = multiprocessing.get_context("spawn")
        self._worker_stop, self.worker_ready = context.Event(), context.Event()
        from ich3d.serve.worker import run_worker

        self._worker = context.Process(target=run_worker, args=(self.config, self._worker_stop, self.worker_ready),
                                       name="ich3d-serve-worker", daemon=False)
        self._worker.start()
        while not self.worker_ready.wait(0.2):  # the model is loaded before anything is acknowledged
            if not self._worker.is_alive():
                self.stop()
                raise InputError(f"the worker could not load the model of {self.config.run} (its error is above)")
        self.receiver = Receiver(self.config, self.store, self.folder)
        self.port = self.receiver.start(self.host)
        self._thread(self._schedule, "scheduler")
        self._thread(lambda: sender_loop(Sender(self.config, self.store), self._stop), "sender")
        if self.config.web:
            from ich3d.serve.web import start_web

            self.web_port = start_web(self.config, self.store, self.folder, self._stop, self._threads)
        log.info("listening as %s on port %d; %s", self.config.ae_title, self.port, recovered)
        return recovered

    def _thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=f"ich3d-serve-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _schedule(self) -> None:
        """Queues stable studies; deletes expired images (``keep_days``)."""
        period = min(1.0, self.config.stable_after / 4)
        last_purge = 0.0
        while not self._stop.is_set():
            for job in self.store.queue_stable(self.config.stable_after):
                log.info("study %s stable: job %d queued", job.study_uid, job.id)
            if self.config.keep_days and time.time() - last_purge > PURGE_PERIOD_S:
                last_purge = time.time()
                self.purge(time.time() - self.config.keep_days * 86400)
            self._stop.wait(period)

    def purge(self, before: float) -> int:
        """Deletes the received images of studies whose last instance arrived before ``before`` (results stay)."""
        keys = self.store.studies_to_purge(before)
        for key in keys:
            shutil.rmtree(self.folder.study(key), ignore_errors=True)
            self.store.images_deleted(key)
            log.info("images of study %s deleted (older than %g days)", key, self.config.keep_days)
        return len(keys)

    def _remove_orphans(self) -> int:
        """Files under ``studies/`` without a database row: written, never acknowledged (a kill in between)."""
        known = self.store.instance_paths()
        orphans = [p for p in self.folder.studies.glob("*/*") if p.is_file() and str(p) not in known]
        for path in orphans:
            path.unlink(missing_ok=True)
        return len(orphans)

    def stop(self) -> None:
        """Stops receiving, lets the worker finish the study in hand, stops the other threads."""
        if self.receiver is not None:
            self.receiver.stop()
        if self._worker is not None:
            self._worker_stop.set()
            self._worker.join()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.store is not None:
            self.store.close()
        self._lock.__exit__(None, None, None)
        self.receiver, self._worker = None, None


def serve(config: ServeConfig, announce: Any = print) -> None:
    """Runs a node until SIGTERM or Ctrl-C (the ``ich3d serve`` command).

    Args:
        config: the resolved settings.
        announce: called with the resolved settings (YAML) and the addresses, once started.
    """
    node = Node(config)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    recovered = node.start()
    web = f"; worklist http://{config.web.rsplit(':', 1)[0]}:{node.web_port}/" if node.web_port else ""
    announce(f"{dump_config(config)}ich3d serve: {config.ae_title} on port {node.port}{web}; recovered {recovered}")
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        log.info("stopping: finishing the study in hand")
        node.stop()
