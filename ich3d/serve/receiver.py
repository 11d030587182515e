"""The Storage SCP: receives C-ECHO and C-STORE, and only stores (docs/design.md §13).

Each instance is written atomically (a temporary file in its study's folder, fsynced, then renamed)
under ``DATA/studies/<study key>/<instance key>.dcm`` and recorded in the database; only then does
the success status go back. Disk full, a permission error or a database that cannot be written
answer 0xA700 (Refused: Out of Resources), a data set without its identifiers 0xC210 (Cannot
understand); nothing half-written stays behind. An instance resent with the same bytes is
acknowledged without being written again (its study does not change); resent with other bytes,
it replaces the stored one and its study is analysed again.

Associations are refused when the called AE title is not the node's, the calling AE title is not
in the allow-list (when there is one) or the peer's address is not in ``allow_hosts``.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import ssl
from pathlib import Path
from typing import Any

from ich3d.atomic import atomic_write
from ich3d.errors import InputError
from ich3d.layout import ServeFolder
from ich3d.serve.config import ServeConfig
from ich3d.serve.store import InstanceRow, Store, instance_key, study_key

log = logging.getLogger(__name__)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def instance_row(ds: Any, calling_ae: str) -> InstanceRow:
    """The identifiers of a received data set (no names, no birth dates).

    Raises:
        InputError: no StudyInstanceUID or SOPInstanceUID.
    """
    row = InstanceRow(*(_text(ds, k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                                                "SOPClassUID", "Modality", "PatientID", "AccessionNumber",
                                                "StudyDate", "StudyDescription")), calling_ae=calling_ae)
    if not row.sop_uid or not row.study_uid:
        raise InputError("an instance without SOPInstanceUID or StudyInstanceUID")
    return row


class Receiver:
    """A pynetdicom Storage SCP writing into a :class:`~ich3d.layout.ServeFolder` and a :class:`Store`."""

    def __init__(self, config: ServeConfig, store: Store, folder: ServeFolder) -> None:
        self.config, self.store, self.folder = config, store, folder
        self._server: Any = None

    def _application_entity(self) -> Any:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.config.allow_ae)
        ae.maximum_pdu_size = self.config.max_pdu
        ae.maximum_associations = self.config.max_associations
        return ae

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        if self.config.tls_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(self.config.tls_ca))
        return context

    def start(self, host: str = "0.0.0.0") -> int:
        """Listens (in pynetdicom's threads) and returns the port (useful with port 0)."""
        from pynetdicom import evt

        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_REQUESTED, self._on_requested)]
        self._server = self._application_entity().start_server(
            (host, self.config.port), block=False, ssl_context=self._ssl_context(), evt_handlers=handlers)
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_requested(self, event: Any) -> None:
        """Refuses (aborts) an association from an address outside ``allow_hosts``."""
        address = event.assoc.requestor.address
        if self.config.allow_hosts and address not in self.config.allow_hosts:
            log.warning("association from %s (%s) refused: address not allowed", address,
                        event.assoc.requestor.ae_title)
            event.assoc.abort()

    def on_store(self, event: Any) -> int:
        """The C-STORE handler: the status to answer (see the module docstring)."""
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            dataset = event.dataset
            row = instance_row(dataset, calling)
        except Exception as exc:  # a data set pydicom cannot decode is the peer's error: answer it, go on
            log.warning("C-STORE from %s: cannot read the data set (%s)", calling, exc)
            return CANNOT_UNDERSTAND
        data = event.encoded_dataset(include_meta=True)
        digest = hashlib.sha256(data).hexdigest()
        known = self.store.instance_digest(row.sop_uid)
        if known and known[0] == digest and Path(known[1]).is_file():
            log.debug("instance %s of study %s: already stored", row.sop_uid, row.study_uid)
            return SUCCESS
        return self._write(row, data, digest, is_new=known is None)

    def _write(self, row: InstanceRow, data: bytes, digest: str, is_new: bool) -> int:
        path = self.folder.instance(study_key(row.study_uid), instance_key(row.sop_uid))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, fsync=True) as file:
                file.write(data)
            self.store.add_instance(row, path, digest)
        except (OSError, sqlite3.Error) as exc:
            if is_new:
                path.unlink(missing_ok=True)
            log.error("instance %s of study %s not stored (%s): answered Out of Resources", row.sop_uid,
                      row.study_uid, exc)
            return OUT_OF_RESOURCES
        except InputError as exc:
            path.unlink(missing_ok=True)
            log.warning("instance %s refused: %s", row.sop_uid, exc)
            return CANNOT_UNDERSTAND
        log.debug("stored instance %s of study %s from %s", row.sop_uid, row.study_uid, row.calling_ae)
        return SUCCESS
