"""The node's settings: one typed object, from a YAML file and command-line overrides (docs/design.md §13).

Every option of ``ich3d serve`` is also a key of the YAML file (``ae_title: ICH3D``...); an option
given on the command line wins. An unknown key, a bad value or a destination that cannot be parsed
is a :class:`~ich3d.errors.ConfigError` naming the key. The resolved settings are printed at start
and written to ``DATA/serve.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ich3d.errors import ConfigError

#: Seconds without a new instance after which a study counts as complete. A CT scanner or a PACS
#: sends a study's instances back to back (a few hundred per second); 30 s covers a scanner that
#: pushes each series as it is reconstructed (the next series of the same study usually follows
#: within seconds) while keeping the answer well inside the minute triage products aim for.
STABLE_AFTER_S = 30.0
_AE_TITLE = re.compile(r"[ -~]{1,16}")
_DESTINATION = re.compile(r"(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})")


@dataclass(frozen=True)
class Destination:
    """A DICOM node the results are sent to (C-STORE SCP)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@HOST:PORT`` → Destination.

        Raises:
            ConfigError: another form.
        """
        match = _DESTINATION.fullmatch(str(text).strip())
        if not match or not 0 < int(match["port"]) < 65536:
            raise ConfigError(f"destination {text!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104")
        return cls(match["ae"], match["host"], int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one node.

    Attributes:
        run: the trained run (folder or checkpoint) whose model reads the studies.
        data: the node's folder (instances, database, results: ``ich3d.layout.ServeFolder``).
        port: TCP port of the Storage SCP.
        ae_title: the node's own AE title (the called AE title of an association must be it).
        allow_ae: calling AE titles accepted; empty accepts any.
        allow_hosts: peer addresses accepted; empty accepts any.
        destinations: where results are sent (``AE@HOST:PORT``).
        stable_after: seconds without a new instance that make a study complete (see :data:`STABLE_AFTER_S`).
        web: ``HOST:PORT`` of the worklist; empty turns it off.
        web_token: access token the worklist requires (mandatory when ``web`` is not a loopback address).
        device: torch device of the model ("cpu", "cuda"...; None: CUDA when available).
        threshold: operating threshold of p(any) for the finding (None: the run's, else 0.5).
        keep_days: received images older than this many days are deleted (results are kept); None keeps all.
        tls_cert, tls_key: PEM certificate and key: the SCP speaks TLS (DICOM TLS profile) when both are given.
        tls_ca: PEM bundle of the peers' CAs; when given, peers must present a certificate it signed.
        retry_first_s, retry_max_s: backoff of failed deliveries (doubling from the first to the max).
        max_pdu: largest P-DATA PDU the SCP receives (bytes).
        max_associations: associations received at once (pynetdicom's default, 10, refuses the 11th sender).
    """

    run: Path
    data: Path
    port: int = 11112
    ae_title: str = "ICH3D"
    allow_ae: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    destinations: tuple[Destination, ...] = ()
    stable_after: float = STABLE_AFTER_S
    web: str = "127.0.0.1:8080"
    web_token: str | None = None
    device: str | None = None
    threshold: float | None = None
    keep_days: float | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    retry_first_s: float = 5.0
    retry_max_s: float = 300.0
    max_pdu: int = 262144
    max_associations: int = 32

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port < 65536:
            problems.append(f"port {self.port} must be in 0..65535")
        for title in (self.ae_title, *self.allow_ae):
            if not _AE_TITLE.fullmatch(title) or "\\" in title or not title.strip():
                problems.append(f"AE title {title!r}: 1-16 printable characters, no backslash")
        if self.stable_after <= 0:
            problems.append(f"stable_after {self.stable_after} must be positive (seconds)")
        if self.threshold is not None and not 0 < self.threshold < 1:
            problems.append(f"threshold {self.threshold} must be between 0 and 1")
        if self.keep_days is not None and self.keep_days <= 0:
            problems.append(f"keep_days {self.keep_days} must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("tls_cert and tls_key go together")
        if self.web:
            host, _ = web_address(self.web)
            if not is_loopback(host) and not self.web_token:
                problems.append(f"web {self.web}: a worklist on another address than 127.0.0.1 needs web_token")
        if problems:
            raise ConfigError(f"serve config: {'; '.join(problems)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths and destinations as strings), as ``serve.yaml`` holds them; the token hidden."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
        values |= {"allow_ae": list(self.allow_ae), "allow_hosts": list(self.allow_hosts),
                   "destinations": [str(d) for d in self.destinations]}
        return values | {"web_token": "***" if self.web_token else None}


def web_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port).

    Raises:
        ConfigError: another form.
    """
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"web {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


_KEYS = {f.name for f in fields(ServeConfig)}
_PATHS = {"run", "data", "tls_cert", "tls_key", "tls_ca"}
_TUPLES = {"allow_ae", "allow_hosts", "destinations"}


def load_serve_config(path: Path | None, overrides: dict[str, Any]) -> ServeConfig:
    """The settings of a YAML file (optional) with command-line ``overrides`` on top (None values ignored).

    Raises:
        ConfigError: an unreadable file, an unknown key, a missing ``run``/``data``, a bad value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--config {path}: cannot read it ({exc}); give a YAML file of serve settings") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"--config {path}: expected a mapping of settings (key: value)")
    values |= {key: value for key, value in overrides.items() if value is not None and value != ()}
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        raise ConfigError(f"serve config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    missing = [key for key in ("run", "data") if not values.get(key)]
    if missing:
        raise ConfigError(f"serve config: {' and '.join(missing)} missing (--run RUN --data DIR, or in --config)")
    return ServeConfig(**{key: _coerce(key, value) for key, value in values.items()})


def _coerce(key: str, value: Any) -> Any:
    """A YAML or CLI value as the field's type."""
    if key in _PATHS:
        return None if value is None else Path(value)
    if key in _TUPLES:
        items = [value] if isinstance(value, str) else list(value or ())
        return tuple(Destination.parse(v) for v in items) if key == "destinations" else tuple(map(str, items))
    if key in ("stable_after", "threshold", "keep_days", "retry_first_s", "retry_max_s") and value is not None:
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"serve config: {key} {value!r} must be a number") from exc
    return value


def dump_config(config: ServeConfig) -> str:
    """The resolved settings as YAML (what ``serve.yaml`` holds)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)

