"""Finding audio files and reading metadata files: the helpers every dataset reader shares.

Pure file parsing (no audio decoding, no torch). `AUDIO_EXTENSIONS` is the one list of audio file
suffixes in tinyclap: what libsndfile (through `soundfile`) decodes, used for folder scans everywhere.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "AUDIO_EXTENSIONS",
    "DatasetError",
    "DatasetWarning",
    "FolderResolver",
    "NameIndex",
    "abs_path",
    "is_audio_name",
    "listed_path",
    "parse_bool",
    "parse_int",
    "read_csv",
    "report_missing",
    "require_dir",
    "unique_sorted",
    "walk_audio",
]

# Suffixes soundfile/libsndfile decodes (WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, AU, Wave64, CAF), in the
# order of preference when one folder holds the same stem twice (the first seven are the historic order).
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".oga", ".opus", ".w64", ".caf",
)


class DatasetError(ValueError):
    """Dataset metadata that cannot be used: missing file, missing column, malformed value."""


class DatasetWarning(UserWarning):
    """Something was left out (e.g. audio files listed in the metadata but absent on disk)."""


def abs_path(path: str | os.PathLike[str]) -> Path:
    """Absolute, normalised (`..` removed) path without resolving symlinks."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def is_audio_name(name: str) -> bool:
    """True when the file name ends in one of `AUDIO_EXTENSIONS` (any case)."""
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def _ext_rank(name: str) -> int:
    return AUDIO_EXTENSIONS.index(os.path.splitext(name)[1].lower())


def listed_path(entry: str, base: Path) -> Path:
    """A path as written in a list file: `~` expanded, relative to `base` (the list's folder) unless absolute."""
    p = Path(os.path.expanduser(entry))
    return abs_path(p if p.is_absolute() else base / p)


def require_dir(root: str | os.PathLike[str], what: str) -> Path:
    """`root` as an absolute path; DatasetError naming `what` when it is not a folder."""
    path = abs_path(root)
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found")
    return path


def unique_sorted(paths: Iterable[Path]) -> list[Path]:
    """Sorted absolute paths, one per real file (two names of the same file through links count once)."""
    out, seen = [], set()
    for p in sorted({abs_path(p) for p in paths}):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out


class FolderResolver:
    """Finds a listed audio file, or the file with the same stem and another audio extension.

    Why: people re-encode datasets (e.g. a US8K copy in Ogg while its CSV says .wav). Each folder is
    listed once, which is much cheaper than a stat per candidate extension.
    """

    def __init__(self) -> None:
        self._dirs: dict[Path, tuple[set[str], dict[str, str]]] = {}

    def _index(self, folder: Path) -> tuple[set[str], dict[str, str]]:
        if folder not in self._dirs:
            names: set[str] = set()
            by_stem: dict[str, str] = {}
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.is_file():
                            names.add(entry.name)
                            if is_audio_name(entry.name):
                                stem = os.path.splitext(entry.name)[0]
                                old = by_stem.get(stem)
                                if old is None or _ext_rank(entry.name) < _ext_rank(old):
                                    by_stem[stem] = entry.name
            except OSError:  # absent, not a folder, unreadable or a name too long: its rows count as missing
                pass
            self._dirs[folder] = (names, by_stem)
        return self._dirs[folder]

    def resolve(self, path: Path, stems: Sequence[str] = ()) -> Path | None:
        """`path` if it exists, else `<folder>/<stem>.<audio ext>` for its stem (then for `stems`)."""
        names, by_stem = self._index(path.parent)
        if path.name in names:
            return path
        for stem in (path.stem, *stems):
            if stem in by_stem:
                return path.parent / by_stem[stem]
        return None


class NameIndex:
    """Audio files under some folders, found by file name or stem (for layouts that scatter the audio)."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self._by_name: dict[str, Path] = {}
        self._by_stem: dict[str, Path] = {}
        for path in walk_audio(roots):
            self._by_name.setdefault(path.name, path)
            stem = path.stem
            old = self._by_stem.get(stem)
            if old is None or _ext_rank(path.name) < _ext_rank(old.name):
                self._by_stem[stem] = path

    def find(self, name: str) -> Path | None:
        base = os.path.basename(name)
        return self._by_name.get(base) or self._by_stem.get(os.path.splitext(base)[0])


def walk_audio(roots: Iterable[Path]) -> list[Path]:
    """Audio files under `roots`, recursively, following links once, skipping hidden files and folders."""
    found: list[Path] = []
    seen: set[str] = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a link back up the tree, or two roots sharing a folder
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and is_audio_name(f))
    return found


def read_csv(path: Path, required: Sequence[str], *, delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
    """Rows of a headed CSV as (line number, {column: stripped value}); checks the required columns."""
    if not path.is_file():
        raise DatasetError(f"{path}: metadata file not found")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            absent = [c for c in required if c not in header]
            if absent:
                found = ", ".join(header) if header else "no header row"
                raise DatasetError(
                    f"{path}: missing column(s) {', '.join(absent)} (found: {found}; "
                    f"expected at least: {', '.join(required)})"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue  # blank line
                rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e})") from e
    except csv.Error as e:
        raise DatasetError(f"{path}: malformed CSV ({e})") from e
    return rows


def parse_int(value: str, path: Path, line: int, column: str) -> int:
    """`value` as an int; DatasetError naming the file, line and column otherwise."""
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}:{line}: column {column} must be an integer, got {value!r}") from None


def parse_bool(value: str, path: Path, line: int, column: str) -> bool:
    """True/False/1/0/yes/no/empty as a bool; DatasetError naming the file, line and column otherwise."""
    v = value.lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", ""):
        return False
    raise DatasetError(f"{path}:{line}: column {column} must be True or False, got {value!r}")


def report_missing(
    what: str, missing: Sequence[Path], source: Path | str, missing_out: list[Path] | None = None
) -> None:
    """Warn (DatasetWarning) that listed files are not on disk; also append them to `missing_out`."""
    if missing_out is not None:
        missing_out.extend(missing)
    if missing:
        warnings.warn(
            f"{what}: {len(missing)} file(s) listed in {source} are not on disk and were left out "
            f"(first: {missing[0]})",
            DatasetWarning,
            stacklevel=3,
        )
