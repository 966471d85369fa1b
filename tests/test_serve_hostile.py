"""`tinyclap serve` under hostile clients (issue 20, the server half), against a real server process on a free
loopback port (127.0.0.1 only): the DNS-rebinding guard (Host check), idle and trickling sockets dropped by the
read deadlines while /healthz stays answerable, indexed audio served only while it is what was indexed, bad
integers, boundaries and field names answered 4xx (never 500), no server paths in /api/info, numeric options
validated, and SIGTERM during a long request. Short deadlines (`--read-timeout 1`) keep each test to seconds;
every loop has a deadline, and each server is killed at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import index_three_clips, small_export, write_wav

NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
LABELS = ["dog", "rain", "siren", "engine"]
READ_TIMEOUT = 1.0  # --read-timeout given to the test servers (s)
WORKERS, QUEUE = 1, 1
CONNECTIONS = WORKERS + QUEUE + 16  # uvicorn's limit_concurrency (server.EXTRA_CONNECTIONS = 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, name: str, *args: str) -> dict[str, Any]:
    """`tinyclap serve ARGS` on a free loopback port, once /healthz answers (the test kills it at the end)."""
    port = free_port()
    tmp = work / f"{name}-tmp"
    tmp.mkdir()
    log = open(work / f"{name}.log", "w+")  # noqa: SIM115
    cmd = [sys.executable, "-m", "tinyclap.cli", "serve", *args, "--port", str(port), "--log-level", "warning",
           "--read-timeout", str(READ_TIMEOUT), "--workers", str(WORKERS), "--queue", str(QUEUE)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(tmp)})
    srv = {"port": port, "proc": proc, "log": log, "tmp": tmp}
    deadline = time.monotonic() + 120
    while True:
        try:
            if request(srv, "GET", "/healthz", timeout=2)[0] == 200:
                return srv
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(srv)
            log.seek(0)
            pytest.fail(f"tinyclap serve did not start:\n{log.read()}")
        time.sleep(0.3)


def stop(srv: dict[str, Any]) -> str:
    """Kill the server if it still runs; its log."""
    if srv["proc"].poll() is None:
        srv["proc"].kill()
        srv["proc"].wait(10)
    srv["log"].seek(0)
    text = srv["log"].read()
    srv["log"].close()
    return text


def request(srv: dict[str, Any], method: str, path: str, body: bytes | None = None, *, host: str | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", srv["port"], timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{srv['port']}")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def json_error(status: int, body: bytes, expected: int | tuple[int, ...], phrase: str = "") -> str:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert status in allowed, (status, body[:300])
    data = json.loads(body)
    assert data["status"] == status and data["error"] and b"Traceback" not in body
    assert phrase.lower() in data["error"].lower(), data["error"]
    return data["error"]


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]], boundary: str = "tcb0123456789",
              close: bool = True) -> tuple[bytes, dict[str, str]]:
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for k, (fname, data) in files.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{fname}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def healthy(srv: dict[str, Any]) -> None:
    status, body, _ = request(srv, "GET", "/healthz", timeout=10)
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert srv["proc"].poll() is None


@pytest.fixture(scope="module")
def export_dir(work: Path, us8k_root: Path) -> Path:
    return small_export(work / "export", us8k_root, NAME, LABELS, 64)


@pytest.fixture(scope="module")
def indexed(work: Path, export_dir: Path) -> dict[str, Any]:
    """Three 2 s WAVs in work/source, indexed with the export; their ids by name."""
    from tinyclap.index import Index

    index_three_clips(work, export_dir)
    with Index.open(work / "index") as idx:
        ids = {Path(r.path).name: r.id for r in idx.files()}
    return {"source": work / "source", "index": work / "index", "ids": ids}


@pytest.fixture(scope="module")
def server(work: Path, export_dir: Path, indexed: dict[str, Any]) -> Iterator[dict[str, Any]]:
    srv = start_server(work, "server", "--export-dir", str(export_dir), "--index", str(indexed["index"]),
                       "--allowed-host", "tinyclap.test", "--min-upload-rate", "64", "--max-upload-mb", "2")
    yield srv
    log = stop(srv)
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def test_host_header_checked(server: dict[str, Any], indexed: dict[str, Any]) -> None:
    """DNS rebinding: a name other than loopback, --host or --allowed-host gets 421 on every route."""
    port = server["port"]
    audio = f"/api/audio/{indexed['ids']['clip0.wav']}"
    for host in ("rebind.attacker.example", f"rebind.attacker.example:{port}", "127.0.0.1.attacker.example",
                 "localhost.attacker.example", "[::1].example", "", "127.0.0.1:x", "192.168.1.20"):
        for path in ("/api/info", "/api/search?q=dog", audio, "/healthz", "/"):
            status, body, headers = request(server, "GET", path, host=host)
            json_error(status, body, 421, "not allowed")
            assert headers["x-content-type-options"] == "nosniff"
            assert b"RIFF" not in body
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LocalHost", f"[::1]:{port}", "[::1]",
                 "127.0.0.2", "tinyclap.test", f"tinyclap.test:{port}"):
        status, body, _ = request(server, "GET", "/api/info", host=host)
        assert status == 200, (host, body[:200])
    status, body, _ = request(server, "GET", audio, host=f"localhost:{port}")
    assert status == 200 and body == (indexed["source"] / "clip0.wav").read_bytes()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # HTTP/1.0, no Host at all
        s.sendall(b"GET /api/info HTTP/1.0\r\n\r\n")
        reply = recv_all(s, 10)
    assert reply.startswith(b"HTTP/1.1 421"), reply[:100]
    healthy(server)


def recv_all(s: socket.socket, deadline_s: float) -> bytes:
    """Everything the server sends until it closes (or the deadline passes)."""
    out = b""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        s.settimeout(max(0.05, end - time.monotonic()))
        try:
            data = s.recv(65536)
        except TimeoutError:
            break
        except OSError:
            break
        if not data:
            break
        out += data
    return out


def test_idle_sockets_dropped_health_answers(server: dict[str, Any]) -> None:
    """A connection limit's worth of sockets that send nothing (and some that send half a head): each is
    dropped with a JSON 408 after --read-timeout, and /healthz answers while the clients still hold them."""
    socks = [socket.create_connection(("127.0.0.1", server["port"]), timeout=10) for _ in range(CONNECTIONS + 4)]
    try:
        for s in socks[:4]:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # a head that never ends
        deadline = time.monotonic() + 20 * READ_TIMEOUT + 10
        status = 0
        while time.monotonic() < deadline:
            try:
                status = request(server, "GET", "/healthz", timeout=5)[0]
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200  # answerable while every idle socket is still open on the client side
        for s in socks:
            reply = recv_all(s, 20 * READ_TIMEOUT)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 408") or reply.startswith(b"HTTP/1.1 503"), reply
            if reply.startswith(b"HTTP/1.1 408"):
                assert b'"status": 408' in reply and b"request timed out" in reply
    finally:
        for s in socks:
            s.close()
    healthy(server)


def test_trickling_uploads_dropped(server: dict[str, Any]) -> None:
    """Uploads sending 1 byte per 0.2 s (far under --min-upload-rate) are dropped with a JSON 408, their slots
    freed: once they are gone, every request is answered again."""
    n = CONNECTIONS // 2
    head = (b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\n")
    socks = [socket.create_connection(("127.0.0.1", server["port"]), timeout=10) for _ in range(n)]
    replies: dict[int, bytes] = {}
    stop_at = time.monotonic() + 20 * READ_TIMEOUT + 10

    def trickle() -> None:
        for s in socks:
            s.sendall(head)
        open_ = set(range(n))
        while open_ and time.monotonic() < stop_at:
            for i in sorted(open_):
                try:
                    socks[i].sendall(b"x")
                except OSError:
                    open_.discard(i)
            time.sleep(0.2)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        for i, s in enumerate(socks):
            replies[i] = recv_all(s, max(1.0, stop_at - time.monotonic()))
    finally:
        for s in socks:
            s.close()
        t.join(30)
    for reply in replies.values():
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"upload too slow" in reply or b"no body data" in reply, reply
    healthy(server)


def test_integers_boundaries_and_fields(server: dict[str, Any], indexed: dict[str, Any]) -> None:
    """Unicode digits, hostile boundaries, truncated forms and other field names: 4xx JSON, never 500."""
    wav = (indexed["source"] / "clip1.wav").read_bytes()
    body, headers = multipart({"top": "²"}, {"audio": ("a.wav", wav)})
    json_error(*request(server, "POST", "/api/classify", body, headers=headers)[:2], 400, "'top'")
    json_error(*request(server, "GET", "/api/search?q=dog&k=%C2%B2")[:2], 400, "'k'")
    body, headers = multipart({"k": "²"}, {"audio": ("a.wav", wav)})
    json_error(*request(server, "POST", "/api/search", body, headers=headers)[:2], 400, "'k'")
    for path in ("/api/audio/%C2%B2", "/api/audio/%D9%A1", "/api/audio/%EF%BC%91"):  # ², Arabic-Indic 1, fullwidth 1
        json_error(*request(server, "GET", path)[:2], 404, "integers")
    body, headers = multipart({}, {"audio": ("a.wav", wav)}, boundary="b" * 5000)
    json_error(*request(server, "POST", "/api/classify", body, headers=headers)[:2], 400, "boundary")
    body, headers = multipart({}, {"audio": ("a.wav", wav)}, close=False)
    json_error(*request(server, "POST", "/api/classify", body, headers=headers)[:2], 400, "closing boundary")
    body, headers = multipart({}, {"upload": ("a.wav", wav)})
    json_error(*request(server, "POST", "/api/classify", body, headers=headers)[:2], 400, "'audio' or 'file'")
    body, headers = multipart({}, {"file": ("a.wav", wav)})
    status, reply, _ = request(server, "POST", "/api/classify", body, headers=headers)
    assert status == 200 and len(json.loads(reply)["results"][0]["labels"]) == len(LABELS), reply[:300]
    healthy(server)


def test_info_names_no_paths(server: dict[str, Any], work: Path, export_dir: Path) -> None:
    status, body, _ = request(server, "GET", "/api/info")
    assert status == 200
    info = json.loads(body)
    assert str(work) not in body.decode() and str(export_dir) not in body.decode()
    assert info["model"]["name"] == NAME and "spec" not in info["model"] and "export_dir" not in info["model"]
    lat = info["latency"]
    assert lat["median_ms"] == info["latency_ms"] > 0 and lat["runs"] == 10 and lat["warmup_runs"] == 2


def test_audio_served_only_as_indexed(server: dict[str, Any], indexed: dict[str, Any], work: Path) -> None:
    """An indexed file replaced by a link leaving the folder (same bytes, same mtime), changed in place with
    its size and mtime kept, or grown: refused with JSON and no audio bytes; the untouched file still plays."""
    src, ids = indexed["source"], indexed["ids"]
    outside = work / "outside"
    outside.mkdir()
    secret = outside / "clip0.wav"
    shutil.copyfile(src / "clip0.wav", secret)
    st = os.stat(src / "clip0.wav")
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    (src / "clip0.wav").unlink()
    os.symlink(secret, src / "clip0.wav")  # same size, mtime and hash: only the path check refuses it
    status, body, _ = request(server, "GET", f"/api/audio/{ids['clip0.wav']}")
    json_error(status, body, 403, "outside the indexed folder")

    clip1 = src / "clip1.wav"
    st = os.stat(clip1)
    data = bytearray(clip1.read_bytes())
    data[-100:] = bytes(100)  # same size
    clip1.write_bytes(bytes(data))
    os.utime(clip1, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the hash tells
    json_error(*request(server, "GET", f"/api/audio/{ids['clip1.wav']}")[:2], 409, "content hash")

    with open(src / "clip2.wav", "rb") as f:
        good = f.read()
    status, body, headers = request(server, "GET", f"/api/audio/{ids['clip2.wav']}")
    assert status == 200 and body == good and headers["content-type"] == "audio/wav"
    with open(src / "clip2.wav", "ab") as f:
        f.write(b"\0" * 10)
    json_error(*request(server, "GET", f"/api/audio/{ids['clip2.wav']}")[:2], 409, "size or modification")
    json_error(*request(server, "GET", "/api/audio/987654")[:2], 404, "no indexed file")
    healthy(server)


@pytest.mark.parametrize("option", ["--max-upload-mb", "--max-seconds", "--window", "--hop", "--read-timeout",
                                    "--min-upload-rate", "--grace", "--workers", "--queue", "--port"])
def test_numeric_options_validated(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tinyclap.cli import build_parser

    for bad in ("nan", "inf", "-1", "1e999", "x"):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["serve", "--export-dir", "x", option, bad])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument {option}" in err and "Traceback" not in err, err


def test_nan_upload_limit_one_line_error(work: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "tinyclap.cli", "serve", "--export-dir", str(work), "--max-upload-mb",
                          "nan"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "argument --max-upload-mb: nan is out of range" in out.stderr.strip().splitlines()[-1]


def slow_upload(port: int, total: int, result: dict[str, Any], stop_at: float) -> None:
    """POST a WAV-looking body of `total` bytes at ~1.3 MB/s (above any minimum rate); keep the reply."""
    head = (b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {total}\r\n\r\n".encode())
    part = b'--b\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\nRIFF\0\0\0\0WAVE'
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + part)
        sent = len(part)
        s.settimeout(0.05)
        try:
            while sent < total - 65536 and not reply and time.monotonic() < stop_at:
                s.sendall(bytes(65536))
                sent += 65536
                result["sent"] = sent
                try:
                    reply += s.recv(65536)
                except TimeoutError:
                    pass
        except OSError:
            pass
        reply += recv_all(s, 10)
    result["reply"] = reply


def test_sigterm_during_long_request(work: Path, export_dir: Path) -> None:
    """SIGTERM while a 600 s clip is being classified (hundreds of windows) and another clip is uploading:
    both are answered in JSON (finished, or 503 once the 1 s grace is over), and the server exits at once with
    status 0 (the model thread is not waited for)."""
    srv = start_server(work, "sigterm", "--export-dir", str(export_dir), "--grace", "1", "--max-upload-mb", "12",
                       "--max-seconds", "600")
    try:
        wav = write_wav(work / "long.wav", (0.1 * np.random.default_rng(0).standard_normal(600 * 8000)).astype(
            np.float32), 8000)
        body, headers = multipart({}, {"audio": ("long.wav", Path(wav).read_bytes())})
        result: dict[str, Any] = {}
        upload: dict[str, Any] = {}

        def post() -> None:
            try:
                result["reply"] = request(srv, "POST", "/api/classify", body, headers=headers, timeout=120)
            except OSError as e:
                result["error"] = e

        threads = [threading.Thread(target=post, daemon=True),
                   threading.Thread(target=slow_upload, args=(srv["port"], 11 << 20, upload, time.monotonic() + 60),
                                    daemon=True)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "reply" not in result:
            if json.loads(request(srv, "GET", "/healthz")[1])["running_or_queued"] >= 1 and upload.get("sent"):
                break
            time.sleep(0.05)
        assert "reply" not in result and "reply" not in upload, "a request finished before SIGTERM could be sent"
        srv["proc"].send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert "reply" in result, result.get("error")
        status, reply, _ = result["reply"]
        assert status in (200, 503) and b"Traceback" not in reply
        if status == 503:
            json_error(status, reply, 503, "shutting down")
        assert upload["reply"].startswith(b"HTTP/1.1 503"), upload["reply"][:300]  # cancelled while uploading
        assert b'"status":503' in upload["reply"] and b"shutting down" in upload["reply"]
        assert srv["proc"].wait(30) == 0
        assert list(srv["tmp"].glob("tinyclap-serve-*")) == []
    finally:
        log = stop(srv)
    assert "Traceback" not in log, log[-3000:]
