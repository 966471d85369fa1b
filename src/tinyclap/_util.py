"""Small torch-free helpers shared by every stage: atomic writes, hashes, L2 normalisation, versions, the
device rule, lazy package exports and the one progress display.

Atomic writes (used by the runtime and by the torch side alike):

A file is written to a temp file `.<name>.<random>.tmp` beside it, flushed, fsynced and renamed over the
target, and then the folder is fsynced (so the rename itself is on disk), so a crash, a kill, a power cut or
a write error leaves either the old file or the new one, never half of one and never an empty one.
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


def fsync_folder(folder: str | os.PathLike) -> None:
    """fsync a folder so that the renames and creations inside it survive a power cut (POSIX; a no-op where a
    folder cannot be opened, e.g. Windows, or where the file system refuses to sync one)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and Windows) refuse fsync on a folder; the data itself is synced
        pass
    finally:
        os.close(fd)


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
        for folder in dict.fromkeys(p.parent for p in paths):
            fsync_folder(folder)  # the renames themselves reach the disk: no rollback to an old or empty file
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


# -------------------------------------------------------------------------------------------- strict JSON

MAX_JSON_BYTES = 64 << 20  # configs, manifests, markers: kilobytes; a cache's items.json: megabytes
MAX_JSON_DEPTH = 64  # ours nest 4 levels; deeper data would make recursive readers hit Python's recursion limit


class JSONFileError(ValueError):
    """A JSON file (or text) that is not what tinyclap wrote: the message names the source and the cause."""


def _too_deep(data: Any) -> bool:
    """True when containers nest deeper than `MAX_JSON_DEPTH` (walked with a stack, no recursion)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return True
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    x = float(text)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{text} overflows a float")
    return x


def loads_json(text: str | bytes, source: str | os.PathLike, *, expect: type | None = dict,
               finite: bool = True) -> Any:
    """Parse JSON strictly: at most `MAX_JSON_BYTES`, no NaN/Infinity, no number that overflows a float
    (`1e999`), and (by default) an object at the top. Any problem, deep nesting included (json's own
    RecursionError), is one `JSONFileError` line naming `source` and the cause, never a traceback.
    `finite=False` accepts the constants NaN/Infinity (Python's json writes them, e.g. a scheduler's initial
    best loss), never a literal that overflows (`1e999`, which no writer of ours produces): for files whose
    readers check every number they use."""
    import json

    if len(text) > MAX_JSON_BYTES:
        raise JSONFileError(f"{source}: JSON of {len(text)} bytes, more than the {MAX_JSON_BYTES} allowed")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        constant = {"parse_constant": _no_constant} if finite else {}
        data = json.loads(text, parse_float=_finite_float, **constant)  # 1e999 refused either way
    except RecursionError:
        raise JSONFileError(f"{source}: JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise JSONFileError(f"{source}: not valid JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                            ) from None
    if _too_deep(data):
        raise JSONFileError(f"{source}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    if expect is not None and not isinstance(data, expect):
        raise JSONFileError(f"{source}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                            f"got {type(data).__name__}")
    return data


def read_json(path: str | os.PathLike, *, expect: type | None = dict, finite: bool = True) -> Any:
    """`loads_json` of a regular file's bytes, its size checked before it is read (never a FIFO or device)."""
    import stat

    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise JSONFileError(f"{path}: not a regular file")
        if st.st_size > MAX_JSON_BYTES:
            raise JSONFileError(f"{path}: {st.st_size} bytes, more than the {MAX_JSON_BYTES} a JSON file may have")
        with open(path, "rb") as f:  # read what the file holds (+1: it grew), never a MAX_JSON_BYTES buffer
            data = f.read(min(st.st_size, MAX_JSON_BYTES) + 1)
    except OSError as e:
        raise JSONFileError(f"{path}: unreadable ({e.strerror or e})") from None
    return loads_json(data, path, expect=expect, finite=finite)


# ------------------------------------------------------------------------------------------- hashes, vectors


def display_path(path: str | bytes | os.PathLike) -> str:
    """A printable one-line form of any path: undecodable (non-UTF-8) bytes and control characters (newlines,
    escapes, ...) become backslash escapes, so a file name can never forge lines in a report."""
    text = os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


_SPECIAL_FILES = {0o010000: "a FIFO/named pipe", 0o020000: "a character device", 0o060000: "a block device",
                  0o140000: "a socket", 0o040000: "a directory"}


def read_regular_file(path: str | bytes | os.PathLike, max_bytes: int, *, size: int | None = None) -> bytes:
    """The bytes of `path`, refusing (ValueError "<path>: <problem>") anything but a regular file of at most
    `max_bytes` (and of exactly `size` bytes when given), checked on the open descriptor BEFORE reading: it is
    opened non-blocking, so a FIFO is refused at once instead of hanging, and /dev/zero is refused instead of
    filling memory. At most `max_bytes + 1` bytes are ever read (a file growing meanwhile is refused too)."""
    import stat

    shown = display_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ValueError(f"{shown}: cannot open ({e.strerror or e})") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _SPECIAL_FILES.get(stat.S_IFMT(st.st_mode), "a special file")
            raise ValueError(f"{shown}: not a regular file ({kind})")
        if st.st_size > max_bytes or (size is not None and st.st_size != size):
            expected = f"more than the {max_bytes} accepted" if size is None or size > max_bytes else (
                f"instead of the expected {size}")
            raise ValueError(f"{shown}: {st.st_size} bytes, {expected}")
        try:
            data = f.read(st.st_size + 1)  # one byte more than fstat says: a file growing meanwhile is seen
        except OSError as e:
            raise ValueError(f"{shown}: cannot read ({e.strerror or e})") from e
    if len(data) != st.st_size:
        raise ValueError(f"{shown}: changed while being read ({len(data)} bytes read)")
    return data


MAX_LIST_FILE_BYTES = 4 << 20  # a file of labels or templates: kilobytes


def read_list_file(path: str | os.PathLike, what: str) -> list[str]:
    """The entries of a small UTF-8 text file of `what` (labels, templates), one a line: stripped, blank lines
    and '#' comments skipped; type and size checked before reading (`read_regular_file`); ValueError naming
    the file when it is not such a file or lists nothing."""
    shown = display_path(path)
    try:
        text = read_regular_file(path, MAX_LIST_FILE_BYTES).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{shown}: {what} file is not UTF-8 text ({e.reason})") from e
    found = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not found:
        raise ValueError(f"{shown}: {what} file lists no {what} (one a line)")
    return found


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


def is_int_in(value: Any, lo: int, hi: int) -> bool:
    """True for a Python int (not a bool) in lo..hi: the check of a count read from a JSON file or a config."""
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def dataclass_kwargs(cls: Any, d: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `d` as constructor arguments of the dataclass `cls`; unknown keys are an error (a typo must not
    silently use a default)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid: {sorted(names)}")
    return dict(d)


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows (along `axis`) scaled to unit L2 norm; an all-zero row stays zero."""
    import numpy as np

    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def mean_embedding(windows: Iterable[np.ndarray], embed: Callable[[np.ndarray], np.ndarray], batch: int
                   ) -> np.ndarray:
    """(D,) float32: the renormalised mean of the unit embeddings of a stream of equal-length windows, `batch`
    windows embedded (and held) at a time: how a long file becomes one clip embedding in bounded memory."""
    import itertools

    import numpy as np

    total: np.ndarray | None = None
    pending: list[np.ndarray] = []
    for w in itertools.chain(windows, [None]):  # streamed: never a list of all windows
        if w is not None:
            pending.append(w)
        if pending and (w is None or len(pending) == batch):
            part = l2_normalize(np.asarray(embed(np.stack(pending)), dtype=np.float64)).sum(0)
            total = part if total is None else total + part
            pending.clear()
    if total is None:
        raise ValueError("no windows to embed")
    return l2_normalize(total).astype(np.float32)


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


class FolderBusy(BlockingIOError):
    """Another process holds a folder's lock; the message names the folder and the holder."""


def _command() -> str:
    return " ".join(sys.argv)[:300]


def _holder_text() -> str:
    import json
    import socket

    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "command": _command()}) + "\n"


def _holder(fd: int) -> str:
    """Who holds a lock, from what it wrote in the lock file ("pid 12 on host h since ..., `command`")."""
    try:
        info = loads_json(os.pread(fd, 4096, 0), "lock")
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} ({info.get('command')!s:.120})"
    except (OSError, ValueError):
        return "a process that has not written its name yet"


def _held_before_by_us(fd: int) -> bool:
    """True when the lock file already names this process (pid, host and command): taking the lock again
    leaves the file as it is, so a refused second attempt of one process changes no byte of the folder."""
    import socket

    try:
        info = loads_json(os.pread(fd, 4096, 0), "lock")
    except (OSError, ValueError):
        return False
    return (info.get("pid"), info.get("host"), info.get("command")) == (
        os.getpid(), socket.gethostname(), _command())


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, blocking: bool = True, name: str = ".lock",
                what: str = "this folder") -> Iterator[Path]:
    """Hold an exclusive advisory lock on `folder/<name>` (POSIX flock; a no-op where fcntl does not exist).
    Yields the lock path.

    Blocking (the default), processes sharing a folder (cache ranks) take turns on its shared files. With
    `blocking=False` a second process gets `FolderBusy` at once, naming the holder (its pid, host, start time
    and command, written into the lock file). A lock file left by a killed process is stale by construction:
    the kernel drops a flock when its holder dies, so the next process takes it over and rewrites the name.
    """
    path = Path(folder) / name
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield path
        return
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise FolderBusy(f"{folder}: {what} is in use by another tinyclap process ({_holder(fd)}); wait for "
                             f"it to finish or stop it (a killed holder's lock is released by itself)") from None
        if not blocking and not _held_before_by_us(fd):
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_text().encode(), 0)
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
        if self.file is not None and now - self.last >= self.every:
            self.last = now
            print(self._line(), file=self.file, flush=True)

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def write(self, s: str) -> None:
        print(s, file=self.file if self.file is not None else sys.stderr, flush=True)

    def close(self) -> None:
        if self.file is not None:
            print(self._line(), file=self.file, flush=True)
            self.file = None


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, every: float = 30.0, file: Any = None, **tqdm_kw: Any) -> Any:
    """The one progress display: a tqdm bar on a terminal, a plain line every `every` seconds (and at the
    end) when the stream is a log, nothing when `enabled` is False. Supports iteration, update, set_postfix,
    close and use as a context manager either way; without tqdm (the torch-free runtime install) plain lines on
    a terminal too."""
    stream = file if file is not None else sys.stderr
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or (enabled and not _isatty(stream)):
        return _LineProgress(iterable, total, desc, unit, every, stream if enabled else None,
                             int(tqdm_kw.get("initial", 0)))
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, disable=not enabled, dynamic_ncols=True,
                **tqdm_kw)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
