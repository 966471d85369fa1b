"""The one dataset grammar of the command line: `KIND:PATH[#folds=1,2&limit=N&subset=S]`.

`KIND` names a reader (any case); a prefix that is not a kind is part of the path (`C:/data` stays a
path). Options after the last `#` (only when it reads `key=value`, so a `#` in a file name stays in the
path):

- `folds=1,2` (also `1+2`): only these folds of a labelled dataset;
- `limit=N`: an evenly spread, deterministic subset of N clips (every (n/N)-th), for quick runs;
- `subset=auto|development|evaluation`: which TUT17 set.

Two readings of the same grammar: `parse_dataset_spec` (a labelled dataset, for eval, prune and
calibration) and `parse_data_spec` (the audio files of a distillation source, for cache and distill;
a bare folder is scanned, a bare file read as a manifest).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from tinyclap.data.files import DatasetError, abs_path, unique_sorted
from tinyclap.data.labelled import DATASET_NAMES, LabelledDataset, load_dataset
from tinyclap.data.sources import DATA_KINDS, list_audio_files

__all__ = [
    "SPEC_OPTIONS",
    "DatasetSpec",
    "limit_dataset",
    "load_eval_dataset",
    "parse_data_spec",
    "parse_dataset_spec",
    "parse_folds",
    "parse_spec",
    "spread",
]

SPEC_OPTIONS = ("folds", "limit", "subset")
_OPTION = re.compile(r"^[A-Za-z_]+=")  # what makes the text after '#' options rather than part of a path
T = TypeVar("T")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset on the command line: `NAME:PATH[#folds=1,2&limit=N&subset=...]` (name '' for a bare PATH)."""

    name: str
    root: str
    folds: tuple[int, ...] | None = None
    limit: int | None = None
    subset: str | None = None  # TUT17: auto | development | evaluation

    def label(self) -> str:
        """A short id for reports and file names, e.g. `us8k-f1_2`."""
        return self.name + (f"-f{'_'.join(map(str, self.folds))}" if self.folds else "")


def parse_folds(text: str) -> tuple[int, ...]:
    """`1,2` or `1+2` -> (1, 2); DatasetError for anything else."""
    try:
        folds = tuple(int(x) for x in re.split(r"[,+\s]", text) if x)  # '+' arrives as ' ' (URL query)
    except ValueError:
        raise DatasetError(f"folds must be integers separated by commas, got {text!r}") from None
    if not folds:
        raise DatasetError("empty fold list")
    return folds


def _parse_options(query: str, spec: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as e:
        raise DatasetError(f"dataset spec {spec!r}: bad options {query!r} ({e})") from None
    for k, v in pairs:
        if k == "folds":
            opts["folds"] = parse_folds(v)
        elif k == "limit":
            try:
                opts["limit"] = int(v)
            except ValueError:
                raise DatasetError(f"dataset spec {spec!r}: limit must be an integer, got {v!r}") from None
        elif k == "subset":
            opts["subset"] = v
        else:
            raise DatasetError(f"dataset spec {spec!r}: unknown option {k!r} (valid: {', '.join(SPEC_OPTIONS)})")
    return opts


def parse_spec(spec: str, kinds: Collection[str]) -> DatasetSpec:
    """Split `KIND:PATH#options` (KIND one of `kinds`, any case) or a bare `PATH#options`; no file access."""
    kind, sep, rest = spec.partition(":")
    name, target = (kind.lower(), rest) if sep and kind.lower() in kinds else ("", spec)
    root, hash_sign, query = target.rpartition("#")
    if hash_sign and not query:
        return DatasetSpec(name, root)  # a trailing '#': no options
    if not hash_sign or not _OPTION.match(query):
        return DatasetSpec(name, target)
    return DatasetSpec(name, root, **_parse_options(query, spec))


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """A labelled dataset: `esc50:/data/ESC-50-master`, `us8k:/data/UrbanSound8K#folds=1,2&limit=50`, ..."""
    s = parse_spec(spec, DATASET_NAMES)
    if not s.name:
        raise DatasetError(
            f"dataset spec {spec!r} must be NAME:PATH with NAME one of {', '.join(DATASET_NAMES)} "
            "(options after '#', e.g. us8k:/data/UrbanSound8K#folds=1,2&limit=100)"
        )
    if not s.root:
        raise DatasetError(f"dataset spec {spec!r}: empty path")
    return s


def spread(items: Sequence[T], limit: int | None) -> list[T]:
    """A deterministic, evenly spread subset of `limit` items (every (n/limit)-th); all of them for None."""
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    n = len(items)
    if limit is None or limit >= n:
        return list(items)
    return [items[i] for i in sorted({int(i * n / limit) for i in range(limit)})]


def limit_dataset(dataset: Any, limit: int | None) -> Any:
    """The dataset with an evenly spread subset of `limit` clips (itself when the limit does not cut)."""
    if limit is None or limit >= len(dataset.items):
        return dataset
    return replace(dataset, items=spread(dataset.items, limit))


def load_eval_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    folds: Iterable[int] | None = None,
    esc10: bool = False,
    subset: str | None = None,
    limit: int | None = None,
) -> LabelledDataset:
    """`load_dataset` with the evaluation options (ESC-10, TUT17 subset, limit); no clips is an error."""
    kw: dict[str, Any] = {}
    if folds is not None:
        kw["folds"] = list(folds)
    key = name.lower()
    if esc10:
        if key not in ("esc50", "esc10"):
            raise DatasetError(f"--esc10 only applies to ESC-50, not {name!r}")
        key = "esc10"
    if subset is not None:
        if not key.startswith("tut17"):
            raise DatasetError(f"a subset only applies to tut17, not {name!r}")
        kw["subset"] = subset
    ds = load_dataset(key, root, **kw)
    if not ds.items:
        raise DatasetError(
            f"{ds.root}: no clips to evaluate in {ds.name}" + (f" (folds {list(folds)})" if folds else "")
        )
    return limit_dataset(ds, limit)


def _bare_kind(path: Path, spec: str) -> str:
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "manifest"
    raise DatasetError(
        f"data spec {spec!r}: {path} does not exist (expected KIND:PATH or PATH; kinds: {', '.join(DATA_KINDS)})"
    )


def parse_data_spec(spec: str) -> list[Path]:
    """Audio files for `KIND:PATH[#options]` or a bare `PATH` (folder: recursive scan; file: manifest).

    `folds` and `subset` select clips of a labelled dataset; `limit` keeps an evenly spread subset.
    """
    s = parse_spec(spec, DATA_KINDS)
    if not s.root.strip():
        raise DatasetError(
            f"data spec {spec!r} has no path (expected KIND:PATH or PATH; kinds: {', '.join(DATA_KINDS)})"
        )
    path = abs_path(s.root)
    kind = s.name or _bare_kind(path, spec)
    if s.folds is not None or s.subset is not None:
        if kind not in DATASET_NAMES:
            raise DatasetError(f"data spec {spec!r}: folds and subset apply to {', '.join(DATASET_NAMES)} only")
        ds = load_eval_dataset(kind, path, folds=s.folds, subset=s.subset)
        files = unique_sorted(it.path for it in ds.items)
    else:
        files = list_audio_files(kind, path)
    if not files:
        raise DatasetError(f"data spec {spec!r}: no audio files found ({kind} at {path})")
    return spread(files, s.limit)
