"""Building the server from command-line choices, and running it with uvicorn.

uvicorn (the ASGI server FastAPI recommends) stops gracefully on SIGTERM and SIGINT: it stops accepting,
lets running requests finish (up to `ServeConfig.grace` s; those still running then are cancelled and answer
a JSON 503), then runs the app's shutdown (queued jobs dropped, the upload folder removed); a model job still
running on its thread is not waited for (`tinyclap serve` exits at once). `limit_concurrency` caps open
connections, and `protocol.deadline_protocol` drops connections that are idle or trickle (header and body read
deadlines, a minimum upload rate), so a cap's worth of slow clients frees its slots within `read_timeout`;
model work has its own bounded pool (`limits.WorkerPool`).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tinyclap.serve.engine import Engine
from tinyclap.serve.limits import ServeConfig

EXTRA_CONNECTIONS = 16  # page, static files and health checks beside the model jobs


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning printed when the server listens beyond this machine (None on loopback)."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}: anyone who can reach this machine on the network can use this "
            "server (there is no authentication); use the default --host 127.0.0.1 to keep it local")


def build_engine(cfg: ServeConfig, *, model: str | None = None, export_dir: str | None = None, int8: bool = False,
                 teacher: str | None = None, tokenizer: str | None = None, classes: str | None = None,
                 templates: list[str] | None = None, index: str | None = None) -> Engine:
    """An Engine over `tinyclap.Classifier` (a PyTorch model or an export) and, with `index`, an Index."""
    from tinyclap.classifier import Classifier

    if (model is None) == (export_dir is None):
        raise ValueError("give one model: --model RUN|CHECKPOINT|EXPORT_DIR")
    if export_dir is not None:
        for name in ("model.onnx", "manifest.json"):
            if not (Path(export_dir) / name).is_file():
                raise ValueError(f"{export_dir}: not an export folder ({name} missing; made by `tinyclap export`)")
    if export_dir is not None and teacher is None:
        # one ONNX Runtime thread per worker and no decode-ahead threads: parallelism is the worker pool's
        # (2 workers x 2 intra-op threads on 2 cores only thrash)
        clf = Classifier.from_export(export_dir, int8=int8, classes=classes, threads=1, workers=1,  # torch-free
                                     templates=templates)
    else:
        spec: Any = model if model is not None else export_dir
        clf = Classifier.from_model(spec, classes, teacher=teacher, tokenizer=tokenizer, templates=templates)
    idx = None
    if index is not None:
        from tinyclap.index import Index

        # a server answers many single queries: pack the int8 rows once (identical results, ~3x faster per
        # query, about twice the int8 matrix in RAM; declined with a warning on CPUs without VNNI)
        idx = Index.open(index, readonly=True).load_resident()
    # the index's own audio model embeds "more like this" queries (loaded once, checked against the index)
    return Engine(clf, cfg, index=idx, teacher=teacher, tokenizer=tokenizer)


def run_server(app: Any, host: str, port: int, cfg: ServeConfig, *, log_level: str = "info") -> None:
    """Serve `app` until SIGTERM/SIGINT (graceful), then return."""
    import uvicorn

    from tinyclap.serve.protocol import deadline_protocol

    warning = host_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
        limit_concurrency=cfg.workers + cfg.queue + EXTRA_CONNECTIONS,
        timeout_graceful_shutdown=cfg.grace,  # type: ignore[arg-type]  # a float works (asyncio.timeout)
        server_header=False, proxy_headers=False, h11_max_incomplete_event_size=64 * 1024,
        http=deadline_protocol(cfg.read_timeout, cfg.min_upload_rate), ws="none",
        timeout_keep_alive=max(1, min(5, int(cfg.read_timeout))),
    )
    server = uvicorn.Server(config)
    print(f"tinyclap serve: http://{'[' + host + ']' if ':' in host else host}:{port}/ (pid {os.getpid()}; "
          "stop with Ctrl-C or SIGTERM)", file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler it found:
    # make that a plain return, so a requested stop exits with status 0
    stops: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stops.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"tinyclap serve: stopped{' (' + signal.Signals(stops[0]).name + ')' if stops else ''}", file=sys.stderr)
