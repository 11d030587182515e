"""The worker: one process that keeps the model loaded and answers queued studies in order.

It runs apart from the receiver (a process of its own, started with ``spawn``), so receiving never
waits for the model. It takes the oldest queued job, reads the study with
:class:`~ich3d.serve.analysis.Analyser`, writes the answer's files and records the result with its
deliveries in one transaction. On SIGTERM (or the node's stop event) it finishes the study in hand
and exits; killed, its job stays ``running`` and the next start queues it again
(:meth:`~ich3d.serve.store.Store.recover`). It dies with the node (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any

from ich3d import __version__
from ich3d.errors import Ich3dError
from ich3d.layout import ServeFolder
from ich3d.serve.config import ServeConfig
from ich3d.serve.store import Job, Store

log = logging.getLogger(__name__)
POLL_S = 0.25
#: The worker runs below the receiver's priority: acknowledging a scanner's instances comes before analysing.
WORKER_NICENESS = 5


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the node's process dies (a kill -9 leaves no orphan)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def answer_job(job: Job, store: Store, analyser: Any, config: ServeConfig) -> int | None:
    """Reads one study and records its answer (or the job's failure). Returns the result id."""
    from ich3d.serve.answer import previous_sr, write_answer
    from ich3d.serve.report_sr import Provenance

    folder = ServeFolder(config.data)
    started = time.perf_counter()
    try:
        analysis = analyser.analyse(folder.study(job.study_key), folder.work(job.id))
        previous = store.previous_result(job.study_key)
        provenance = Provenance(__version__, analyser.fingerprint, config.run.name, previous_sr(previous))
        result = write_answer(analysis, store.study_instances(job.study_key), folder.result(job.id), provenance)
        result_id = store.finish_job(job, result, [str(d) for d in config.destinations])
    except Exception as exc:  # a study that breaks the pipeline is recorded and the node goes on
        log.exception("job %d (study %s) failed", job.id, job.study_uid)
        store.fail_job(job, f"{type(exc).__name__}: {exc}")
        return None
    log.info("study %s: %s%s in %.1f s (result %d)", job.study_uid, result.status,
             f", {result.finding}, p(any) {result.p_any:.3f}" if result.finding else f" ({result.reason})",
             time.perf_counter() - started, result_id)
    return result_id


def run_worker(config: ServeConfig, stop: Any, ready: Any) -> None:
    """The worker process's main: load the model once, then answer jobs until ``stop`` is set or SIGTERM.

    Args:
        config: the node's settings.
        stop: a ``multiprocessing.Event`` the node sets to stop the worker after the study in hand.
        ready: a ``multiprocessing.Event`` set once the model is loaded.
    """
    _die_with_parent()
    os.nice(WORKER_NICENESS)
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which stops the worker in order
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every module it copies
    from ich3d.serve.analysis import Analyser

    store = Store(ServeFolder(config.data).database)
    try:
        analyser = Analyser(config.run, config.device, config.threshold)
    except Ich3dError as exc:  # a run that cannot be read: one line, and the node stops (Node.start)
        log.error("%s", exc)
        raise SystemExit(1) from None
    ready.set()
    log.info("model %s loaded (fingerprint %s)", config.run, analyser.fingerprint)
    while not (stop.is_set() or terminated.is_set()):
        job = store.claim_job()
        if job is None:
            stop.wait(POLL_S)
            continue
        answer_job(job, store, analyser, config)
    store.close()
