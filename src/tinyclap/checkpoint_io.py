"""Torch-free atomic file writing (used by the runtime and by the torch side alike).

A file is written to a temp file `.<name>.<random>.tmp` beside it, flushed, fsynced and renamed over the
target, so a crash, a kill or a write error leaves either the old file or the new one, never half of one.
A write error (disk full, permission denied, I/O error) removes the temp file and raises an `OSError` with
the same errno whose `filename` is the target, e.g. `[Errno 28] No space left on device: '.../last.json'`.
A SIGKILL can still leave an orphan temp file; nothing reads such names, and `remove_stale_temps` clears
them where a caller owns the folder.
"""

from __future__ import annotations

import errno as errno_mod
import io
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def _write_temp(path: Path, data: bytes) -> Path:
    """Write `data` to a new temp file beside `path` (flushed and fsynced); returns the temp path.

    Created with mode 0o666 minus the umask, like any new file: tempfile.mkstemp's private 0o600 would
    survive the rename and leave checkpoints unreadable to the other users of a shared machine.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _named(e: OSError, path: Path) -> OSError:
    """The same kind of OSError (same errno, so PermissionError stays one), naming the target file."""
    code = e.errno if e.errno is not None else errno_mod.EIO
    reason = e.strerror or str(e)
    text = f"{reason}; {path.name} was not written (any previous version is unchanged)"
    return OSError(code, text, str(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never half."""
    return atomic_write_files({path: data})[0]


def atomic_write_files(files: Mapping[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files (e.g. a checkpoint and its JSON) so that a write error changes none of them.

    Every temp file is written and fsynced before the first rename, so a full disk or a permission error
    leaves all the old files in place (and no temp file). Only a kill or an error *between* the renames
    (after all the data is safely on disk) can leave some files new and some old; the renames happen in
    the order given, so put the file that readers trust first.
    """
    paths = [Path(p) for p in files]
    temps: list[Path] = []
    try:
        for path, data in zip(paths, files.values()):
            try:
                temps.append(_write_temp(path, data))
            except OSError as e:
                raise _named(e, path) from e
        for k, (path, tmp) in enumerate(zip(paths, temps)):
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise _named(e, path) from e
            temps[k] = path  # renamed: no longer ours to remove
    except BaseException:
        for tmp, path in zip(temps, paths):
            if tmp != path:
                tmp.unlink(missing_ok=True)
        raise
    return paths


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """np.savez to `path` atomically (the suffix .npz is added if missing)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete orphan temp files `.<name>.<hex>.tmp` that a killed writer left in `folder` for `names`.

    Only for folders whose writer is this process (no concurrent writer's temp file may be removed).
    Returns the removed paths.
    """
    folder = Path(folder)
    removed = []
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            middle = tmp.name[len(name) + 2 : -4]
            # 8 chars: our hex suffix, or tempfile.mkstemp's (older tinyclap versions)
            if len(middle) == 8 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in middle):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed
