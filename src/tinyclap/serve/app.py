"""The FastAPI application of `tinyclap serve`: one page (served from the package) and a small JSON API.

| route | what |
|---|---|
| `GET /` | the page (`static/index.html`; its JS and CSS under `/static/`, no CDN) |
| `GET /healthz` | `{"status": "ok", ...}` while the server serves |
| `GET /api/info` | the model's facts, labels, start-up latency, limits, whether search is on |
| `POST /api/classify` | multipart `audio` or `file` (+ `labels`, `top`) -> ranked labels (+ a timeline if long) |
| `GET /api/search?q=TEXT&k=N` | text -> indexed audio (needs `--index` and a text side) |
| `POST /api/search` | multipart `audio` or `file` (+ `k`) -> indexed audio like it ("more like this") |
| `GET /api/audio/{file_id}` | an indexed file's audio, by its integer id only, if it is still what was indexed |

The JSON answers are the documents of docs/json.md, built by `tinyclap.schemas` (the CLI's, without paths).
Every error is JSON `{"error": message, "status": code}`, never a traceback. Every request passes `_Guard`
first: a `Host` the `HostCheck` does not allow gets 421 (the DNS-rebinding guard), and every answer gets the
security headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinyclap import schemas
from tinyclap.serve.engine import Engine, parse_labels
from tinyclap.serve.limits import ApiError, HostCheck, ServeConfig, WorkerPool
from tinyclap.serve.uploads import FILE_FIELDS, receive_upload

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("tinyclap.serve")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'",
}
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg",
               ".aif": "audio/aiff", ".aiff": "audio/aiff"}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() also takes '²', which int() refuses
SHUTTING_DOWN = "server is shutting down: the request was cancelled before it finished"
NO_AUDIO = f"no audio: send the file in a form field named {' or '.join(repr(f) for f in FILE_FIELDS)}"


def _int_field(value: str | None, name: str, default: int, high: int) -> int:
    if value is None or value == "":
        return default
    if not DIGITS.fullmatch(value.strip()) or not 1 <= int(value.strip()) <= high:
        raise ApiError(400, f"'{name}' must be an integer from 1 to {high}, got {value[:20]!r}")
    return int(value.strip())


class _Guard:
    """Plain ASGI middleware, outside every route: refuse a `Host` the HostCheck does not allow (421, JSON), add
    the security headers to every answer, and answer a request that uvicorn cancels when its shutdown grace
    period ends (uploading or waiting for the model) with a JSON 503 instead of a plain-text 500."""

    def __init__(self, app: Any, hosts: HostCheck) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_secured(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers.setdefault(k, v)
            await send(message)

        host = Headers(scope=scope).get("host")
        try:
            if not self.hosts.allows(host):
                await _error(421, self.hosts.refusal(host))(scope, receive, send_secured)
                return
            await self.app(scope, receive, send_secured)
        except asyncio.CancelledError:  # only uvicorn's shutdown cancels a request; the answer ends it
            if not started:
                await _error(503, SHUTTING_DOWN)(scope, receive, send_secured)


def create_app(engine: Engine, cfg: ServeConfig | None = None, *, temp_root: str | Path | None = None,
               hosts: HostCheck | None = None) -> FastAPI:
    """The app for `engine`. Uploads go to private folders (0700) under `temp_root` (default: a new folder
    in the system temp dir), one per request, deleted when the request ends; the root goes at shutdown.
    `hosts`: the Host headers answered (default: loopback names only)."""
    cfg = cfg or engine.cfg
    pool = WorkerPool(cfg.workers, cfg.queue)
    root = Path(tempfile.mkdtemp(prefix="tinyclap-serve-", dir=temp_root))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            pool.shutdown()
            shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(title="tinyclap", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.pool, app.state.upload_root, app.state.config = engine, pool, root, cfg
    _add_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_Guard, hosts=hosts or HostCheck())

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return schemas.health_document(running_or_queued=pool.admitted, capacity=pool.capacity,
                                       rejected=pool.rejected)

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return schemas.info_document(engine.info())

    _add_upload_routes(app, engine, cfg, pool, root)
    _add_search_routes(app, engine, cfg, pool)
    return app


@contextlib.asynccontextmanager
async def _request_folder(root: Path) -> AsyncIterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="req-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _add_upload_routes(app: FastAPI, engine: Engine, cfg: ServeConfig, pool: WorkerPool, root: Path) -> None:
    @app.post("/api/classify")
    async def classify(request: Request) -> dict[str, Any]:
        pool.check()
        async with _request_folder(root) as folder:
            up = await receive_upload(request, folder, cfg.max_upload_bytes)
            if up.path is None:
                raise ApiError(400, NO_AUDIO)
            labels = parse_labels(up.fields.get("labels"), cfg)
            top = _int_field(up.fields.get("top"), "top", cfg.top, cfg.top)
            result = await pool.run(engine.classify, up.path, labels, top, up.filename)
        result.update(format=up.format, bytes=up.size)
        return schemas.classify_document([result])

    @app.post("/api/search")
    async def search_audio(request: Request) -> dict[str, Any]:
        engine.require_index()
        pool.check()
        async with _request_folder(root) as folder:
            up = await receive_upload(request, folder, cfg.max_upload_bytes)
            if up.path is None:
                raise ApiError(400, NO_AUDIO)
            k = _int_field(up.fields.get("k"), "k", cfg.search_k, cfg.max_search_k)
            hits = await pool.run(engine.search_audio, up.path, k)
        return schemas.search_document({"like": up.filename}, hits)


def _add_search_routes(app: FastAPI, engine: Engine, cfg: ServeConfig, pool: WorkerPool) -> None:
    @app.get("/api/search")
    async def search_text(q: str = "", k: str | None = None) -> dict[str, Any]:
        engine.require_index()
        kk = _int_field(k, "k", cfg.search_k, cfg.max_search_k)
        hits = await pool.run(engine.search_text, q, kk)
        return schemas.search_document({"text": q}, hits)

    @app.get("/api/audio/{file_id}")
    async def audio(file_id: str) -> FileResponse:
        if not DIGITS.fullmatch(file_id):  # an id, never a name or a path
            raise ApiError(404, "no indexed file with that id (ids are non-negative integers)")
        record = engine.audio_record(int(file_id))
        # stat, link and (once per file version) hash checks read the disk: off the event loop
        path, st = await run_in_threadpool(engine.verified_audio, record)
        media = AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=media, stat_result=st, headers={"Cache-Control": "no-store"})


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            message = f"not found: {request.url.path[:200]}"
        return _error(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(422, f"invalid request: {where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server keeps serving")
