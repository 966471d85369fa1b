"""Dataset readers: labelled evaluation sets and audio-only distillation sources (pure file parsing).

Nothing here decodes audio or imports torch: readers turn official metadata files into lists of paths
(and labels), check that the audio exists, and report what is missing instead of crashing on it.

Two families:

* **Evaluation datasets** (`load_dataset("esc50" | "us8k" | "tut17" | "csv", root)`) return a
  `LabelledDataset`: `classes` in class-index order, `items` (`Item(path, label, fold)`), `folds`, and
  `missing` (metadata rows whose audio file is not on disk; they are left out of `items`, with a warning).
* **Distillation sources** (`parse_data_spec("KIND:PATH")`) return a sorted, de-duplicated list of audio
  paths: distillation only needs audio, so each unique audio file is one item, however many captions or
  labels it has.

Accepted layouts
================

The section below is Markdown, kept verbatim in `docs/data_layouts.md` (a test checks they match).

<!-- data-layouts:start -->
## Evaluation datasets: `load_dataset(name, root, **kw)`

Every reader takes the dataset folder as `root` (or, where noted, its parent) and reads only the files
listed here. Each listed audio file is resolved as written or, failing that, as the file with the same stem
and another audio extension (`.wav .flac .ogg .mp3 .aiff .aif .au`, any case) in the same folder. Rows
whose audio is absent go to `dataset.missing` (with a `DatasetWarning`), never into `items`. A missing
metadata file, a missing column or a malformed value raises `DatasetError` naming the file (and line).
`folds=[...]` keeps only those folds; `classes` never depend on `folds`, so label indices stay stable.

- **`esc50`** (ESC-50): `meta/esc50.csv` with columns `filename,fold,target,category` (the official file
  also has `esc10,src_file,take`) and `audio/<filename>`. `root` may be the folder holding
  `ESC-50-master/`. Classes: the 50 `category` names ordered by `target`. Folds: the `fold` column (1-5).
- **`esc10`** (= `esc50` with `esc10=True`): the rows whose `esc10` column is `True`; classes: the 10
  ESC-10 categories ordered by their ESC-50 `target`, re-indexed 0-9.
- **`us8k`** (UrbanSound8K): `metadata/UrbanSound8K.csv` with columns `slice_file_name,fold,classID,class`
  (the official file also has `fsID,start,end,salience`) and `audio/fold<fold>/<slice_file_name>`. `root`
  may be the folder holding `UrbanSound8K/`. Classes: the 10 `class` names ordered by `classID`. Folds:
  the `fold` column (1-10). Rows of folds that are not on disk are reported in `missing`.
- **`tut17`** (TUT Acoustic Scenes 2017, DCASE 2017 task 1): development set (folds 1-4) or evaluation
  set (fold 1), see below. Classes: the 15 scenes in alphabetical order (`TUT17_CLASSES`): beach, bus,
  cafe/restaurant, car, city_center, forest_path, grocery_store, home, library, metro_station, office,
  park, residential_area, train, tram.
- **`csv`** (generic): `root` is a comma-separated UTF-8 file (a BOM is fine) with a header row and
  columns `path,label`, optionally `fold` (an integer or empty); extra columns are ignored. `path` is
  relative to the CSV's folder unless absolute; `label` is the class name (surrounding whitespace
  stripped, never empty). Classes: the sorted unique labels, or the order of the `classes=[...]`
  argument (a label not in it is an error). Folds: the `fold` column, else none.

Class indices: ESC-50 and US8K labels are the position of the row's `target`/`classID` among the ids in
the whole CSV, i.e. the id itself for the official files. The reference tinyCLAP code sorted ESC-50 class
names alphabetically instead; zero-shot accuracy does not depend on the order.

Prompts: `LabelledDataset.class_names_for_prompts()` turns underscores into spaces for every dataset. The
reference tinyCLAP code did so for ESC-50 and TUT17 but kept the underscores for UrbanSound8K ("this is
the sound of air_conditioner"); we deliberately do not.

### TUT Acoustic Scenes 2017 (`tut17`, `subset="auto" | "development" | "evaluation"`)

- A dataset folder is one holding `meta.txt` and/or `evaluation_setup/`. It is the development set when
  it has `evaluation_setup/fold<k>_*.txt` lists, else the evaluation set. `root` may be that folder or a
  parent holding `TUT-acoustic-scenes-2017-development/` and/or `TUT-acoustic-scenes-2017-evaluation/`
  (`subset="auto"` refuses a parent holding both), merged or as multi-part extractions such as
  `TUT-acoustic-scenes-2017-development.meta/TUT-acoustic-scenes-2017-development/meta.txt` and
  `TUT-acoustic-scenes-2017-development.audio.1/TUT-acoustic-scenes-2017-development/audio/...`: an
  audio file not at `<dataset folder>/audio/<file>` is searched by name in the dataset folder and in every
  `TUT-acoustic-scenes-2017-<subset>*` folder under `root`.
- List files are tab-separated (whitespace-separated if a line has no tab), one clip per line, paths
  relative to the dataset folder (`audio/<file>.wav`). Blank lines and a first line whose first field is
  `filename` (a header) are skipped. Scene labels must be one of the 15 names above.
- `meta.txt`: `audio/<file>.wav<TAB><scene>[<TAB><recording id>]`.
- Development set: fold *k* is the clips of `evaluation_setup/fold<k>_evaluate.txt`
  (`audio/<file>.wav<TAB><scene>`), the official 4-fold cross-validation, so every clip is in exactly
  one fold. A fold without an evaluate list falls back to `fold<k>_test.txt` (paths only). Labels missing
  from a list come from `meta.txt`; a label contradicting `meta.txt`, or a clip in two folds, is an
  error. `fold<k>_train.txt` lists are not read (each is the complement of its evaluate list).
- Evaluation set (one fold, numbered 1): labels from `meta.txt`, else from
  `evaluation_setup/evaluate.txt` (`audio/<file>.wav<TAB><scene>`). `evaluation_setup/test.txt` has no
  labels, so a folder with only that is an error (the labels came out later, in the
  `TUT-acoustic-scenes-2017-evaluation.meta.zip` package).
- The reference tinyCLAP code read a tab-separated `evaluate.txt` with a `filename<TAB>class` header and
  ordered the classes by first appearance; such a file is accepted as the evaluation set's `meta.txt` or
  `evaluation_setup/evaluate.txt` (classes keep the alphabetical order).

## Distillation sources: `parse_data_spec("KIND:PATH")`, `list_audio_files(kind, path)`

A spec is `KIND:PATH` or a bare `PATH` (a folder is scanned recursively, a file is read as a manifest).
A source yields the sorted absolute paths of its audio files that exist, one per real file (captions,
labels and links to the same file do not multiply items); listed files missing on disk are left out with
a `DatasetWarning` (pass `missing_out=[]` to the functions to collect them). A spec that yields no audio
is an error. A prefix that is not a kind is part of the path (`C:/data` stays a path).

- **`audiocaps:DIR`** (`audiocaps_files(root, splits=("train",))`): `<split>.csv` for each split
  (`train`, `val`, `test` or `"all"`; the spec reads `train` only), column `youtube_id` (official columns
  `audiocap_id,youtube_id,start_time,caption`: several captions per clip, one item); audio at
  `<split>/<youtube_id>.wav` (or `Y<youtube_id>`, any audio extension).
- **`clotho:DIR`** (`clotho_files(root, splits=("development",))`): `clotho_captions_<split>.csv` for
  each split (`development`, `validation`, `evaluation` or `"all"`; the spec reads `development` only),
  column `file_name` (official `file_name,caption_1..caption_5`); audio in the first existing folder of
  `<split>/`, `clotho_audio_<split>/`, `data/` (the reference code's layout).
- **`macs:DIR`** or **`macs:DIR/MACS.yaml`** (`macs_files(root)`): `MACS.yaml`, a mapping whose `files:`
  list holds entries with `filename:` (and `annotations:` with `sentence`/`tags`/`annotator_id`, not
  needed here). Audio (TAU Urban Acoustic Scenes 2019 development clips) at `audio/<filename>`, else found
  by name anywhere under the folder (e.g. `TAU-urban-acoustic-scenes-2019-development/audio/`).
- **`fsd50k:DIR`** (`fsd50k_files(root, include_eval=False)`): `FSD50K.ground_truth/dev.csv`, column
  `fname` (official `fname,labels,mids,split`: both the train and val splits are used), audio at
  `FSD50K.dev_audio/<fname>.wav`; with `include_eval=True` also `FSD50K.ground_truth/eval.csv` and
  `FSD50K.eval_audio/`.
- **`folder:DIR`** or a bare folder (`scan_audio_folder(root)`): every file with an audio extension (any
  case), recursively, following links (each folder once), skipping hidden files and folders.
- **`manifest:FILE`** or a bare file (`manifest_files(path)`): a `.csv` (or tab-separated `.tsv`) with a
  `path` column, or any other text file with one path per line (blank lines and lines starting with `#`
  skipped). Relative paths resolve against the manifest's folder.
- **`esc50:DIR`**, **`us8k:DIR`**, **`tut17:DIR`**, **`csv:FILE`**: the item paths of that evaluation
  dataset read as above (labels ignored).
<!-- data-layouts:end -->
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "AUDIO_EXTENSIONS",
    "DATASET_NAMES",
    "DATA_KINDS",
    "TUT17_CLASSES",
    "DatasetError",
    "DatasetWarning",
    "Item",
    "LabelledDataset",
    "audiocaps_files",
    "clotho_files",
    "fsd50k_files",
    "list_audio_files",
    "load_csv_dataset",
    "load_dataset",
    "load_esc50",
    "load_tut17",
    "load_us8k",
    "macs_files",
    "manifest_files",
    "parse_data_spec",
    "scan_audio_folder",
]

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")

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


class DatasetError(ValueError):
    """Dataset metadata that cannot be used: missing file, missing column, malformed value."""


class DatasetWarning(UserWarning):
    """Something was left out (e.g. audio files listed in the metadata but absent on disk)."""


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


def _abs(path: str | os.PathLike[str]) -> Path:
    """Absolute, normalised (`..` removed) path without resolving symlinks."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _is_audio_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def _ext_rank(name: str) -> int:
    return AUDIO_EXTENSIONS.index(os.path.splitext(name)[1].lower())


def _require_dir(root: str | os.PathLike[str], what: str) -> Path:
    path = _abs(root)
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found")
    return path


class _FolderResolver:
    """Finds a listed audio file, or the file with the same stem and another audio extension.

    Why: the US8K subset in ../shared/data ships .ogg while its CSV says .wav, and people re-encode
    datasets. Each folder is listed once, which is much cheaper than a stat per candidate extension.
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
                            if _is_audio_name(entry.name):
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


class _NameIndex:
    """Audio files under some folders, found by file name or stem (for layouts that scatter the audio)."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self._by_name: dict[str, Path] = {}
        self._by_stem: dict[str, Path] = {}
        for path in _walk_audio(roots):
            self._by_name.setdefault(path.name, path)
            stem = path.stem
            old = self._by_stem.get(stem)
            if old is None or _ext_rank(path.name) < _ext_rank(old.name):
                self._by_stem[stem] = path

    def find(self, name: str) -> Path | None:
        base = os.path.basename(name)
        return self._by_name.get(base) or self._by_stem.get(os.path.splitext(base)[0])


def _walk_audio(roots: Iterable[Path]) -> list[Path]:
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
            found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and _is_audio_name(f))
    return found


def _read_csv(path: Path, required: Sequence[str], *, delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
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


def _int(value: str, path: Path, line: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}:{line}: column {column} must be an integer, got {value!r}") from None


def _bool(value: str, path: Path, line: int, column: str) -> bool:
    v = value.lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", ""):
        return False
    raise DatasetError(f"{path}:{line}: column {column} must be True or False, got {value!r}")


def _warn_missing(what: str, missing: Sequence[Path], source: Path | str) -> None:
    if missing:
        warnings.warn(
            f"{what}: {len(missing)} file(s) listed in {source} are not on disk and were left out "
            f"(first: {missing[0]})",
            DatasetWarning,
            stacklevel=3,
        )


def _select_folds(folds: Iterable[int] | None) -> set[int] | None:
    return None if folds is None else {int(f) for f in folds}


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
    root = _find_meta(_require_dir(root, "ESC-50"), "meta/esc50.csv", ["ESC-50-master"])
    meta = root / "meta" / "esc50.csv"
    required = ["filename", "fold", "target", "category"] + (["esc10"] if esc10 else [])
    parsed = []
    for line, row in _read_csv(meta, required):
        if esc10 and not _bool(row["esc10"], meta, line, "esc10"):
            continue
        target = _int(row["target"], meta, line, "target")
        parsed.append((line, row["filename"], _int(row["fold"], meta, line, "fold"), target, row["category"]))
    if not parsed:
        raise DatasetError(f"{meta}: no {'ESC-10 ' if esc10 else ''}rows")
    classes, index = _classes_by_id(((ln, t, c) for ln, _, _, t, c in parsed), meta, "target", "category")
    keep = _select_folds(folds)
    resolver = _FolderResolver()
    items, missing = [], []
    for _, filename, fold, target, _ in parsed:
        if keep is not None and fold not in keep:
            continue
        listed = root / "audio" / filename
        found = resolver.resolve(listed)
        if found is None:
            missing.append(listed)
        else:
            items.append(Item(found, index[target], fold))
    name = "esc10" if esc10 else "esc50"
    _warn_missing(name, missing, meta)
    return LabelledDataset(name, root, classes, items, missing)


# --------------------------------------------------------------------------------------------- UrbanSound8K


def load_us8k(root: str | os.PathLike[str], *, folds: Iterable[int] | None = None) -> LabelledDataset:
    """UrbanSound8K from `metadata/UrbanSound8K.csv` and `audio/fold<N>/`.

    Files are resolved by stem when the extension differs from the CSV's (the shared subset is Ogg); rows
    whose audio is absent (e.g. folds not downloaded) are reported in `missing`, not fatal.
    """
    root = _find_meta(_require_dir(root, "UrbanSound8K"), "metadata/UrbanSound8K.csv", ["UrbanSound8K"])
    meta = root / "metadata" / "UrbanSound8K.csv"
    parsed = []
    for line, row in _read_csv(meta, ["slice_file_name", "fold", "classID", "class"]):
        fold = _int(row["fold"], meta, line, "fold")
        parsed.append((line, row["slice_file_name"], fold, _int(row["classID"], meta, line, "classID"), row["class"]))
    if not parsed:
        raise DatasetError(f"{meta}: no rows")
    classes, index = _classes_by_id(((ln, c, n) for ln, _, _, c, n in parsed), meta, "classID", "class")
    keep = _select_folds(folds)
    resolver = _FolderResolver()
    items, missing = [], []
    for _, filename, fold, cid, _ in parsed:
        if keep is not None and fold not in keep:
            continue
        listed = root / "audio" / f"fold{fold}" / filename
        found = resolver.resolve(listed)
        if found is None:
            missing.append(listed)
        else:
            items.append(Item(found, index[cid], fold))
    _warn_missing("UrbanSound8K", missing, meta)
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


def load_tut17(
    root: str | os.PathLike[str], *, subset: str = "auto", folds: Iterable[int] | None = None
) -> LabelledDataset:
    """TUT Acoustic Scenes 2017 development (4 folds) or evaluation set (fold 1); see the module docs."""
    if subset not in ("auto", "development", "evaluation"):
        raise DatasetError(f"TUT17 subset must be 'auto', 'development' or 'evaluation', got {subset!r}")
    root = _require_dir(root, "TUT17")
    folder, kind = _tut17_folder(root, subset)
    setup = folder / "evaluation_setup"
    meta_path = folder / "meta.txt"
    meta = _tut17_labelled(meta_path) if meta_path.is_file() else None

    # listed path -> (label, fold, file, line)
    rows: dict[str, tuple[str, int, Path, int]] = {}

    def add(lists: dict[str, tuple[str | None, int]], fold: int, src: Path) -> None:
        for listed, (label, line) in lists.items():
            if listed in rows:
                raise DatasetError(f"{src}:{line}: {listed} is also in fold {rows[listed][1]} ({rows[listed][2]})")
            meta_label = meta.get(listed, (None, 0))[0] if meta is not None else None
            if label is not None and meta_label is not None and label != meta_label:
                raise DatasetError(f"{src}:{line}: {listed} is {label!r} here but {meta_label!r} in {meta_path}")
            label = label or meta_label
            if label is None:
                why = f"not in {meta_path}" if meta is not None else f"and there is no {meta_path}"
                raise DatasetError(f"{src}:{line}: {listed} has no scene label ({why})")
            rows[listed] = (label, fold, src, line)

    if kind == "development":
        fold_files: dict[int, Path] = {}
        for part in ("test", "evaluate"):  # evaluate lists (with labels) win over test lists
            for f in setup.glob(f"fold*_{part}.txt"):
                k = f.name[len("fold") : -len(f"_{part}.txt")]
                if k.isdigit():
                    fold_files[int(k)] = f
        if not fold_files:
            raise DatasetError(f"{setup}: no fold<k>_evaluate.txt or fold<k>_test.txt lists")
        for k in sorted(fold_files):
            add(_tut17_labelled(fold_files[k]), k, fold_files[k])
    else:
        if meta is not None and all(label is not None for label, _ in meta.values()):
            add(meta, 1, meta_path)
        elif (setup / "evaluate.txt").is_file():
            add(_tut17_labelled(setup / "evaluate.txt"), 1, setup / "evaluate.txt")
        else:
            raise DatasetError(
                f"{folder}: no scene labels for the TUT17 evaluation set (need meta.txt with labels or "
                "evaluation_setup/evaluate.txt; evaluation_setup/test.txt lists paths only)"
            )
    if not rows:
        raise DatasetError(f"{folder}: the TUT17 lists are empty")

    keep = _select_folds(folds)
    resolver = _FolderResolver()
    index: _NameIndex | None = None
    items, missing = [], []
    for listed, (label, fold, _, _) in rows.items():
        if keep is not None and fold not in keep:
            continue
        path = folder / listed
        found = resolver.resolve(path)
        if found is None:
            if index is None:  # multi-part extraction: search the sibling parts once
                name = _TUT17_DIR[kind]
                parts = [folder, *(d for d in sorted(root.glob(f"{name}*")) if d.is_dir())]
                index = _NameIndex(parts)
            found = index.find(listed)
        if found is None:
            missing.append(path)
        else:
            items.append(Item(found, TUT17_CLASSES.index(label), fold))
    _warn_missing(f"TUT17 {kind}", missing, folder)
    return LabelledDataset(f"tut17-{kind}", folder, list(TUT17_CLASSES), items, missing)


# --------------------------------------------------------------------------------------------- CSV


def load_csv_dataset(
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    folds: Iterable[int] | None = None,
    name: str | None = None,
) -> LabelledDataset:
    """A labelled CSV with columns `path,label` (optional `fold`); relative paths are from its folder."""
    csv_path = _abs(path)
    rows = _read_csv(csv_path, ["path", "label"])
    has_fold = bool(rows) and "fold" in rows[0][1]
    parsed = []
    for line, row in rows:
        if not row["path"]:
            raise DatasetError(f"{csv_path}:{line}: empty path")
        if not row["label"]:
            raise DatasetError(f"{csv_path}:{line}: empty label")
        fold = _int(row["fold"], csv_path, line, "fold") if has_fold and row.get("fold") else None
        parsed.append((line, row["path"], row["label"], fold))
    if not parsed:
        raise DatasetError(f"{csv_path}: no rows")
    if classes is None:
        class_list = sorted({label for _, _, label, _ in parsed})
    else:
        class_list = list(classes)
        if len(set(class_list)) != len(class_list):
            raise DatasetError(f"classes for {csv_path} contain duplicates: {class_list}")
    index = {c: k for k, c in enumerate(class_list)}
    keep = _select_folds(folds)
    resolver = _FolderResolver()
    items, missing = [], []
    for line, rel, label, fold in parsed:
        if label not in index:
            raise DatasetError(f"{csv_path}:{line}: label {label!r} is not in the given classes {class_list}")
        if keep is not None and fold not in keep:
            continue
        p = Path(os.path.expanduser(rel))
        listed = _abs(p if p.is_absolute() else csv_path.parent / p)
        found = resolver.resolve(listed)
        if found is None:
            missing.append(listed)
        else:
            items.append(Item(found, index[label], fold))
    _warn_missing(f"CSV dataset {csv_path.name}", missing, csv_path)
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


# --------------------------------------------------------------------------------------------- distillation


def _unique_sorted(paths: Iterable[Path]) -> list[Path]:
    """Sorted absolute paths, one per real file (two names of the same file through links count once)."""
    out, seen = [], set()
    for p in sorted({_abs(p) for p in paths}):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out


def _splits(splits: str | Sequence[str], valid: Sequence[str], what: str) -> list[str]:
    chosen = list(valid) if splits == "all" else [splits] if isinstance(splits, str) else list(splits)
    bad = [s for s in chosen if s not in valid]
    if bad or not chosen:
        raise DatasetError(f"{what} splits must be among {', '.join(valid)} or 'all', got {splits!r}")
    return chosen


def _collect(
    listed: Iterable[tuple[Path, Sequence[str]]], what: str, source: str, missing_out: list[Path] | None
) -> list[Path]:
    """Resolve (expected path, alternative stems) pairs; report the ones not on disk."""
    resolver = _FolderResolver()
    found, missing = [], []
    for path, stems in listed:
        hit = resolver.resolve(path, stems)
        if hit is None:
            missing.append(path)
        else:
            found.append(hit)
    missing = sorted(set(missing))
    if missing_out is not None:
        missing_out.extend(missing)
    _warn_missing(what, missing, source)
    return _unique_sorted(found)


def audiocaps_files(
    root: str | os.PathLike[str],
    splits: str | Sequence[str] = ("train",),
    *,
    missing_out: list[Path] | None = None,
) -> list[Path]:
    """AudioCaps clips (`<split>.csv` + `<split>/<youtube_id>.wav`): one path per clip, not per caption."""
    root = _require_dir(root, "AudioCaps")
    listed: list[tuple[Path, Sequence[str]]] = []
    chosen = _splits(splits, ("train", "val", "test"), "AudioCaps")
    for split in chosen:
        meta = root / f"{split}.csv"
        for line, row in _read_csv(meta, ["youtube_id"]):
            yid = row["youtube_id"]
            if not yid:
                raise DatasetError(f"{meta}:{line}: empty youtube_id")
            listed.append((root / split / f"{yid}.wav", (f"Y{yid}",)))
    return _collect(listed, "AudioCaps", f"{root} ({', '.join(s + '.csv' for s in chosen)})", missing_out)


def clotho_files(
    root: str | os.PathLike[str],
    splits: str | Sequence[str] = ("development",),
    *,
    missing_out: list[Path] | None = None,
) -> list[Path]:
    """Clotho v2 clips (`clotho_captions_<split>.csv` + `<split>/` or `clotho_audio_<split>/` or `data/`)."""
    root = _require_dir(root, "Clotho")
    listed: list[tuple[Path, Sequence[str]]] = []
    chosen = _splits(splits, ("development", "validation", "evaluation"), "Clotho")
    for split in chosen:
        meta = root / f"clotho_captions_{split}.csv"
        rows = _read_csv(meta, ["file_name"])
        audio_dirs = [root / split, root / f"clotho_audio_{split}", root / "data"]
        audio = next((d for d in audio_dirs if d.is_dir()), None)
        if audio is None:
            raise DatasetError(
                f"{root}: Clotho {split} audio folder not found "
                f"(looked for {', '.join(d.name + '/' for d in audio_dirs)})"
            )
        for line, row in rows:
            if not row["file_name"]:
                raise DatasetError(f"{meta}:{line}: empty file_name")
            listed.append((audio / row["file_name"], ()))
    return _collect(listed, "Clotho", f"{root} (clotho_captions_*.csv)", missing_out)


def macs_files(root: str | os.PathLike[str], *, missing_out: list[Path] | None = None) -> list[Path]:
    """MACS clips: `MACS.yaml` `files[*].filename`, found in `audio/` or by name anywhere under the folder."""
    path = _abs(root)
    yaml_path = path if path.is_file() else path / "MACS.yaml"
    folder = yaml_path.parent
    if not yaml_path.is_file():
        raise DatasetError(f"{yaml_path}: metadata file not found")
    try:
        import yaml  # PyYAML, a dependency of transformers; only MACS needs it
    except ImportError as e:  # pragma: no cover - transformers pulls it in
        raise DatasetError(f"{yaml_path}: reading MACS needs PyYAML (pip install pyyaml)") from e
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{yaml_path}: not valid YAML ({e})") from e
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        raise DatasetError(f"{yaml_path}: expected a top-level 'files:' list")
    names = []
    for k, entry in enumerate(files):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
            raise DatasetError(f"{yaml_path}: files[{k}] has no 'filename:'")
        names.append(entry["filename"])
    resolver = _FolderResolver()
    index: _NameIndex | None = None
    found, missing = [], []
    for name in names:
        hit = resolver.resolve(folder / "audio" / os.path.basename(name)) or resolver.resolve(folder / name)
        if hit is None:
            if index is None:  # the TAU 2019 audio may sit anywhere under the folder: index it once
                index = _NameIndex([folder])
            hit = index.find(name)
        if hit is None:
            missing.append(folder / "audio" / name)
        else:
            found.append(hit)
    missing = sorted(set(missing))
    if missing_out is not None:
        missing_out.extend(missing)
    _warn_missing("MACS", missing, yaml_path)
    return _unique_sorted(found)


def fsd50k_files(
    root: str | os.PathLike[str], *, include_eval: bool = False, missing_out: list[Path] | None = None
) -> list[Path]:
    """FSD50K dev clips (`FSD50K.ground_truth/dev.csv` + `FSD50K.dev_audio/`), optionally the eval set too."""
    root = _require_dir(root, "FSD50K")
    listed: list[tuple[Path, Sequence[str]]] = []
    for split in ("dev", "eval") if include_eval else ("dev",):
        meta = root / "FSD50K.ground_truth" / f"{split}.csv"
        for line, row in _read_csv(meta, ["fname"]):
            if not row["fname"]:
                raise DatasetError(f"{meta}:{line}: empty fname")
            listed.append((root / f"FSD50K.{split}_audio" / f"{row['fname']}.wav", ()))
    return _collect(listed, "FSD50K", f"{root / 'FSD50K.ground_truth'}", missing_out)


def scan_audio_folder(root: str | os.PathLike[str]) -> list[Path]:
    """Every audio file under `root` (recursive, follows links, skips hidden files and folders)."""
    return _unique_sorted(_walk_audio([_require_dir(root, "audio")]))


def manifest_files(path: str | os.PathLike[str], *, missing_out: list[Path] | None = None) -> list[Path]:
    """Paths listed in a manifest: a `.csv`/`.tsv` with a `path` column, or a text file with one per line."""
    manifest = _abs(path)
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: manifest file not found")
    entries: list[str] = []
    suffix = manifest.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = _read_csv(manifest, ["path"], delimiter="\t" if suffix == ".tsv" else ",")
        entries = [row["path"] for _, row in rows if row["path"]]
    else:
        try:
            lines = manifest.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as e:
            raise DatasetError(f"{manifest}: not a UTF-8 text file ({e})") from e
        entries = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    listed = []
    for entry in entries:
        p = Path(os.path.expanduser(entry))
        listed.append((_abs(p if p.is_absolute() else manifest.parent / p), ()))
    return _collect(listed, "manifest", str(manifest), missing_out)


def _dataset_paths(name: str) -> Callable[[Path], list[Path]]:
    return lambda path: _unique_sorted(it.path for it in load_dataset(name, path).items)


_SOURCES: dict[str, Callable[[Path], list[Path]]] = {
    "audiocaps": audiocaps_files,
    "clotho": clotho_files,
    "macs": macs_files,
    "fsd50k": fsd50k_files,
    "folder": scan_audio_folder,
    "manifest": manifest_files,
    "us8k": _dataset_paths("us8k"),
    "esc50": _dataset_paths("esc50"),
    "tut17": _dataset_paths("tut17"),
    "csv": _dataset_paths("csv"),
}
DATA_KINDS: tuple[str, ...] = tuple(_SOURCES)


def list_audio_files(kind: str, path: str | os.PathLike[str]) -> list[Path]:
    """Audio files of a distillation source of the given kind (see DATA_KINDS), sorted and unique."""
    if kind not in _SOURCES:
        raise DatasetError(f"unknown data kind {kind!r}; valid kinds: {', '.join(DATA_KINDS)}")
    return _SOURCES[kind](_abs(path))


def parse_data_spec(spec: str) -> list[Path]:
    """Audio files for a CLI spec `KIND:PATH` or a bare `PATH` (folder: recursive scan; file: manifest)."""
    kind, sep, rest = spec.partition(":")
    if sep and kind.lower() in _SOURCES:
        kind, target = kind.lower(), rest
    else:
        kind, target = "", spec
    if not target.strip():
        raise DatasetError(
            f"data spec {spec!r} has no path (expected KIND:PATH or PATH; kinds: {', '.join(DATA_KINDS)})"
        )
    path = _abs(target)
    if not kind:
        if path.is_dir():
            kind = "folder"
        elif path.is_file():
            kind = "manifest"
        else:
            raise DatasetError(
                f"data spec {spec!r}: {path} does not exist "
                f"(expected KIND:PATH or PATH; kinds: {', '.join(DATA_KINDS)})"
            )
    files = list_audio_files(kind, path)
    if not files:
        raise DatasetError(f"data spec {spec!r}: no audio files found ({kind} at {path})")
    return files
