"""What `tinyclap serve` allows: the limits (one dataclass), the API's error type and the bounded worker pool.

Every limit is a field of `ServeConfig` with its default; `tinyclap serve --help` shows the same values. The
pool runs model work on `workers` threads (ONNX Runtime and torch release the GIL while they compute) and
admits at most `workers + queue` jobs at once: the next one is refused at once with HTTP 503, so a burst of
requests costs a bounded amount of memory instead of a growing queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MB = 1 << 20


@dataclass(frozen=True)
class ServeConfig:
    """Limits and defaults of one server (all checked before any work is done)."""

    max_upload_bytes: int = 50 * MB  # whole request body; checked while it streams in
    max_seconds: float = 600.0  # longest clip accepted (its header's duration, and what is decoded)
    workers: int = 2  # model threads
    queue: int = 8  # jobs waiting beyond the running ones; more get 503
    window: float = 5.0  # timeline window (s), for clips longer than the model's clip
    hop: float = 1.0  # timeline hop (s)
    top: int = 10  # labels returned per clip
    max_labels: int = 64  # free-text labels per request
    max_label_chars: int = 100
    search_k: int = 10  # hits returned per search
    max_search_k: int = 100

    def __post_init__(self) -> None:
        checks = {
            "max_upload_bytes": self.max_upload_bytes >= 1024,
            "max_seconds": self.max_seconds > 0,
            "workers": self.workers >= 1,
            "queue": self.queue >= 0,
            "window": self.window > 0,
            "hop": self.hop > 0,
            "top": self.top >= 1,
            "max_labels": self.max_labels >= 1,
            "search_k": 1 <= self.search_k <= self.max_search_k,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid serve limits: {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")


class ApiError(Exception):
    """An error the API answers as JSON `{"error": message, "status": code}` (never a traceback)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WorkerPool:
    """`workers` threads and at most `workers + queue` admitted jobs; beyond that `run` raises ApiError(503)."""

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinyclap-serve")
        self._lock = threading.Lock()
        self._admitted = 0
        self.rejected = 0

    @property
    def admitted(self) -> int:
        return self._admitted

    def check(self) -> None:
        """Refuse early (503), before an upload is read, when the pool and its queue are already full."""
        if self._admitted >= self.capacity:
            with self._lock:
                self.rejected += 1
            raise ApiError(503, f"server busy: {self.capacity} requests already running or queued, retry later")

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.capacity:
                self.rejected += 1
                raise ApiError(503, f"server busy: {self.capacity} requests already running or queued, retry later")
            self._admitted += 1

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a worker thread, or refuse with 503 when the pool and its queue are full."""
        self._admit()
        try:
            job = self._executor.submit(fn, *args)
        except RuntimeError:  # shut down
            self._release()
            raise ApiError(503, "server is shutting down") from None
        # released when the thread is done, not when the caller stops waiting (a client that hangs up
        # does not free a slot its job still occupies)
        job.add_done_callback(lambda _: self._release())
        return await asyncio.wrap_future(job)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
