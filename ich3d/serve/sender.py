"""The sender: C-STORE SCU of every result to every destination, with retries and backoff.

A delivery is one result (its SR and key images, in one association) to one destination. It stays
``pending`` until the destination answers success for every object; after a failure (no
connection, association rejected, a failure status) its status is recorded and it waits
``retry_first_s`` doubled per attempt, at most ``retry_max_s``, then tries again — a destination
that is down gets the result when it comes back, in the order results were made. A result
superseded before it was sent is not sent (:meth:`~ich3d.serve.store.Store.finish_job`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ich3d.serve.config import Destination, ServeConfig
from ich3d.serve.store import Delivery, Store

log = logging.getLogger(__name__)
#: Status values a Storage SCP answers for a stored object: success and the warnings (coerced, elements discarded).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


def backoff(attempts: int, first: float, most: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2...): first · 2^(attempts-1), capped."""
    return min(first * 2 ** max(attempts - 1, 0), most)


def send_files(files: list[Path], destination: Destination, calling_ae: str) -> str:
    """Stores ``files`` at ``destination`` in one association.

    Returns:
        ``"0x0000"`` when every object was stored, else what went wrong (a status or the association's fate).
    """
    import pydicom
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    datasets = [pydicom.dcmread(path) for path in files]
    ae = AE(ae_title=calling_ae)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.requested_contexts.append(build_context(sop_class))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return "association rejected" if assoc.is_rejected else "no connection (refused, aborted or timed out)"
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code not in STORED:
                return f"C-STORE of {ds.SOPInstanceUID} answered " + ("nothing" if code is None else f"0x{code:04X}")
    finally:
        assoc.release()
    return "0x0000"


class Sender:
    """Sends due deliveries (one pass per :meth:`send_due` call)."""

    def __init__(self, config: ServeConfig, store: Store) -> None:
        self.config, self.store = config, store

    def send_due(self) -> int:
        """Tries every delivery whose time has come. Returns how many were sent."""
        sent = 0
        for delivery in self.store.due_deliveries():
            sent += self._deliver(delivery)
        return sent

    def _deliver(self, delivery: Delivery) -> bool:
        files = sorted(Path(delivery.folder).glob("*.dcm"))
        try:
            outcome = send_files(files, Destination.parse(delivery.destination), self.config.ae_title)
        except Exception as exc:  # a file or a peer that breaks one delivery must not stop the others
            outcome = f"{type(exc).__name__}: {exc}"
        if outcome == "0x0000":
            self.store.delivery_done(delivery, outcome)
            log.info("result %d sent to %s (%d objects)", delivery.result_id, delivery.destination, len(files))
            return True
        wait = backoff(delivery.attempts + 1, self.config.retry_first_s, self.config.retry_max_s)
        self.store.delivery_failed(delivery, outcome, time.time() + wait)
        log.warning("result %d to %s: %s; next try in %.0f s", delivery.result_id, delivery.destination, outcome, wait)
        return False


def sender_loop(sender: Sender, stop: Any, period: float = 0.5) -> None:
    """Runs :meth:`Sender.send_due` every ``period`` seconds until ``stop`` (a threading.Event) is set."""
    while not stop.is_set():
        sender.send_due()
        stop.wait(period)
