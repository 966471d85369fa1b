"""`tinyclap serve`: a local web page and JSON API over a student (PyTorch checkpoint or torch-free export).

FastAPI + uvicorn (the optional extra `tinyclap[serve]`). Layout: `limits` (ServeConfig, ApiError, the
bounded WorkerPool), `uploads` (streaming multipart with a size limit, content sniffing), `engine` (the
model side: `tinyclap.Classifier` and `tinyclap.index.Index`), `app` (routes, JSON errors, security
headers), `server` (building an engine from CLI choices, uvicorn with graceful shutdown), `static/` (the
page: HTML, JS, CSS; no CDN). `import tinyclap.serve` imports neither FastAPI nor torch.
"""

from __future__ import annotations

from tinyclap._util import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "tinyclap.serve.limits": "ServeConfig ApiError WorkerPool",
    "tinyclap.serve.engine": "Engine",
    "tinyclap.serve.app": "create_app",
    "tinyclap.serve.server": "build_engine run_server",
})
__all__ = ["ApiError", "Engine", "ServeConfig", "WorkerPool", "build_engine", "create_app", "run_server"]
