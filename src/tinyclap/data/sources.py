"""Distillation sources: audio-only corpora (AudioCaps, Clotho, MACS, FSD50K, folders, manifests).

Each source yields a sorted, de-duplicated list of absolute audio paths: distillation only needs audio,
so each unique audio file is one item, however many captions or labels it has. The labelled datasets of
`tinyclap.data.labelled` are sources too (labels ignored). Layouts: see `tinyclap.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tinyclap.data.files import (
    DatasetError,
    FolderResolver,
    NameIndex,
    abs_path,
    listed_path,
    read_csv,
    report_missing,
    require_dir,
    unique_sorted,
    walk_audio,
)
from tinyclap.data.labelled import load_dataset

__all__ = [
    "DATA_KINDS",
    "audiocaps_files",
    "clotho_files",
    "fsd50k_files",
    "list_audio_files",
    "macs_files",
    "manifest_files",
    "scan_audio_folder",
]


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
    resolver = FolderResolver()
    found, missing = [], []
    for path, stems in listed:
        hit = resolver.resolve(path, stems)
        if hit is None:
            missing.append(path)
        else:
            found.append(hit)
    return _found(found, missing, what, source, missing_out)


def _found(
    found: Iterable[Path], missing: Iterable[Path], what: str, source: Path | str, missing_out: list[Path] | None
) -> list[Path]:
    """The unique found files; the missing ones are reported (and appended to `missing_out`)."""
    report_missing(what, sorted(set(missing)), source, missing_out)
    return unique_sorted(found)


def audiocaps_files(
    root: str | os.PathLike[str],
    splits: str | Sequence[str] = ("train",),
    *,
    missing_out: list[Path] | None = None,
) -> list[Path]:
    """AudioCaps clips (`<split>.csv` + `<split>/<youtube_id>.wav`): one path per clip, not per caption."""
    root = require_dir(root, "AudioCaps")
    listed: list[tuple[Path, Sequence[str]]] = []
    chosen = _splits(splits, ("train", "val", "test"), "AudioCaps")
    for split in chosen:
        meta = root / f"{split}.csv"
        for line, row in read_csv(meta, ["youtube_id"]):
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
    root = require_dir(root, "Clotho")
    listed: list[tuple[Path, Sequence[str]]] = []
    chosen = _splits(splits, ("development", "validation", "evaluation"), "Clotho")
    for split in chosen:
        meta = root / f"clotho_captions_{split}.csv"
        rows = read_csv(meta, ["file_name"])
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


def _macs_names(yaml_path: Path) -> list[str]:
    """The `files[*].filename` entries of a MACS.yaml."""
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
    return names


def macs_files(root: str | os.PathLike[str], *, missing_out: list[Path] | None = None) -> list[Path]:
    """MACS clips: `MACS.yaml` `files[*].filename`, found in `audio/` or by name anywhere under the folder."""
    path = abs_path(root)
    yaml_path = path if path.is_file() else path / "MACS.yaml"
    folder = yaml_path.parent
    names = _macs_names(yaml_path)
    resolver = FolderResolver()
    index: NameIndex | None = None
    found, missing = [], []
    for name in names:
        hit = resolver.resolve(folder / "audio" / os.path.basename(name)) or resolver.resolve(folder / name)
        if hit is None:
            if index is None:  # the TAU 2019 audio may sit anywhere under the folder: index it once
                index = NameIndex([folder])
            hit = index.find(name)
        if hit is None:
            missing.append(folder / "audio" / name)
        else:
            found.append(hit)
    return _found(found, missing, "MACS", yaml_path, missing_out)


def fsd50k_files(
    root: str | os.PathLike[str], *, include_eval: bool = False, missing_out: list[Path] | None = None
) -> list[Path]:
    """FSD50K dev clips (`FSD50K.ground_truth/dev.csv` + `FSD50K.dev_audio/`), optionally the eval set too."""
    root = require_dir(root, "FSD50K")
    listed: list[tuple[Path, Sequence[str]]] = []
    for split in ("dev", "eval") if include_eval else ("dev",):
        meta = root / "FSD50K.ground_truth" / f"{split}.csv"
        for line, row in read_csv(meta, ["fname"]):
            if not row["fname"]:
                raise DatasetError(f"{meta}:{line}: empty fname")
            listed.append((root / f"FSD50K.{split}_audio" / f"{row['fname']}.wav", ()))
    return _collect(listed, "FSD50K", f"{root / 'FSD50K.ground_truth'}", missing_out)


def scan_audio_folder(root: str | os.PathLike[str]) -> list[Path]:
    """Every audio file under `root` (recursive, follows links, skips hidden files and folders)."""
    return unique_sorted(walk_audio([require_dir(root, "audio")]))


def manifest_files(path: str | os.PathLike[str], *, missing_out: list[Path] | None = None) -> list[Path]:
    """Paths listed in a manifest: a `.csv`/`.tsv` with a `path` column, or a text file with one per line."""
    manifest = abs_path(path)
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: manifest file not found")
    entries: list[str] = []
    suffix = manifest.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = read_csv(manifest, ["path"], delimiter="\t" if suffix == ".tsv" else ",")
        entries = [row["path"] for _, row in rows if row["path"]]
    else:
        try:
            lines = manifest.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as e:
            raise DatasetError(f"{manifest}: not a UTF-8 text file ({e})") from e
        entries = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    listed = [(listed_path(entry, manifest.parent), ()) for entry in entries]
    return _collect(listed, "manifest", str(manifest), missing_out)


def _dataset_paths(name: str) -> Callable[[Path], list[Path]]:
    return lambda path: unique_sorted(it.path for it in load_dataset(name, path).items)


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
    return _SOURCES[kind](abs_path(path))
