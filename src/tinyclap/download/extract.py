"""Safe, all-or-nothing extraction of zip and tar(.gz) archives.

Archives are validated member by member *before* anything is written (no absolute paths, no `..`, no links
leaving the target, no device files, no conflicting duplicates), extracted into a temporary folder beside
the target and renamed into place, so a bad archive leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tinyclap.download.fetch import CHUNK, check_space
from tinyclap.download.registry import DownloadError

__all__ = ["MAX_DEPTH", "MAX_EXTRACT_BYTES", "MAX_RATIO", "safe_extract"]

log = logging.getLogger("tinyclap.download")
_DRIVE = re.compile(r"^[A-Za-z]:")

# Decompression-bomb limits, checked from the archive's own listing before anything is written (and, for a
# tar.gz, while it is listed: the stream is stopped as soon as it is past them):
MAX_EXTRACT_BYTES = 100 << 30  # everything tinyclap's registry lists extracts to under 15 GB
MAX_RATIO = 200  # extracted / archive bytes: audio datasets compress ~1-2x; deflate's own maximum is ~1030x
MAX_DEPTH = 64  # folders in a member's path: real datasets use fewer than 10; 2,000 would overflow os.makedirs
MAX_NAME = 1024  # characters in a member's path (PATH_MAX is 4096 and the target adds its own)


@dataclass
class _Member:
    archive: Path
    raw: str
    path: str  # normalised, relative, "/"-separated
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    size: int = 0
    target: str = ""
    crc: int | None = None


def _bad(archive: Path, raw: str, problem: str) -> DownloadError:
    return DownloadError(f"{archive}: unsafe member {raw!r}: {problem}; nothing was extracted")


def _normalise(archive: Path, raw: str) -> str:
    """Relative POSIX path of a member name, refusing absolute paths and `..` components."""
    if "\x00" in raw:
        raise _bad(archive, raw, "NUL byte in name")
    name = raw.replace("\\", "/")  # backslashes are separators on Windows: treat them as such
    if name.startswith("/") or _DRIVE.match(name):
        raise _bad(archive, raw, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _bad(archive, raw[:200], "'..' path component (path traversal)")
    if len(parts) > MAX_DEPTH or len(name) > MAX_NAME:
        raise _bad(archive, raw[:80] + "...", f"{len(parts)} path components, {len(name)} characters "
                                              f"(at most {MAX_DEPTH} and {MAX_NAME})")
    return "/".join(parts)


def _check_sizes(archive: Path, total: int, limit: int) -> None:
    """Refuse an archive whose members add up to more than `limit` bytes or `MAX_RATIO` times its own size."""
    packed = max(archive.stat().st_size, 1)
    if total > limit:
        raise DownloadError(f"{archive}: members add up to {total} bytes, more than the {limit}-byte limit on "
                            "extraction; nothing was extracted")
    if total > MAX_RATIO * packed and total > (1 << 20):
        raise DownloadError(f"{archive}: members add up to {total} bytes from {packed} (ratio "
                            f"{total / packed:.0f}, at most {MAX_RATIO}): a decompression bomb? nothing was "
                            "extracted")


def _list_zip(archive: Path, limit: int = MAX_EXTRACT_BYTES) -> list[_Member]:
    members, total = [], 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                path = _normalise(archive, info.filename)
                if info.flag_bits & 0x1:
                    raise _bad(archive, info.filename, "encrypted member")
                mode = info.external_attr >> 16 if info.create_system == 3 else 0  # Unix mode bits
                ftype = stat.S_IFMT(mode)
                if info.is_dir() or ftype == stat.S_IFDIR:
                    members.append(_Member(archive, info.filename, path, "dir"))
                elif ftype == stat.S_IFLNK:
                    raise _bad(archive, info.filename, "symbolic link (not allowed in zip archives)")
                elif ftype not in (0, stat.S_IFREG):
                    raise _bad(archive, info.filename, "device, fifo or other special file")
                elif not path:
                    raise _bad(archive, info.filename, "empty file name")
                else:
                    members.append(_Member(archive, info.filename, path, "file", info.file_size, crc=info.CRC))
                    total += info.file_size
        _check_sizes(archive, total, limit)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        raise DownloadError(f"{archive}: not a readable zip archive ({e})") from e
    return members


def _list_tar(archive: Path, limit: int = MAX_EXTRACT_BYTES) -> list[_Member]:
    members, total = [], 0
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                path = _normalise(archive, m.name)
                if m.isreg():
                    if not path:
                        raise _bad(archive, m.name, "empty file name")
                    members.append(_Member(archive, m.name, path, "file", m.size))
                    total += m.size
                    _check_sizes(archive, total, limit)  # while listing: a bomb's stream is not read to its end
                elif m.isdir():
                    members.append(_Member(archive, m.name, path, "dir"))
                elif m.issym():
                    members.append(_Member(archive, m.name, path, "symlink", target=m.linkname))
                elif m.islnk():
                    target = _normalise(archive, m.linkname)
                    members.append(_Member(archive, m.name, path, "hardlink", target=target))
                else:
                    raise _bad(archive, m.name, "device, fifo or other special file")
                if m.issym() or m.islnk():
                    if not path:
                        raise _bad(archive, m.name, "link without a name")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DownloadError(f"{archive}: not a readable tar archive ({e})") from e
    return members


def _check_links_and_conflicts(members: list[_Member]) -> None:
    """Refuse links that leave the target or chain through other links, and conflicting duplicates."""
    links = {m.path for m in members if m.kind in ("symlink", "hardlink")}
    seen: dict[str, _Member] = {}
    for m in members:
        parts = m.path.split("/") if m.path else []
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in links:
                raise _bad(m.archive, m.raw, f"path goes through the link {prefix!r}")
            prior = seen.get(prefix)
            if prior is not None and prior.kind != "dir":
                raise _bad(m.archive, m.raw, f"{prefix!r} is also a {prior.kind} in {prior.archive.name}")
        if m.kind == "symlink":
            target = m.target.replace("\\", "/")
            if not target or target.startswith("/") or _DRIVE.match(target):
                raise _bad(m.archive, m.raw, f"symlink to absolute path {m.target!r}")
            # walk the target from the link's folder; leaving the root, or passing through another link
            # (whose own '..' would be resolved physically, not lexically), is refused
            stack = parts[:-1]
            for comp in target.split("/"):
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if not stack:
                        raise _bad(m.archive, m.raw, f"symlink to {m.target!r} points outside the target")
                    stack.pop()
                else:
                    stack.append(comp)
                    if "/".join(stack) in links:
                        raise _bad(m.archive, m.raw, f"symlink to {m.target!r} goes through another link")
        elif m.kind == "hardlink":
            tgt = seen.get(m.target)
            if tgt is None or tgt.kind != "file" or tgt.archive != m.archive:
                raise _bad(m.archive, m.raw, f"hard link to {m.target!r}, which is not an earlier file "
                                             "of the same archive")
        if not m.path:
            continue
        prior = seen.get(m.path)
        if prior is not None:
            same = (prior.kind == m.kind == "dir") or (
                prior.kind == m.kind == "file" and prior.size == m.size
                and (prior.crc is None or m.crc is None or prior.crc == m.crc)
            )
            if not same:
                raise _bad(m.archive, m.raw, f"conflicts with the {prior.kind} of the same name in "
                                             f"{prior.archive.name}")
        else:
            seen[m.path] = m
    for m in members:  # a file and a later member using it as a folder
        parts = m.path.split("/")
        for i in range(1, len(parts)):
            prior = seen.get("/".join(parts[:i]))
            if prior is not None and prior.kind != "dir":
                raise _bad(m.archive, m.raw, f"{prior.path!r} is a {prior.kind}, not a folder")


def _archive_type(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    return "tar"


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = _normalise(archive, info.filename)
            out = dest.joinpath(*path.split("/")) if path else dest
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            # own copy loop instead of ZipFile.extract: the path written is exactly the validated one
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        if hasattr(tarfile, "data_filter"):
            # second line of defence: the stdlib "data" filter re-checks every member against the real
            # filesystem (symlinks resolved) and drops permissions/ownership we do not want
            tf.extractall(dest, filter="data")
        else:  # Python < 3.10.12 / 3.11.4: our own validation above is the only guard
            tf.extractall(dest)


def _validated_members(paths: Sequence[Path], limit: int = MAX_EXTRACT_BYTES) -> list[_Member]:
    """Every member of every archive, checked (paths, depth, links, special files, conflicts, total size and
    compression ratio) before any write."""
    members: list[_Member] = []
    for a in paths:
        if not a.is_file():
            raise DownloadError(f"{a}: archive not found")
        members += _list_zip(a, limit) if _archive_type(a) == "zip" else _list_tar(a, limit)
    total = sum(m.size for m in members if m.kind == "file")
    if total > limit:
        raise DownloadError(f"{', '.join(map(str, paths))}: members add up to {total} bytes, more than the "
                            f"{limit}-byte limit on extraction; nothing was extracted")
    _check_links_and_conflicts(members)
    return members


def _extract_all(paths: Sequence[Path], tmp: Path) -> None:
    """Extract validated archives into the temporary folder `tmp`; any failure is a DownloadError."""
    for a in paths:
        try:
            if _archive_type(a) == "zip":
                _extract_zip(a, tmp)
            else:
                _extract_tar(a, tmp)
        except DownloadError:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
            raise DownloadError(f"{a}: extraction failed ({type(e).__name__}: {e}); nothing was "
                                "extracted") from e


def safe_extract(
    archives: Sequence[str | os.PathLike],
    dest: str | os.PathLike,
    *,
    replace: bool = False,
    expect: Sequence[str] = (),
    extra_files: Mapping[str, str] | None = None,
    max_bytes: int = MAX_EXTRACT_BYTES,
) -> Path:
    """Extract zip / tar(.gz) `archives` together into the folder `dest`, all or nothing.

    Every member of every archive is validated first; one unsafe member (absolute path, `..`, link leaving
    the target, device/fifo, conflicting duplicate) aborts before anything is written. Extraction happens
    in a temporary folder beside `dest` that is renamed to `dest` at the end and deleted on any error.
    `extra_files` (relative name -> text) are written into the folder before the rename (completion
    marker). An existing `dest` is replaced only with `replace=True`. Members adding up to more than
    `max_bytes`, or to more than `MAX_RATIO` times an archive's size, or nested deeper than `MAX_DEPTH`
    folders, are refused before anything is written. Returns `dest`.
    """
    dest = Path(dest)
    paths = [Path(a) for a in archives]
    if not paths:
        raise DownloadError(f"{dest}: no archive to extract")
    members = _validated_members(paths, max_bytes)
    if dest.exists() and not replace:
        raise DownloadError(f"{dest} already exists; pass --force to replace it")
    check_space(dest.parent, sum(m.size for m in members if m.kind == "file"), f"extracting into {dest}")

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    old: Path | None = None
    try:
        _extract_all(paths, tmp)
        missing = [p for p in expect if not tmp.joinpath(*p.split("/")).exists()]
        if missing:
            log.warning("%s: expected %s after extraction; the archive layout differs from what tinyclap "
                        "knows", dest, ", ".join(missing))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.replace(old / "x", dest)  # put the previous copy back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dest
