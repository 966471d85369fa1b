"""Read deadlines for uvicorn's h11 connections: idle and trickling clients are dropped and their slots freed.

uvicorn has a keep-alive timeout (between requests) and a connection cap (`limit_concurrency`, which counts
open connections), but no deadline for reading a request: a socket that sends nothing, or a head or body one
byte at a time, holds its slot for ever, and a cap's worth of them makes every request (health checks
included) a 503. `deadline_protocol(read_timeout, min_rate)` is uvicorn's own `H11Protocol` with one timer
per connection that ticks while it is open and drops the connection (a JSON 408 when no response was
started, then close) when:

- a request head is not complete `read_timeout` s after the connection opened or the last response ended;
- a body sends nothing for `read_timeout` s, or averages under `min_rate` bytes/s once `read_timeout` s have
  passed (not counted while the server itself has paused reading);
- a body is still arriving `read_timeout` s after the response was sent (an unread body, e.g. after a 413).

Given to uvicorn as `Config(http=deadline_protocol(...))`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def _timeout_response(message: str) -> bytes:
    body = json.dumps({"error": message, "status": 408}).encode()
    head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\nx-content-type-options: nosniff\r\n\r\n")
    return head.encode() + body


class DeadlineProtocol(H11Protocol):
    """uvicorn's H11Protocol plus the read deadlines above (the class attributes are set by `deadline_protocol`)."""

    read_timeout = 10.0
    min_rate = 16 * 1024.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        now = time.monotonic()
        self._waiting_since = now  # waiting for a request head since then
        self._received = 0  # bytes received on this connection
        self._last_data = now
        self._tracked: Any = None  # the request cycle whose body is being timed
        self._body_since = self._body_start = 0.0
        self._body_bytes0 = 0
        self._tick_s = max(0.05, min(1.0, self.read_timeout / 4))
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(self._tick_s, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        self._last_data = time.monotonic()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._waiting_since = time.monotonic()
        super().on_response_complete()

    def _tick(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        problem = self._overdue(time.monotonic())
        if problem:
            self._drop(problem)
            return
        self._timer = self.loop.call_later(self._tick_s, self._tick)

    def _overdue(self, now: float) -> str:
        """Why this connection is dropped now ("" to keep it)."""
        state, cycle = self.conn.their_state, self.cycle
        if state is h11.IDLE and (cycle is None or cycle.response_complete):
            if now - self._waiting_since > self.read_timeout:
                return f"request timed out: no complete request head within {self.read_timeout:g} s"
            return ""
        if state is not h11.SEND_BODY or cycle is None:
            return ""
        if cycle is not self._tracked:  # a new body: start its clock
            self._tracked, self._body_since, self._body_bytes0 = cycle, now, self._received
            self._body_start = now
        if cycle.response_complete:
            if now - self._waiting_since > self.read_timeout:
                return "request body still arriving after the response"
            return ""
        if self.flow.read_paused:  # the server is not reading: not the client's delay
            self._body_since, self._body_bytes0, self._last_data = now, self._received, now
            return ""
        if now - self._last_data > self.read_timeout:
            return f"request timed out: no body data for {self.read_timeout:g} s"
        elapsed = now - self._body_since
        got = self._received - self._body_bytes0
        if elapsed > self.read_timeout and got < self.min_rate * (elapsed - self.read_timeout):
            return (f"upload too slow: {got:,} bytes in {now - self._body_start:.0f} s (the minimum is "
                    f"{self.min_rate / 1024:g} KB/s after the first {self.read_timeout:g} s)")
        return ""

    def _drop(self, problem: str) -> None:
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(_timeout_response(problem))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() now says http.disconnect; its sends are dropped
            cycle.message_event.set()
        self.logger.info("dropped a connection: %s", problem)
        self.transport.close()


def deadline_protocol(read_timeout: float, min_rate: float) -> type[DeadlineProtocol]:
    """A `DeadlineProtocol` class with these limits (uvicorn instantiates the class per connection)."""
    return type("DeadlineProtocol", (DeadlineProtocol,), {"read_timeout": float(read_timeout),
                                                          "min_rate": float(min_rate)})
