"""`tinyclap serve`: a local web page and JSON API for a student (upload or record a sound, type labels).

Listens on 127.0.0.1 unless --host says otherwise, and answers only requests whose Host is localhost, a
loopback address, the --host given or an --allowed-host name (a DNS-rebinding guard). The page, its script
and style are served from the package (no CDN, no network). Needs the optional extra: pip install
'tinyclap[serve]'. The API is in README.md ("A web page: tinyclap serve"); stop the server with Ctrl-C or
SIGTERM (graceful).
"""

from __future__ import annotations

import argparse
import os
import sys

from tinyclap.cli._common import (
    MODEL_KINDS,
    WINDOW_SECONDS,
    add_alias,
    add_command,
    add_int8_arg,
    add_model_arg,
    add_templates_arg,
    add_window_args,
    export_model,
    float_in,
    int_in,
)


def _host_name(text: str) -> str:
    """An argparse `type` for --allowed-host: a host name or address (an optional :port is ignored)."""
    from tinyclap.serve.limits import host_name

    name = host_name(text)
    if name is None or any(c in name for c in "/@ \t"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    return name


def register(sub: argparse._SubParsersAction) -> None:
    from tinyclap.serve.limits import MB, ServeConfig

    d = ServeConfig()
    p = add_command(sub, "serve", "a local web page + JSON API: classify uploads, search an index",
                    description=__doc__.split("\n\n", 1)[1].strip())
    g = p.add_argument_group("model")
    add_model_arg(g, f"{MODEL_KINDS}; torch-free unless --teacher")
    add_alias(g, "--export-dir", "--model")
    add_int8_arg(g)
    p.add_argument("--teacher", help="teacher whose text tower encodes free-text labels (default: the teacher "
                   "recorded with the model, if any)")
    p.add_argument("--tokenizer", help="folder with the BERT uncased vocab.txt (a BERT teacher)")
    p.add_argument("--classes", help="class-matrix file (.npz): the fixed classes shown when no labels are typed")
    add_templates_arg(p)
    p.add_argument("--index", help="folder written by `tinyclap embed`: adds the search panel")
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but loopback warns)")
    n.add_argument("--port", type=int_in(0, 65535), default=8000, help="TCP port (0: any free port)")
    n.add_argument("--allowed-host", action="append", default=[], type=_host_name, metavar="NAME",
                   help="also answer requests whose Host is NAME (repeatable; localhost, loopback addresses and "
                   "--host are always allowed, any other name gets HTTP 421)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-upload-mb", type=float_in(0.001, 1 << 16), default=d.max_upload_bytes / MB,
                     help="largest upload")
    lim.add_argument("--max-seconds", type=float_in(0, 86400, low_open=True), default=d.max_seconds,
                     help="longest audio accepted")
    lim.add_argument("--jobs", dest="workers", type=int_in(1, 256), default=d.workers, metavar="N",
                     help="model jobs run at once (one thread each)")
    add_alias(lim, "--workers", "--jobs", type=int_in(1, 256))
    lim.add_argument("--queue", type=int_in(0, 1 << 16), default=d.queue, help="requests waiting beyond the "
                     "running ones (more get HTTP 503)")
    add_window_args(lim)
    lim.add_argument("--read-timeout", type=float_in(0.1, 3600), default=d.read_timeout, help="seconds a client "
                     "may take to send a request head, or pause within a body, before it is dropped (HTTP 408)")
    lim.add_argument("--min-upload-rate", type=float_in(0, 1 << 20), default=d.min_upload_rate / 1024,
                     help="KB/s a request body must average once --read-timeout has passed (slower: dropped)")
    lim.add_argument("--grace", type=float_in(0, 3600), default=d.grace, help="seconds running requests may "
                     "take to finish after SIGTERM/Ctrl-C (then they are cancelled with HTTP 503)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(f"tinyclap serve needs the serve extra: pip install 'tinyclap[serve]' ({e})") from None
    from tinyclap.serve.app import create_app
    from tinyclap.serve.limits import MB, HostCheck, ServeConfig
    from tinyclap.serve.server import build_engine, run_server

    export_model(args)
    window = WINDOW_SECONDS if args.window is None else args.window
    cfg = ServeConfig(max_upload_bytes=max(1024, int(args.max_upload_mb * MB)), max_seconds=args.max_seconds,
                      workers=args.workers, queue=args.queue, window=window, hop=args.hop,
                      read_timeout=args.read_timeout, min_upload_rate=args.min_upload_rate * 1024, grace=args.grace)
    engine = build_engine(cfg, model=args.model, export_dir=args.export_dir, int8=args.int8, teacher=args.teacher,
                          tokenizer=args.tokenizer, classes=args.classes, templates=args.templates, index=args.index)
    ms = engine.measure_latency()
    facts = engine.info()["model"]
    lat = engine.latency or {}
    print(f"model {facts.get('name', '?')}: {ms:.1f} ms per {lat.get('clip_seconds', 5):g} s clip (median of "
          f"{lat.get('runs', '?')} warm runs, measured now)", flush=True)
    app = create_app(engine, cfg, hosts=HostCheck(args.host, args.allowed_host))
    run_server(app, args.host, args.port, cfg, log_level=args.log_level)
    running = app.state.pool.admitted
    if running:  # model jobs past the grace period: not waited for (a thread cannot be stopped; nothing to save)
        print(f"tinyclap serve: {running} model job(s) still running were abandoned", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)
    return 0
