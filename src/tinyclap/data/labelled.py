"""Labelled evaluation datasets: ESC-50 (and ESC-10), UrbanSound8K, TUT Acoustic Scenes 2017, CSV.

`load_dataset(name, root, **kw)` returns a `LabelledDataset`: `classes` in class-index order, `items`
(`Item(path, label, fold)`), `folds`, and `missing` (metadata rows whose audio file is not on disk; they are
left out of `items`, with a warning). The accepted layouts are documented in `tinyclap.data` (and
`docs/data_layouts.md`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tinyclap.data.files import (
    DatasetError,
    FolderResolver,
    NameIndex,
    abs_path,
    listed_path,
    parse_bool,
    parse_int,
    read_csv,
    report_missing,
    require_dir,
)

__all__ = [
    "DATASET_NAMES",
    "TUT17_CLASSES",
    "Item",
    "LabelledDataset",
    "load_csv_dataset",
    "load_dataset",
    "load_esc50",
    "load_tut17",
    "load_us8k",
]

# DCASE 2017 task 1 scene labels as written in the metadata, alphabetical (the class-index order).
TUT17_CLASSES: tuple[str, ...] = (
    "beach",
    "bus",
    "cafe/restaurant",
    "car",
    "city_center",
    "forest_path",
    "grocery_store",
    "home",
    "library",
    "metro_station",
    "office",
    "park",
    "residential_area",
    "train",
    "tram",
)
_TUT17_DIR = {
    "development": "TUT-acoustic-scenes-2017-development",
    "evaluation": "TUT-acoustic-scenes-2017-evaluation",
}



@dataclass(frozen=True)
class Item:
    """One labelled clip: audio path, class index, and cross-validation fold (None when there is none)."""

    path: Path
    label: int
    fold: int | None = None


@dataclass(frozen=True)
class LabelledDataset:
    """A labelled evaluation set; `missing` lists metadata rows whose audio was not found (not in items)."""

    name: str
    root: Path
    classes: list[str]
    items: list[Item]
    missing: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.classes)
        bad = [it for it in self.items if not 0 <= it.label < n]
        if bad:
            raise DatasetError(f"{self.name}: label {bad[0].label} of {bad[0].path} is not in 0..{n - 1}")

    @property
    def folds(self) -> list[int]:
        """Sorted fold numbers present in `items` ([] when the dataset has no folds)."""
        return sorted({it.fold for it in self.items if it.fold is not None})

    def __len__(self) -> int:
        return len(self.items)

    def class_names_for_prompts(self) -> list[str]:
        """Class names with underscores turned into spaces, in class-index order.

        The reference tinyCLAP code kept the underscores for UrbanSound8K ("air_conditioner"); we don't.
        """
        return [c.replace("_", " ") for c in self.classes]

    def select_folds(self, folds: Iterable[int]) -> LabelledDataset:
        """The same dataset restricted to `folds` (classes unchanged, so labels keep their meaning)."""
        keep = set(folds)
        return replace(self, items=[it for it in self.items if it.fold in keep])


# --------------------------------------------------------------------------------------------- helpers


def _resolve_items(
    rows: Iterable[tuple[Path, int, int | None]],
    folds: Iterable[int] | None,
    what: str,
    source: Path | str,
    fallback: Callable[[Path], Path | None] | None = None,
) -> tuple[list[Item], list[Path]]:
    """Items for the (listed path, label, fold) rows of the selected folds whose audio is on disk.

    A listed file is found as written, by stem with another audio extension, or by `fallback`; the rest
    are returned as missing (and reported with a DatasetWarning).
    """
    keep = None if folds is None else {int(f) for f in folds}
    resolver = FolderResolver()
    items, missing = [], []
    for listed, label, fold in rows:
        if keep is not None and fold not in keep:
            continue
        found = resolver.resolve(listed)
        if found is None and fallback is not None:
            found = fallback(listed)
        if found is None:
            missing.append(listed)
        else:
            items.append(Item(found, label, fold))
    report_missing(what, missing, source)
    return items, missing


def _classes_by_id(
    rows: Iterable[tuple[int, int, str]], path: Path, id_col: str, name_col: str
) -> tuple[list[str], dict[int, int]]:
    """Class names ordered by id from (line, id, name) rows, and id -> class index; ids must be consistent."""
    names: dict[int, str] = {}
    for line, cid, name in rows:
        old = names.setdefault(cid, name)
        if old != name:
            raise DatasetError(f"{path}:{line}: {id_col} {cid} is {name!r} here but {old!r} earlier ({name_col})")
    ids = sorted(names)
    return [names[i] for i in ids], {cid: k for k, cid in enumerate(ids)}


def _find_meta(root: Path, rel: str, wrappers: Sequence[str]) -> Path:
    """`root/rel`, or `root/<wrapper>/rel` for a parent folder; the dataset folder is returned."""
    for base in (root, *(root / w for w in wrappers)):
        if (base / rel).is_file():
            return base
    return root


# --------------------------------------------------------------------------------------------- ESC-50


def load_esc50(
    root: str | os.PathLike[str], *, esc10: bool = False, folds: Iterable[int] | None = None
) -> LabelledDataset:
    """ESC-50 (or its ESC-10 subset) from `meta/esc50.csv` and `audio/`."""
    root = _find_meta(require_dir(root, "ESC-50"), "meta/esc50.csv", ["ESC-50-master"])
    meta = root / "meta" / "esc50.csv"
    required = ["filename", "fold", "target", "category"] + (["esc10"] if esc10 else [])
    parsed = []
    for line, row in read_csv(meta, required):
        if esc10 and not parse_bool(row["esc10"], meta, line, "esc10"):
            continue
        target = parse_int(row["target"], meta, line, "target")
        parsed.append((line, row["filename"], parse_int(row["fold"], meta, line, "fold"), target, row["category"]))
    if not parsed:
        raise DatasetError(f"{meta}: no {'ESC-10 ' if esc10 else ''}rows")
    classes, index = _classes_by_id(((ln, t, c) for ln, _, _, t, c in parsed), meta, "target", "category")
    name = "esc10" if esc10 else "esc50"
    rows = ((root / "audio" / filename, index[target], fold) for _, filename, fold, target, _ in parsed)
    items, missing = _resolve_items(rows, folds, name, meta)
    return LabelledDataset(name, root, classes, items, missing)


# --------------------------------------------------------------------------------------------- UrbanSound8K


def load_us8k(root: str | os.PathLike[str], *, folds: Iterable[int] | None = None) -> LabelledDataset:
    """UrbanSound8K from `metadata/UrbanSound8K.csv` and `audio/fold<N>/`.

    Files are resolved by stem when the extension differs from the CSV's (e.g. a copy re-encoded to Ogg);
    rows whose audio is absent (e.g. folds not downloaded) are reported in `missing`, not fatal.
    """
    root = _find_meta(require_dir(root, "UrbanSound8K"), "metadata/UrbanSound8K.csv", ["UrbanSound8K"])
    meta = root / "metadata" / "UrbanSound8K.csv"
    parsed = []
    for line, row in read_csv(meta, ["slice_file_name", "fold", "classID", "class"]):
        fold = parse_int(row["fold"], meta, line, "fold")
        cid = parse_int(row["classID"], meta, line, "classID")
        parsed.append((line, row["slice_file_name"], fold, cid, row["class"]))
    if not parsed:
        raise DatasetError(f"{meta}: no rows")
    classes, index = _classes_by_id(((ln, c, n) for ln, _, _, c, n in parsed), meta, "classID", "class")
    rows = ((root / "audio" / f"fold{fold}" / filename, index[cid], fold) for _, filename, fold, cid, _ in parsed)
    items, missing = _resolve_items(rows, folds, "UrbanSound8K", meta)
    return LabelledDataset("us8k", root, classes, items, missing)


# --------------------------------------------------------------------------------------------- TUT17


def _read_tab_list(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank lines of a DCASE list file as (line number, fields); a `filename...` header is skipped."""
    if not path.is_file():
        raise DatasetError(f"{path}: list file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e})") from e
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        if not out and fields[0].lower() == "filename":
            continue  # header, e.g. the reference code's "filename<TAB>class"
        out.append((line_no, fields))
    return out


def _tut17_label(value: str, path: Path, line: int) -> str:
    if value not in TUT17_CLASSES:
        raise DatasetError(
            f"{path}:{line}: unknown scene label {value!r} (expected one of: {', '.join(TUT17_CLASSES)})"
        )
    return value


def _tut17_labelled(path: Path) -> dict[str, tuple[str | None, int]]:
    """{listed path: (label or None, line)} from a meta/evaluate/test list."""
    out: dict[str, tuple[str | None, int]] = {}
    for line, fields in _read_tab_list(path):
        label = _tut17_label(fields[1], path, line) if len(fields) > 1 and fields[1] else None
        out.setdefault(fields[0], (label, line))
    return out


def _tut17_kind(folder: Path) -> str | None:
    """'development' / 'evaluation' for a TUT17 dataset folder, None when it is not one."""
    setup = folder / "evaluation_setup"
    if setup.is_dir() and any(setup.glob("fold*_*.txt")):
        return "development"
    if (folder / "meta.txt").is_file() or setup.is_dir():
        return "evaluation"
    return None


def _tut17_folder(root: Path, subset: str) -> tuple[Path, str]:
    kind = _tut17_kind(root)
    if kind is not None and subset in ("auto", kind):
        return root, kind
    found: dict[str, Path] = {}
    for sub, name in _TUT17_DIR.items():
        if subset not in ("auto", sub):
            continue
        candidates = [root / name, *sorted(root.glob(f"{name}*/{name}")), *sorted(root.glob(f"{name}*"))]
        for cand in candidates:
            if cand.is_dir() and _tut17_kind(cand) == sub:
                found[sub] = cand
                break
    if subset == "auto" and len(found) == 2:
        raise DatasetError(
            f"{root}: holds both the TUT17 development and evaluation sets; pass subset='development' "
            "or subset='evaluation', or point at one set's folder"
        )
    if not found:
        want = "a TUT17 dataset folder" if subset == "auto" else f"the TUT17 {subset} set"
        raise DatasetError(
            f"{root}: {want} not found (expected meta.txt and/or evaluation_setup/ here or in "
            f"{' or '.join(_TUT17_DIR[s] for s in _TUT17_DIR if subset in ('auto', s))}/)"
        )
    sub, folder = next(iter(found.items()))
    return folder, sub

def _tut17_fold_lists(setup: Path) -> dict[int, Path]:
    """Fold number -> its list file; evaluate lists (with labels) win over test lists."""
    fold_files: dict[int, Path] = {}
    for part in ("test", "evaluate"):
        for f in setup.glob(f"fold*_{part}.txt"):
            k = f.name[len("fold") : -len(f"_{part}.txt")]
            if k.isdigit():
                fold_files[int(k)] = f
    if not fold_files:
        raise DatasetError(f"{setup}: no fold<k>_evaluate.txt or fold<k>_test.txt lists")
    return fold_files


@dataclass
class _Tut17Rows:
    """Clips of the TUT17 lists, `listed path -> (label, fold, list file)`, labels checked against meta.txt."""

    meta_path: Path
    meta: dict[str, tuple[str | None, int]] | None
    rows: dict[str, tuple[str, int, Path]] = field(default_factory=dict)

    def add(self, lists: dict[str, tuple[str | None, int]], fold: int, src: Path) -> None:
        """Add one list's clips as fold `fold`; a clip in two folds or with conflicting labels is an error."""
        for listed, (label, line) in lists.items():
            if listed in self.rows:
                prior = self.rows[listed]
                raise DatasetError(f"{src}:{line}: {listed} is also in fold {prior[1]} ({prior[2]})")
            meta_label = self.meta.get(listed, (None, 0))[0] if self.meta is not None else None
            if label is not None and meta_label is not None and label != meta_label:
                raise DatasetError(
                    f"{src}:{line}: {listed} is {label!r} here but {meta_label!r} in {self.meta_path}"
                )
            label = label or meta_label
            if label is None:
                why = f"not in {self.meta_path}" if self.meta is not None else f"and there is no {self.meta_path}"
                raise DatasetError(f"{src}:{line}: {listed} has no scene label ({why})")
            self.rows[listed] = (label, fold, src)


def _tut17_rows(folder: Path, kind: str) -> dict[str, tuple[str, int, Path]]:
    """Every listed clip of a TUT17 set folder with its scene label and fold (see the module docs)."""
    setup = folder / "evaluation_setup"
    meta_path = folder / "meta.txt"
    acc = _Tut17Rows(meta_path, _tut17_labelled(meta_path) if meta_path.is_file() else None)
    if kind == "development":
        fold_files = _tut17_fold_lists(setup)
        for k in sorted(fold_files):
            acc.add(_tut17_labelled(fold_files[k]), k, fold_files[k])
    elif acc.meta is not None and all(label is not None for label, _ in acc.meta.values()):
        acc.add(acc.meta, 1, meta_path)
    elif (setup / "evaluate.txt").is_file():
        acc.add(_tut17_labelled(setup / "evaluate.txt"), 1, setup / "evaluate.txt")
    else:
        raise DatasetError(
            f"{folder}: no scene labels for the TUT17 evaluation set (need meta.txt with labels or "
            "evaluation_setup/evaluate.txt; evaluation_setup/test.txt lists paths only)"
        )
    if not acc.rows:
        raise DatasetError(f"{folder}: the TUT17 lists are empty")
    return acc.rows


def load_tut17(
    root: str | os.PathLike[str], *, subset: str = "auto", folds: Iterable[int] | None = None
) -> LabelledDataset:
    """TUT Acoustic Scenes 2017 development (4 folds) or evaluation set (fold 1); see the module docs."""
    if subset not in ("auto", "development", "evaluation"):
        raise DatasetError(f"TUT17 subset must be 'auto', 'development' or 'evaluation', got {subset!r}")
    root = require_dir(root, "TUT17")
    folder, kind = _tut17_folder(root, subset)
    rows = _tut17_rows(folder, kind)
    index: list[NameIndex] = []

    def in_parts(path: Path) -> Path | None:
        if not index:  # multi-part extraction: index the sibling parts once
            name = _TUT17_DIR[kind]
            index.append(NameIndex([folder, *(d for d in sorted(root.glob(f"{name}*")) if d.is_dir())]))
        return index[0].find(path.name)

    listed = ((folder / p, TUT17_CLASSES.index(label), fold) for p, (label, fold, _) in rows.items())
    items, missing = _resolve_items(listed, folds, f"TUT17 {kind}", folder, fallback=in_parts)
    return LabelledDataset(f"tut17-{kind}", folder, list(TUT17_CLASSES), items, missing)


# --------------------------------------------------------------------------------------------- CSV


def _csv_rows(csv_path: Path) -> list[tuple[int, str, str, int | None]]:
    """(line, path, label, fold) of a labelled CSV; empty paths and labels are errors."""
    rows = read_csv(csv_path, ["path", "label"])
    has_fold = bool(rows) and "fold" in rows[0][1]
    parsed = []
    for line, row in rows:
        if not row["path"]:
            raise DatasetError(f"{csv_path}:{line}: empty path")
        if not row["label"]:
            raise DatasetError(f"{csv_path}:{line}: empty label")
        fold = parse_int(row["fold"], csv_path, line, "fold") if has_fold and row.get("fold") else None
        parsed.append((line, row["path"], row["label"], fold))
    if not parsed:
        raise DatasetError(f"{csv_path}: no rows")
    return parsed


def load_csv_dataset(
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    folds: Iterable[int] | None = None,
    name: str | None = None,
) -> LabelledDataset:
    """A labelled CSV with columns `path,label` (optional `fold`); relative paths are from its folder."""
    csv_path = abs_path(path)
    parsed = _csv_rows(csv_path)
    if classes is None:
        class_list = sorted({label for _, _, label, _ in parsed})
    else:
        class_list = list(classes)
        if len(set(class_list)) != len(class_list):
            raise DatasetError(f"classes for {csv_path} contain duplicates: {class_list}")
    index = {c: k for k, c in enumerate(class_list)}
    for line, _, label, _ in parsed:
        if label not in index:
            raise DatasetError(f"{csv_path}:{line}: label {label!r} is not in the given classes {class_list}")
    rows = ((listed_path(rel, csv_path.parent), index[label], fold) for _, rel, label, fold in parsed)
    items, missing = _resolve_items(rows, folds, f"CSV dataset {csv_path.name}", csv_path)
    return LabelledDataset(name or csv_path.stem, csv_path.parent, class_list, items, missing)


_DATASETS: dict[str, Callable[..., LabelledDataset]] = {
    "esc50": load_esc50,
    "esc10": lambda root, **kw: load_esc50(root, esc10=True, **kw),
    "us8k": load_us8k,
    "tut17": load_tut17,
    "csv": load_csv_dataset,
}
DATASET_NAMES: tuple[str, ...] = tuple(_DATASETS)


def load_dataset(name: str, root: str | os.PathLike[str], **kw: Any) -> LabelledDataset:
    """Load an evaluation dataset by name (esc50, esc10, us8k, tut17, csv); `kw` go to its reader."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return _DATASETS[key](root, **kw)
