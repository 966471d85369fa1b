"""Small torch-free helpers shared by every stage: atomic writes, hashes, L2 normalisation, versions, the
device rule, lazy package exports and the one progress display.

Atomic writes (used by the runtime and by the torch side alike):

A file is written to a temp file `.<name>.<random>.tmp` beside it, flushed, fsynced and renamed over the
target, so a crash, a kill or a write error leaves either the old file or the new one, never half of one.
A write error (disk full, permission denied, I/O error) removes the temp file and raises an `OSError` with
the same errno whose `filename` is the target, e.g. `[Errno 28] No space left on device: '.../last.json'`.
A SIGKILL can still leave an orphan temp file; nothing reads such names, and `remove_stale_temps` clears
them where a caller owns the folder.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import hashlib
import importlib
import io
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where used: `import tinyclap` stays cheap
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
    import numpy as np

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


# ------------------------------------------------------------------------------------------- hashes, vectors


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_sha256(model: Any) -> str | None:
    """Hex SHA-256 over a torch module's state dict (names, dtypes, shapes, raw bytes); None for a non-module.

    The one weights identity used everywhere (cache configs, embedding-cache keys, fingerprints)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, without a copy
    return h.hexdigest()


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows (along `axis`) scaled to unit L2 norm; an all-zero row stays zero."""
    import numpy as np

    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def versions(*packages: str) -> dict[str, str]:
    """Versions of tinyclap, Python, numpy and the named packages that are installed (for reports)."""
    import importlib.metadata as md
    import platform

    import numpy as np

    import tinyclap

    out = {"tinyclap": tinyclap.__version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in packages:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def resolve_device(device: Any = "auto") -> Any:
    """The one device rule: 'auto'/None -> CUDA if available else CPU; a CUDA device without an index is
    this process's LOCAL_RANK (0 outside torchrun)."""
    import torch

    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive advisory lock on `folder/.lock` (POSIX flock; a no-op where fcntl does not exist),
    so processes sharing a folder (cache ranks, runs) take turns on its shared files. Yields the lock path."""
    path = Path(folder) / ".lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield path
        return
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # closing releases the flock


# ------------------------------------------------------------------------------------------ lazy exports


def lazy_exports(package: str, modules: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for a package that re-exports names lazily: `modules` maps a module
    (absolute, or relative to `package`) to the space-separated names it provides. Importing the package
    stays cheap (no torch until a name that needs it is touched)."""
    where = {name: mod for mod, names in modules.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__


# ---------------------------------------------------------------------------------------------- progress


class _LineProgress:
    """tqdm's update/set_postfix/close for logs: one plain line every `every` seconds and at the end."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, unit: str, every: float,
                 file: Any, initial: int = 0) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.every, self.file = every, file
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)  # type: ignore[arg-type]
        self.n, self.initial, self.postfix = initial, initial, ""
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        for x in self.iterable or ():
            yield x
            self.update(1)
        self.close()

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> str:
        dt = max(time.monotonic() - self.start, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        post = f" {self.postfix}" if self.postfix else ""
        rate = (self.n - self.initial) / dt
        return f"{self.desc}: {done} {self.unit}{pct}, {rate:.1f} {self.unit}/s, {dt:.0f} s{post}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self._line(), file=self.file, flush=True)

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def write(self, s: str) -> None:
        print(s, file=self.file, flush=True)

    def close(self) -> None:
        if self.file is not None:
            print(self._line(), file=self.file, flush=True)
            self.file = None


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, every: float = 30.0, file: Any = None, **tqdm_kw: Any) -> Any:
    """The one progress display: a tqdm bar on a terminal, a plain line every `every` seconds (and at the
    end) when the stream is a log, nothing when `enabled` is False. Supports iteration, update, set_postfix,
    close and use as a context manager either way."""
    stream = file if file is not None else sys.stderr
    if enabled and not _isatty(stream):
        return _LineProgress(iterable, total, desc, unit, every, stream, int(tqdm_kw.get("initial", 0)))
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, disable=not enabled, dynamic_ncols=True,
                **tqdm_kw)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
