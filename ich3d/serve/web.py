"""The worklist: a small FastAPI app (Jinja2 templates) over the node's database (docs/design.md §13).

``/`` lists the studies, suspected bleeds on top, then newest first, with their status (receiving,
queued, analysing, analysed, not analysed, failed), p(any), the flagged labels, the key image's
thumbnail and the times (received, stable, answered, delivered); ``/study/<key>`` shows a study's
probability strip along the series read, its key images and every result and delivery; ``/api/...``
return the same as JSON; ``/healthz`` answers when the database does; ``/metrics`` gives counts and
latencies in the Prometheus text format. (FastAPI is imported at the top: it reads the route
functions' annotations from this module's globals; the node imports this module only with a worklist.) Bound to 127.0.0.1 unless configured otherwise; on another
address every request needs the access token (``Authorization: Bearer <token>``, or ``?token=`` once,
which sets a cookie).
"""

from __future__ import annotations

import json
import secrets
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.templating import Jinja2Templates

from ich3d.constants import LABELS
from ich3d.layout import ServeFolder
from ich3d.serve.config import ServeConfig, web_address
from ich3d.serve.store import Store

TEMPLATES = Path(__file__).parent / "templates"
_COOKIE = "ich3d_token"


def study_state(row: dict[str, Any]) -> str:
    """receiving / queued / analysing / analysed / not analysed / failed, from a worklist row."""
    if row["job_id"] is None or row["last_received"] > row["job_queued"]:
        return "receiving"
    return {"queued": "queued", "running": "analysing", "failed": "failed"}.get(row["job_state"]) or row["status"]


def _clock(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else ""


def view_row(row: dict[str, Any]) -> dict[str, Any]:
    """A worklist row as the pages and the JSON API show it."""
    summary = json.loads(row["summary"]) if row.get("summary") else {}
    return {"study_key": row["study_key"], "study_uid": row["study_uid"], "patient_id": row["patient_id"],
            "accession": row["accession"], "study_date": row["study_date"], "description": row["description"],
            "instances": row["n_instances"], "state": study_state(row), "finding": row["finding"],
            "p_any": row["p_any"], "flagged": [f for f in (row["flagged"] or "").split(",") if f],
            "reason": row["reason"] or row.get("job_error") or "", "result_id": row["result_id"],
            "key_images": max(len(summary.get("objects", [])) - 1, 0),
            "supersedes": row["supersedes"], "pending_deliveries": row["pending"] or 0,
            "received": _clock(row["first_received"]), "last_received": _clock(row["last_received"]),
            "stable": _clock(row["job_queued"]), "answered": _clock(row["answered"]),
            "delivered": _clock(row["delivered"]), "summary": summary}


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Suspected bleeds first, then the newest; the store returns them newest first."""
    return sorted(rows, key=lambda row: row["finding"] != "present")


def strip_points(strip: list[float], width: int = 600, height: int = 80) -> str:
    """SVG polyline points of p(any) along the series (x: slice, y: probability, 1 at the top)."""
    if not strip:
        return ""
    step = width / max(len(strip) - 1, 1)
    return " ".join(f"{i * step:.1f},{(1 - p) * height:.1f}" for i, p in enumerate(strip))


def prometheus(metrics: dict[str, Any]) -> str:
    """Counts as gauges, latencies as summaries (count, sum, median, p95), in the Prometheus text format."""
    lines = [f"ich3d_{name} {value}" for name, value in sorted(metrics["counts"].items())]
    for name, values in metrics["latencies"].items():
        values = sorted(v for v in values if v is not None)
        lines += [f"ich3d_{name}_count {len(values)}", f"ich3d_{name}_sum {sum(values):.3f}"]
        if values:
            p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
            lines += [f'ich3d_{name}{{quantile="0.5"}} {statistics.median(values):.3f}',
                      f'ich3d_{name}{{quantile="0.95"}} {p95:.3f}']
    return "\n".join(lines) + "\n"


def build_app(store: Store, folder: ServeFolder, token: str | None = None) -> Any:
    """The FastAPI application of the worklist (``token``: required on every request when given)."""
    app = FastAPI(title="ich3d worklist", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(TEMPLATES))

    @app.middleware("http")
    async def check_token(request: Request, call_next: Any) -> Any:
        if token is None or request.url.path == "/healthz":
            return await call_next(request)
        given = (request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                 or request.query_params.get("token") or request.cookies.get(_COOKIE) or "")
        if not secrets.compare_digest(given, token):
            return PlainTextResponse("access token required\n", status_code=401)
        response = await call_next(request)
        response.set_cookie(_COOKIE, token, httponly=True, samesite="strict")
        return response

    def study_or_404(key: str) -> dict[str, Any]:
        study = store.study(key)
        if study is None:
            raise HTTPException(404, f"no study {key}")
        return view_row(study) | {"results": study["results"], "series": study["series"]}

    @app.get("/", response_class=HTMLResponse)
    def worklist(request: Request) -> Any:
        rows = ordered([view_row(r) for r in store.worklist()])
        return templates.TemplateResponse(request, "worklist.html", {"rows": rows, "now": _clock(time.time())})

    @app.get("/study/{key}", response_class=HTMLResponse)
    def study_page(request: Request, key: str) -> Any:
        study = study_or_404(key)
        summary = study["summary"]
        return templates.TemplateResponse(request, "study.html", {
            "study": study, "labels": LABELS, "strip": strip_points(summary.get("strip", [])),
            "threshold_y": 80 * (1 - summary.get("threshold", {}).get("any", 0.5)), "clock": _clock,
            "now": _clock(time.time())})

    @app.get("/results/{result_id}/key-{number}.png")
    def key_image(result_id: int, number: int) -> Any:
        folder_path = store.result_folder(result_id)
        path = ServeFolder.result_object(Path(folder_path), "png", number) if folder_path else None
        if path is None or not path.is_file():
            raise HTTPException(404, "no such key image")
        return FileResponse(path, media_type="image/png")

    @app.get("/api/studies")
    def api_studies() -> Any:
        return JSONResponse(ordered([view_row(r) for r in store.worklist()]))

    @app.get("/api/studies/{key}")
    def api_study(key: str) -> Any:
        return JSONResponse(study_or_404(key))

    @app.get("/healthz")
    def healthz() -> Any:
        return {"ok": True, "studies": store.metrics()["counts"]["studies"]}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Any:
        return prometheus(store.metrics())

    return app


def start_web(config: ServeConfig, store: Store, folder: ServeFolder, stop: threading.Event,
              threads: list[threading.Thread]) -> int:
    """Serves the worklist with uvicorn in a thread (stopped when ``stop`` is set). Returns the port."""
    import uvicorn

    host, port = web_address(config.web)
    server = uvicorn.Server(uvicorn.Config(build_app(store, folder, config.web_token), host=host, port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="ich3d-serve-web", daemon=True)
    thread.start()
    threads.append(thread)
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not thread.is_alive():
        raise OSError(f"the worklist could not listen on {config.web}")

    def stopper() -> None:
        stop.wait()
        server.should_exit = True

    watcher = threading.Thread(target=stopper, name="ich3d-serve-web-stop", daemon=True)
    watcher.start()
    threads.append(watcher)
    return int(server.servers[0].sockets[0].getsockname()[1]) if server.servers else port
