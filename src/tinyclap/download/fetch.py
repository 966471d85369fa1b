"""HTTP transfer of one file with resume, retries and verification (size, SHA-256 or published MD5).

A file is downloaded with urllib into `<name>.part` (resumed with HTTP Range after a dropped connection,
restarted cleanly when a server ignores Range), checked against its expected size and checksum, and only
then renamed to its final name. Bytes without any published checksum are kept as `<name>.unverified`
until the user supplies `--sha256 HEX` or passes `--allow-unverified`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyclap._util import fsync_folder
from tinyclap._util import progress as progress_display
from tinyclap.download.registry import ENV_HOME, DownloadError, RemoteFile, fmt_size

__all__ = ["CHUNK", "DEFAULT_MAX_BYTES", "RETRY_HTTP_CODES", "STALL_BYTES", "FetchOptions", "check_space", "fetch_file"]

log = logging.getLogger("tinyclap.download")

CHUNK = 1 << 20
RETRY_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
# the ceiling for a file whose size is not known (neither in the registry nor announced): larger than any
# file tinyclap's registry lists (6 GB), small enough that an endless body cannot fill a disk unnoticed
DEFAULT_MAX_BYTES = 32 << 30
STALL_BYTES = 64 << 10  # fewer bytes than this in `stall_timeout` seconds is a stalled (slow-drip) transfer


@dataclass(frozen=True)
class FetchOptions:
    """How files are fetched: checksum policy, re-download, network patience, ceilings and progress display.

    `timeout` bounds each socket wait; `stall_timeout` bounds a transfer that trickles (a byte now and then
    keeps a socket alive forever): fewer than `STALL_BYTES` in that many seconds drops the connection and
    retries (resuming). `max_bytes` caps a file without a known size (an entry's own `max_size` first)."""

    allow_unverified: bool = False
    force: bool = False
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 1.0
    progress: bool = True
    max_bytes: int = DEFAULT_MAX_BYTES
    stall_timeout: float = 120.0


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on `<path>.lock` so two processes never append to the same .part file."""
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield from _locked(path)
    finally:
        for d in made:  # a failed first download leaves no empty folders behind
            with contextlib.suppress(OSError):
                d.rmdir()


def _locked(path: Path) -> Iterator[None]:
    """Hold the lock file `<path>.lock` (flock; none on Windows) while the caller's block runs."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent runs are then caught by the checksum
        yield
        return
    with open(lock_path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise DownloadError(f"{path}: another tinyclap download of this file is running") from e
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock_path.unlink()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def check_space(folder: Path, need: int | None, what: str) -> None:
    """DownloadError naming the sizes when `folder`'s disk has less than `need` bytes free."""
    if need is None or need <= 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DownloadError(
            f"not enough free space in {folder} for {what}: need {fmt_size(need)}, have {fmt_size(free)}; "
            f"free some space or pass --root (or set {ENV_HOME}) to a larger disk"
        )


def _hash_file(path: Path, *, md5: bool, progress: bool) -> tuple[str, str | None]:
    """SHA-256 (and MD5 when asked) of a file in one pass."""
    h = hashlib.sha256()
    m = hashlib.md5(usedforsecurity=False) if md5 else None
    total = path.stat().st_size
    with open(path, "rb") as f, _bar(total, f"verify {path.name}", progress and total > 64 * CHUNK) as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if m is not None:
                m.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest(), (m.hexdigest() if m is not None else None)


def _bar(total: int | None, desc: str, progress: bool) -> Any:
    """The one progress display (a tqdm bar on a terminal, periodic lines in a log) for a byte count."""
    return progress_display(total=total, desc=desc, unit="B", enabled=progress, unit_scale=True,
                            unit_divisor=1024, leave=False)


# ---------------------------------------------------------------------------------------------------------
# Transfer (one URL) with resume, retries and backoff
# ---------------------------------------------------------------------------------------------------------

class _TransferFailed(Exception):
    """This URL cannot deliver the file (after retries); `offline` when the host could not be reached."""

    def __init__(self, message: str, *, offline: bool = False) -> None:
        super().__init__(message)
        self.offline = offline


class _Short(Exception):
    """The connection ended before the announced number of bytes arrived (retry and resume)."""


class _Mismatch(Exception):
    """The bytes are complete but not the expected ones (wrong size or checksum)."""


class _Unverified(Exception):
    """No checksum is known for the file and the user did not accept that."""

    def __init__(self, sha256: str) -> None:
        super().__init__(sha256)
        self.sha256 = sha256


def _user_agent() -> str:
    try:
        from importlib.metadata import version

        v = version("tinyclap")
    except Exception:  # not installed (e.g. run from a source tree)
        v = "0"
    return f"tinyclap-download/{v} (python-urllib)"


def _describe(e: BaseException) -> tuple[str, bool]:
    """Human description of a connection-level error and whether it means 'host unreachable'."""
    reason: Any = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, socket.gaierror):
        return f"host name lookup failed ({reason})", True
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(reason, TimeoutError):
        return "timed out", True
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
        return f"network unreachable ({reason})", True
    if isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return f"connection dropped ({type(reason).__name__})", False
    return f"{type(reason).__name__}: {reason}", False


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from `bytes a-b/total` or `bytes */total`; None where absent."""
    if not value:
        return None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value)
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


class _Stalled(Exception):
    """The body trickles in slower than `STALL_BYTES` per `stall_timeout` (retry and resume)."""


@dataclass
class _Limits:
    """The ceilings of one file's transfer: its size or byte ceiling, socket timeout, stall window."""

    size: int | None  # known exact size (registry)
    ceiling: int  # most bytes accepted when the size is unknown
    timeout: float
    stall: float


def _copy_body(resp: Any, f: Any, bar: Any, start: int, cap: int, stall: float, part: Path) -> tuple[int, bool]:
    """Copy the response body to `f` (read1: returns as bytes arrive); returns (bytes got, went past `cap`).
    Raises _Stalled when fewer than `STALL_BYTES` arrive in `stall` seconds."""
    got, window_start, window_bytes = 0, time.monotonic(), 0
    read = getattr(resp, "read1", resp.read)
    while chunk := read(CHUNK):  # network errors propagate: the caller retries/resumes
        try:
            f.write(chunk)
        except OSError as e:  # disk full, permissions: retrying cannot help
            raise DownloadError(f"cannot write {part}: {e}") from e
        got += len(chunk)
        bar.update(len(chunk))
        if start + got > cap:
            return got, True
        window_bytes += len(chunk)
        now = time.monotonic()
        if now - window_start >= stall:
            if window_bytes < STALL_BYTES:
                raise _Stalled(f"transfer stalled: {window_bytes} bytes in {now - window_start:.0f} s")
            window_start, window_bytes = now, 0
    return got, False


def _stream(url: str, part: Path, lim: _Limits, progress: bool) -> None:
    """One HTTP request: append to (resume) or rewrite `part`; raise _Short if the body ends early."""
    size, timeout = lim.size, lim.timeout
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": _user_agent(), "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        body_len = int(length) if length and length.isdigit() else None
        ctype = resp.headers.get("Content-Type", "")
        if ctype.lower().startswith("text/html") and not part.name.endswith((".html.part", ".htm.part")):
            raise _TransferFailed(f"server sent an HTML page (Content-Type {ctype}), not the file "
                                  "(a login, quota or error page?)")
        if status == 206 and have:
            first, total = _parse_content_range(resp.headers.get("Content-Range"))
            if first != have:
                # a resume at another offset cannot be appended: drop the partial file and start over
                part.unlink(missing_ok=True)
                raise _Short(f"server resumed at byte {first}, not {have}; restarting from scratch")
            mode, expected = "ab", total if total is not None else (have + body_len if body_len else size)
        elif status in (200, 203) or (status == 206 and not have):
            if have:
                log.info("%s: server ignored the Range request; restarting %s from scratch", url, part.name)
            have, mode, expected = 0, "wb", body_len if body_len is not None else size
        else:
            raise _TransferFailed(f"unexpected HTTP status {status}")
        if size is not None and expected is not None and expected != size:
            raise _TransferFailed(f"server announces {expected} bytes, expected {size}")
        if expected is not None and expected > lim.ceiling:
            raise _TransferFailed(f"server announces {expected} bytes, more than the {fmt_size(lim.ceiling)} "
                                  "ceiling for this file")
        check_space(part.parent, None if expected is None else expected - have, part.name[: -len(".part")])
        cap = expected if expected is not None else lim.ceiling
        with open(part, mode) as f, _bar(expected, part.name[: -len(".part")], progress) as bar:
            bar.update(have)
            got, too_long = _copy_body(resp, f, bar, have, cap, lim.stall, part)
    if too_long:
        part.unlink(missing_ok=True)
        what = f"the announced {expected} bytes" if expected is not None else f"the {fmt_size(cap)} ceiling"
        raise _TransferFailed(f"server sent more than {what} (the partial file was deleted)")
    if expected is not None and have + got < expected:
        raise _Short(f"connection closed after {have + got} of {expected} bytes")


def _transfer(url: str, part: Path, lim: _Limits, *, retries: int, backoff: float, progress: bool) -> None:
    """Fetch `url` into `part` until complete, resuming after drops; raise _TransferFailed when giving up."""
    size = lim.size
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise _TransferFailed(f"refusing non-HTTP URL scheme {scheme!r}")
    failures = 0
    best = part.stat().st_size if part.exists() else 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have > (size if size is not None else lim.ceiling):
            part.unlink()  # longer than the real file (or its ceiling): cannot be a prefix of it
            have = 0
        if size is not None and have == size:
            return  # complete from an earlier run; verified by the caller
        offline = stalled = False
        try:
            _stream(url, part, lim, progress)
            return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                _, total = _parse_content_range(e.headers.get("Content-Range") if e.headers else None)
                if total is not None and total == have:
                    return  # the partial file already holds every byte
                part.unlink(missing_ok=True)
                err = f"HTTP 416 for a resume at byte {have}; restarting from scratch"
            elif e.code in RETRY_HTTP_CODES:
                err = f"HTTP {e.code} {e.reason}"
            else:
                raise _TransferFailed(f"HTTP {e.code} {e.reason}") from e
        except _Short as e:
            err = str(e)
        except _Stalled as e:
            err, stalled = str(e), True
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            err, offline = _describe(e)
        now = part.stat().st_size if part.exists() else 0
        if now > best and not stalled:  # real progress: drops on a long transfer do not use up retries (a
            # trickle does: its few bytes are not progress)
            best, failures = now, 0
        else:
            failures += 1
        if failures > retries:
            raise _TransferFailed(f"{err} (gave up after {retries} retries)", offline=offline)
        delay = min(backoff * 2 ** max(failures - 1, 0), 60.0)
        log.warning("%s: %s; retrying in %.1f s (%d/%d)", url, err, delay, failures, retries)
        time.sleep(delay)


# ---------------------------------------------------------------------------------------------------------
# Fetch one file: reuse/verify what is there, download, verify, rename into place
# ---------------------------------------------------------------------------------------------------------

def _verify(path: Path, rf: RemoteFile, sha256: str | None, allow_unverified: bool, progress: bool
            ) -> dict[str, Any]:
    """Check `path` against the expected size and checksum; return the record stored in the marker."""
    actual = path.stat().st_size
    if rf.size is not None and actual != rf.size:
        raise _Mismatch(f"size is {actual} bytes, expected {rf.size}")
    use_md5 = sha256 is None and rf.md5 is not None
    digest, md5 = _hash_file(path, md5=use_md5, progress=progress)
    if sha256 is not None:
        if digest != sha256:
            raise _Mismatch(f"SHA-256 is {digest}, expected {sha256}")
        by = "sha256" if sha256 == rf.sha256 else "sha256 (given by the user)"
    elif rf.md5 is not None:
        if md5 != rf.md5:
            raise _Mismatch(f"MD5 is {md5}, expected the published {rf.md5}")
        by = "md5 (published; no SHA-256 is published)"
    elif allow_unverified:
        log.warning("%s: UNVERIFIED (no published checksum); its SHA-256 is %s", rf.name, digest)
        by = "unverified (--allow-unverified)"
    else:
        raise _Unverified(digest)
    return {"name": rf.name, "size": actual, "sha256": digest, "verified_by": by}


def _unverified_message(rf: RemoteFile, kept: Path, digest: str) -> str:
    return (
        f"{rf.name}: no SHA-256 or MD5 is published for this file ({rf.provenance or 'no provenance'}), so "
        f"tinyclap will not mark it verified. Its computed SHA-256 is {digest}; the bytes are kept at {kept}. "
        f"Rerun with --sha256 {digest} once you have checked that value against a source you trust, or "
        "with --allow-unverified to accept it as is; if these bytes are bad (e.g. a cut or replaced transfer), "
        "discard them and download again with --force."
    )



def fetch_file(rf: RemoteFile, dest: Path, sha256: str | None, opts: FetchOptions) -> dict[str, Any]:
    """Make `dest` hold the verified bytes of `rf` (`sha256` overrides its checksum); return its marker record."""
    expected = sha256 if sha256 is not None else rf.sha256
    part = dest.with_name(dest.name + ".part")
    with _lock(dest):
        if opts.force:  # start from scratch; an existing `dest` stays until verified new bytes replace it
            for p in (part, _unverified_path(dest)):
                p.unlink(missing_ok=True)
        else:
            rec = _reuse_existing(rf, dest, expected, opts)
            if rec is not None:
                return rec
        errors: list[str] = []
        rec, all_offline = _download_from_mirrors(rf, dest, expected, opts, errors)
        if rec is not None:
            return rec
    raise DownloadError(_failure_message(rf, dest, expected, errors, all_offline))


def _unverified_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".unverified")


def _reuse_existing(rf: RemoteFile, dest: Path, expected: str | None, opts: FetchOptions) -> dict[str, Any] | None:
    """The record of bytes already here (placed by the user, or left by an unverified run), else None."""
    unverified = _unverified_path(dest)
    for existing in (dest, unverified):
        if not existing.exists():
            continue
        try:
            rec = _verify(existing, rf, expected, opts.allow_unverified, opts.progress)
        except _Mismatch as e:
            if existing == unverified:
                unverified.unlink()
                raise DownloadError(f"{existing}: {e}; deleted, rerun to download again") from e
            raise DownloadError(f"{existing} exists but does not match: {e}. Delete it or pass --force "
                                "to download it again") from e
        except _Unverified as e:
            raise DownloadError(_unverified_message(rf, existing, e.sha256)) from e
        if existing != dest:
            os.replace(existing, dest)
        log.info("%s: using the existing file (%s)", dest, rec["verified_by"])
        if rec["verified_by"].startswith("unverified"):
            log.warning("%s: reusing UNVERIFIED bytes (SHA-256 %s); pass --force to download them again",
                        dest, rec["sha256"])
        return rec | {"url": None}
    return None


def _download_from_mirrors(rf: RemoteFile, dest: Path, expected: str | None, opts: FetchOptions,
                           errors: list[str]) -> tuple[dict[str, Any] | None, bool]:
    """Try each URL in order; (the marker record or None, whether every host was unreachable)."""
    part = dest.with_name(dest.name + ".part")
    all_offline = True
    for url in rf.urls:
        try:
            lim = _Limits(rf.size, rf.size or rf.max_size or opts.max_bytes, opts.timeout, opts.stall_timeout)
            _transfer(url, part, lim, retries=opts.retries, backoff=opts.backoff, progress=opts.progress)
        except _TransferFailed as e:
            errors.append(f"{url}: {e}")
            all_offline &= e.offline
            continue
        all_offline = False
        try:
            rec = _verify(part, rf, expected, opts.allow_unverified, opts.progress)
        except _Mismatch as e:
            part.unlink(missing_ok=True)  # wrong bytes are never kept, not even as a partial file
            errors.append(f"{url}: downloaded file rejected: {e}")
            continue
        except _Unverified as e:
            os.replace(part, _unverified_path(dest))
            raise DownloadError(_unverified_message(rf, _unverified_path(dest), e.sha256)) from e
        with open(part, "rb+") as f:  # durable before it is named: a power cut cannot leave a short `dest`
            os.fsync(f.fileno())
        os.replace(part, dest)  # only verified bytes ever get the final name
        fsync_folder(dest.parent)
        log.info("%s: downloaded and verified (%s)", dest, rec["verified_by"])
        return rec | {"url": url}, False
    return None, all_offline


def _failure_message(rf: RemoteFile, dest: Path, expected: str | None, errors: list[str], all_offline: bool) -> str:
    """Every mirror's error, where the partial file is, and how to install the file by hand when offline."""
    part = dest.with_name(dest.name + ".part")
    lines = "\n  ".join(errors)
    msg = f"could not download {rf.name}:\n  {lines}"
    if part.exists():
        msg += f"\nThe partial download is kept at {part}; rerunning resumes it."
    if all_offline:
        hosts = ", ".join(sorted({urllib.parse.urlsplit(u).netloc for u in rf.urls}))
        check = f"sha256 {expected}" if expected else (f"md5 {rf.md5}" if rf.md5 else "no published checksum")
        msg += (
            f"\nCould not reach {hosts}: this machine looks offline or the host is unreachable. Download "
            f"{rf.urls[0]} elsewhere and place it at {dest} (it is checked on the next run: "
            f"{fmt_size(rf.size) if rf.size else 'size unknown'}, {check}), or pass --root "
            f"(or set {ENV_HOME}) to a folder that already holds it."
        )
    return msg
