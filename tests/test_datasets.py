"""Dataset readers: official layouts (generated in tmp_path), the real US8K subset, specs and errors."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_python, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinyclap.data as D
from tinyclap.data import DatasetError, DatasetWarning, Item

ROOT = Path(__file__).resolve().parents[1]


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def no_dataset_warnings() -> Iterator[None]:
    """Turn DatasetWarning into an error (for layouts where nothing is missing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        yield


# ----------------------------------------------------------------------------------------------- ESC-50

# (filename, fold, target, category, esc10); targets deliberately out of file order
ESC_ROWS = [
    ("1-100-A-1.wav", 1, 1, "rooster", True),
    ("1-101-A-0.wav", 1, 0, "dog", True),
    ("2-102-A-2.wav", 2, 2, "pig", False),
    ("3-103-A-3.wav", 3, 3, "crackling_fire", True),
    ("4-104-A-0.wav", 4, 0, "dog", True),
    ("5-105-A-2.wav", 5, 2, "pig", False),
]


def make_esc50(root: Path, rows=ESC_ROWS, header=None, skip_audio=()) -> Path:
    header = header or ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    write_csv(
        root / "meta" / "esc50.csv",
        header,
        [[f, fold, t, c, str(e), f.split(".")[0], "A"] for f, fold, t, c, e in rows],
    )
    for f, *_ in rows:
        if f not in skip_audio:
            touch(root / "audio" / f)
    return root


def test_esc50_classes_by_target_items_and_folds(tmp_path):
    root = make_esc50(tmp_path / "ESC-50-master")
    with no_dataset_warnings():
        ds = D.load_esc50(root)
    assert ds.name == "esc50" and ds.root == root
    assert ds.classes == ["dog", "rooster", "pig", "crackling_fire"]
    assert ds.class_names_for_prompts() == ["dog", "rooster", "pig", "crackling fire"]
    assert ds.folds == [1, 2, 3, 4, 5]
    assert ds.items[0] == Item(root / "audio" / "1-100-A-1.wav", 1, 1)
    assert [(it.path.name, it.label, it.fold) for it in ds.items] == [(f, t, fold) for f, fold, t, _, _ in ESC_ROWS]
    assert ds.missing == [] and len(ds) == 6
    # parent folder holding ESC-50-master/, fold selection keeps the class list
    sub = D.load_dataset("esc50", tmp_path, folds=[1, 4])
    assert sub.root == root and sub.classes == ds.classes
    assert [it.path.name for it in sub.items] == ["1-100-A-1.wav", "1-101-A-0.wav", "4-104-A-0.wav"]
    assert ds.select_folds([2, 5]).items == [it for it in ds.items if it.fold in (2, 5)]


def test_esc10_filter_reindexes_classes(tmp_path):
    root = make_esc50(tmp_path)
    for ds in (D.load_esc50(root, esc10=True), D.load_dataset("esc10", root), D.load_dataset("ESC-10", root)):
        assert ds.name == "esc10"
        assert ds.classes == ["dog", "rooster", "crackling_fire"]  # ESC-50 targets 0, 1, 3
        assert [(it.path.name, it.label) for it in ds.items] == [
            ("1-100-A-1.wav", 1),
            ("1-101-A-0.wav", 0),
            ("3-103-A-3.wav", 2),
            ("4-104-A-0.wav", 0),
        ]


def test_esc50_missing_audio_is_reported_not_fatal(tmp_path):
    root = make_esc50(tmp_path, skip_audio={"2-102-A-2.wav"})
    touch(root / "audio" / "5-105-A-2.flac")  # re-encoded: same stem, other extension
    (root / "audio" / "5-105-A-2.wav").unlink()
    with pytest.warns(DatasetWarning, match="1 file"):
        ds = D.load_esc50(root)
    assert ds.missing == [root / "audio" / "2-102-A-2.wav"]
    assert root / "audio" / "5-105-A-2.flac" in [it.path for it in ds.items]
    assert len(ds) == 5 and ds.classes[2] == "pig"  # the class stays even though a clip is missing


def test_esc50_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"meta/esc50\.csv: metadata file not found"):
        D.load_esc50(tmp_path)
    with pytest.raises(DatasetError, match="folder not found"):
        D.load_esc50(tmp_path / "nope")
    make_esc50(tmp_path, header=["filename", "fold", "category", "esc10", "src_file", "take", "x"])
    with pytest.raises(DatasetError, match=r"esc50\.csv: missing column\(s\) target"):
        D.load_esc50(tmp_path)
    bad = [("a.wav", 1, 0, "dog", True), ("b.wav", 1, 0, "cat", True)]
    make_esc50(tmp_path, rows=bad)
    with pytest.raises(DatasetError, match=r"esc50\.csv:3: target 0 is 'cat' here but 'dog'"):
        D.load_esc50(tmp_path)
    make_esc50(tmp_path, rows=[("a.wav", "one", 0, "dog", True)])
    with pytest.raises(DatasetError, match=r"esc50\.csv:2: column fold must be an integer, got 'one'"):
        D.load_esc50(tmp_path)
    make_esc50(tmp_path, rows=[("a.wav", 1, 0, "dog", "maybe")])
    with pytest.raises(DatasetError, match="column esc10 must be True or False"):
        D.load_esc50(tmp_path, esc10=True)


# ----------------------------------------------------------------------------------------------- US8K

US8K_CLASSES = [
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
]


def test_us8k_real_subset(us8k_root):
    with no_dataset_warnings():
        ds = D.load_us8k(us8k_root)
    assert ds.name == "us8k" and len(ds) == 2148 and ds.missing == []
    assert ds.classes == US8K_CLASSES
    assert ds.class_names_for_prompts()[0] == "air conditioner"
    assert ds.folds == [1, 2, 3]
    assert [sum(it.fold == f for it in ds.items) for f in (1, 2, 3)] == [873, 888, 387]
    assert len({it.label for it in ds.items}) == 10
    with open(us8k_root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(it.path.name, it.label, it.fold) for it in ds.items] == [
        (r["slice_file_name"], int(r["classID"]), int(r["fold"])) for r in rows
    ]
    assert all(it.path.suffix == ".ogg" and it.path.parent.name == f"fold{it.fold}" for it in ds.items)
    assert all(it.path.is_file() for it in ds.items[::100])
    assert len(D.load_us8k(us8k_root, folds=[3])) == 387


def test_us8k_csv_says_wav_and_lists_absent_folds(us8k_root, tmp_path):
    """The official CSV names .wav files in folds 1-10; the real subset has Ogg files in folds 1-3 only."""
    root = tmp_path / "UrbanSound8K"
    (root / "audio").mkdir(parents=True)
    for f in (1, 2, 3):  # link, never copy, the real recordings
        os.symlink(us8k_root / "audio" / f"fold{f}", root / "audio" / f"fold{f}")
    with open(us8k_root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [[r[0].replace(".ogg", ".wav"), *r[1:]] for r in reader]
    absent = [[f"9{k}-1-0-0.wav", "9", "0", "4", "1", str(fold), "1", "car_horn"] for k, fold in enumerate((4, 10))]
    write_csv(root / "metadata" / "UrbanSound8K.csv", header, rows + absent)

    with pytest.warns(DatasetWarning, match=r"UrbanSound8K: 2 file\(s\)"):
        ds = D.load_dataset("us8k", tmp_path)  # the parent folder is accepted too
    assert len(ds) == 2148 and ds.folds == [1, 2, 3]
    assert all(it.path.suffix == ".ogg" and it.path.exists() for it in ds.items)
    assert ds.missing == [
        root / "audio" / "fold4" / "90-1-0-0.wav",
        root / "audio" / "fold10" / "91-1-0-0.wav",
    ]
    assert ds.classes == US8K_CLASSES
    with no_dataset_warnings():  # rows of unselected folds are neither items nor missing
        sub = D.load_us8k(root, folds=[1, 2])
    assert len(sub) == 873 + 888 and sub.missing == []


def test_us8k_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"UrbanSound8K\.csv: metadata file not found"):
        D.load_us8k(tmp_path)
    write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", ["slice_file_name", "fsID", "fold", "class"], [])
    with pytest.raises(DatasetError, match=r"missing column\(s\) classID \(found: slice_file_name, fsID"):
        D.load_us8k(tmp_path)


# ----------------------------------------------------------------------------------------------- TUT17

DEV = "TUT-acoustic-scenes-2017-development"
EVAL = "TUT-acoustic-scenes-2017-evaluation"
# 8 clips: (file, scene); fold k = clips 2k-2, 2k-1
TUT_CLIPS = [
    ("a001_0_10.wav", "residential_area"),
    ("b002_10_20.wav", "beach"),
    ("c003_20_30.wav", "cafe/restaurant"),
    ("d004_0_10.wav", "city_center"),
    ("e005_0_10.wav", "tram"),
    ("f006_0_10.wav", "bus"),
    ("g007_0_10.wav", "park"),
    ("h008_0_10.wav", "office"),
]


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def make_tut_dev(folder: Path, audio_dir: Path | None = None, with_audio: bool = True) -> Path:
    write_lines(folder / "meta.txt", [f"audio/{f}\t{s}\t{f.split('_')[0]}" for f, s in TUT_CLIPS])
    setup = folder / "evaluation_setup"
    for k in range(1, 5):
        ev = TUT_CLIPS[2 * k - 2 : 2 * k]
        tr = [c for c in TUT_CLIPS if c not in ev]
        write_lines(setup / f"fold{k}_evaluate.txt", [f"audio/{f}\t{s}" for f, s in ev])
        write_lines(setup / f"fold{k}_train.txt", [f"audio/{f}\t{s}" for f, s in tr])
        write_lines(setup / f"fold{k}_test.txt", [f"audio/{f}" for f, _ in ev])
    if with_audio:
        for f, _ in TUT_CLIPS:
            touch((audio_dir or folder / "audio") / f)
    return folder


def test_tut17_development_folds(tmp_path):
    folder = make_tut_dev(tmp_path / DEV)
    with no_dataset_warnings():
        ds = D.load_tut17(folder)
    assert ds.name == "tut17-development" and ds.root == folder
    assert ds.classes == list(D.TUT17_CLASSES) and len(ds.classes) == 15
    assert ds.classes == sorted(ds.classes)
    assert ds.folds == [1, 2, 3, 4]
    assert [(it.path, ds.classes[it.label], it.fold) for it in ds.items] == [
        (folder / "audio" / f, s, k // 2 + 1) for k, (f, s) in enumerate(TUT_CLIPS)
    ]
    prompts = ds.class_names_for_prompts()
    assert "city center" in prompts and "cafe/restaurant" in prompts
    # parent folder, explicit subset, fold selection
    sub = D.load_dataset("tut17", tmp_path, subset="development", folds=[2])
    assert [it.path.name for it in sub.items] == ["c003_20_30.wav", "d004_0_10.wav"]


def test_tut17_development_test_list_falls_back_to_meta_labels(tmp_path):
    folder = make_tut_dev(tmp_path)
    (folder / "evaluation_setup" / "fold3_evaluate.txt").unlink()  # fold3_test.txt has paths only
    ds = D.load_tut17(folder)
    fold3 = [(it.path.name, ds.classes[it.label]) for it in ds.items if it.fold == 3]
    assert fold3 == [("e005_0_10.wav", "tram"), ("f006_0_10.wav", "bus")]
    assert len(ds) == 8


def test_tut17_evaluation_set(tmp_path):
    folder = tmp_path / EVAL
    files = [("1.wav", "library"), ("2.wav", "home"), ("3.wav", "beach")]
    write_lines(folder / "meta.txt", [f"audio/{f}\t{s}" for f, s in files])
    write_lines(folder / "evaluation_setup" / "test.txt", [f"audio/{f}" for f, _ in files])
    for f, _ in files:
        touch(folder / "audio" / f)
    ds = D.load_tut17(folder)
    assert ds.name == "tut17-evaluation" and ds.folds == [1]
    assert [(it.path.name, ds.classes[it.label], it.fold) for it in ds.items] == [(f, s, 1) for f, s in files]

    # labels only in evaluation_setup/evaluate.txt, in the reference code's headed shape
    (folder / "meta.txt").unlink()
    write_lines(
        folder / "evaluation_setup" / "evaluate.txt",
        ["filename\tclass"] + [f"audio/{f}\t{s}" for f, s in files],
    )
    assert [it.label for it in D.load_tut17(folder).items] == [it.label for it in ds.items]

    # only test.txt: no labels at all
    (folder / "evaluation_setup" / "evaluate.txt").unlink()
    with pytest.raises(DatasetError, match="no scene labels for the TUT17 evaluation set"):
        D.load_tut17(folder)


def test_tut17_parent_with_both_sets(tmp_path):
    make_tut_dev(tmp_path / DEV)
    write_lines(tmp_path / EVAL / "meta.txt", ["audio/1.wav\thome"])
    touch(tmp_path / EVAL / "audio" / "1.wav")
    with pytest.raises(DatasetError, match="holds both the TUT17 development and evaluation sets"):
        D.load_tut17(tmp_path)
    assert D.load_tut17(tmp_path, subset="evaluation").root == tmp_path / EVAL
    assert len(D.load_tut17(tmp_path, subset="development")) == 8
    with pytest.raises(DatasetError, match="the TUT17 evaluation set not found"):
        D.load_tut17(tmp_path / DEV, subset="evaluation")
    with pytest.raises(DatasetError, match="subset must be"):
        D.load_tut17(tmp_path, subset="dev")


def test_tut17_multi_part_extraction(tmp_path):
    """Each zip extracted into its own folder: meta in one part, the audio split across others."""
    meta_dir = make_tut_dev(tmp_path / f"{DEV}.meta" / DEV, with_audio=False)
    for k, (f, _) in enumerate(TUT_CLIPS):
        touch(tmp_path / f"{DEV}.audio.{k % 3 + 1}" / DEV / "audio" / f)
    with no_dataset_warnings():
        ds = D.load_tut17(tmp_path)
    assert ds.root == meta_dir and len(ds) == 8 and ds.folds == [1, 2, 3, 4]
    assert ds.items[1].path == tmp_path / f"{DEV}.audio.2" / DEV / "audio" / "b002_10_20.wav"
    (tmp_path / f"{DEV}.audio.3" / DEV / "audio" / "c003_20_30.wav").unlink()
    with pytest.warns(DatasetWarning, match="TUT17 development: 1 file"):
        ds = D.load_tut17(tmp_path)
    assert ds.missing == [meta_dir / "audio" / "c003_20_30.wav"]


def test_tut17_errors(tmp_path):
    with pytest.raises(DatasetError, match="a TUT17 dataset folder not found"):
        D.load_tut17(tmp_path)
    folder = make_tut_dev(tmp_path / "a")
    write_lines(folder / "evaluation_setup" / "fold2_evaluate.txt", ["audio/a001_0_10.wav\tresidential_area"])
    with pytest.raises(DatasetError, match=r"fold2_evaluate\.txt:1: audio/a001_0_10\.wav is also in fold 1"):
        D.load_tut17(folder)
    folder = make_tut_dev(tmp_path / "b")
    write_lines(folder / "evaluation_setup" / "fold1_evaluate.txt", ["audio/a001_0_10.wav\tbeach"])
    with pytest.raises(DatasetError, match=r"is 'beach' here but 'residential_area' in .*meta\.txt"):
        D.load_tut17(folder)
    write_lines(folder / "evaluation_setup" / "fold1_evaluate.txt", ["audio/a001_0_10.wav\tairport"])
    with pytest.raises(DatasetError, match=r"fold1_evaluate\.txt:1: unknown scene label 'airport'"):
        D.load_tut17(folder)
    folder = make_tut_dev(tmp_path / "c")
    (folder / "meta.txt").unlink()
    (folder / "evaluation_setup" / "fold4_evaluate.txt").unlink()
    with pytest.raises(DatasetError, match=r"fold4_test\.txt:1: .* has no scene label \(and there is no"):
        D.load_tut17(folder)


# ----------------------------------------------------------------------------------------------- CSV


def test_csv_dataset_relative_paths_classes_and_folds(tmp_path):
    touch(tmp_path / "data" / "clips" / "a.wav")
    touch(tmp_path / "data" / "clips" / "b.ogg")
    touch(tmp_path / "elsewhere" / "c.flac")
    rows = [
        ["clips/a.wav", "zebra", 2],
        ["clips/b.ogg", "ant", 1],
        [str(tmp_path / "elsewhere" / "c.flac"), "moth", ""],
    ]
    csv_path = write_csv(
        tmp_path / "data" / "labels.csv", ["path", "label", "fold", "extra"], [r + ["x"] for r in rows]
    )
    ds = D.load_dataset("csv", csv_path)
    assert ds.name == "labels" and ds.root == tmp_path / "data"
    assert ds.classes == ["ant", "moth", "zebra"]
    assert ds.items == [
        Item(tmp_path / "data" / "clips" / "a.wav", 2, 2),
        Item(tmp_path / "data" / "clips" / "b.ogg", 0, 1),
        Item(tmp_path / "elsewhere" / "c.flac", 1, None),
    ]
    assert ds.folds == [1, 2]
    given_order = D.load_csv_dataset(csv_path, classes=["zebra", "moth", "ant", "bee"], name="mine")
    assert given_order.name == "mine" and [it.label for it in given_order.items] == [0, 2, 1]
    assert [it.path.name for it in D.load_csv_dataset(csv_path, folds=[1]).items] == ["b.ogg"]

    no_fold = write_csv(tmp_path / "data" / "nofold.csv", ["label", "path"], [["ant", "clips/b.ogg"]])
    assert D.load_csv_dataset(no_fold).items == [Item(tmp_path / "data" / "clips" / "b.ogg", 0, None)]


def test_csv_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"x\.csv: metadata file not found"):
        D.load_csv_dataset(tmp_path / "x.csv")
    p = write_csv(tmp_path / "a.csv", ["file", "label"], [["a.wav", "dog"]])
    with pytest.raises(DatasetError, match=r"a\.csv: missing column\(s\) path \(found: file, label"):
        D.load_csv_dataset(p)
    p = write_csv(tmp_path / "b.csv", ["path", "label"], [["a.wav", "dog"], ["b.wav", " "]])
    with pytest.raises(DatasetError, match=r"b\.csv:3: empty label"):
        D.load_csv_dataset(p)
    p = write_csv(tmp_path / "c.csv", ["path", "label"], [["a.wav", "dog"]])
    with pytest.raises(DatasetError, match=r"c\.csv:2: label 'dog' is not in the given classes"):
        D.load_csv_dataset(p, classes=["cat"])
    with pytest.raises(DatasetError, match=r"c\.csv: no rows"):
        D.load_csv_dataset(write_csv(tmp_path / "c.csv", ["path", "label"], []))
    with pytest.raises(DatasetError, match=r"unknown dataset 'vggsound'; valid names: esc50, esc10, us8k, tut17, csv"):
        D.load_dataset("vggsound", tmp_path)


_name = st.text(alphabet="abcxyzAB019_- é", min_size=1, max_size=12).map(str.strip).filter(bool)
_label = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029\x85"),
        min_size=1,
        max_size=15,
    )
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(_name, st.sampled_from(D.AUDIO_EXTENSIONS), _label, st.none() | st.integers(1, 10)),
        min_size=1,
        max_size=8,
        unique_by=lambda r: r[0],
    ),
    subdir=st.booleans(),
)
def test_csv_dataset_round_trip(rows, subdir):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rel = [(f"sub/{n}{e}" if subdir else f"{n}{e}") for n, e, _, _ in rows]
        for r in rel:
            touch(base / r)
        csv_path = write_csv(
            base / "m.csv",
            ["fold", "label", "path"],
            [["" if fold is None else fold, label, r] for r, (_, _, label, fold) in zip(rel, rows)],
        )
        with no_dataset_warnings():
            ds = D.load_csv_dataset(csv_path)
        assert ds.classes == sorted({label for _, _, label, _ in rows})
        assert [(it.path, ds.classes[it.label], it.fold) for it in ds.items] == [
            (base / r, label, fold) for r, (_, _, label, fold) in zip(rel, rows)
        ]
        # and the same files as an audio-only manifest (CSV and text forms)
        assert D.parse_data_spec(f"csv:{csv_path}") == sorted({base / r for r in rel})
        write_lines(base / "list.txt", ["# comment", ""] + rel)
        assert D.parse_data_spec(str(base / "list.txt")) == sorted(base / r for r in rel)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.dictionaries(st.integers(0, 60), _label, min_size=1, max_size=6),
    clips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 10), st.integers(0, 5)), min_size=1, max_size=10),
    us8k=st.booleans(),
)
def test_esc50_us8k_round_trip(names, clips, us8k):
    """Random id -> name tables and folds written as ESC-50 / US8K CSVs come back ordered by id."""
    ids = sorted(names)
    rows = [(f"{k}-{n}.wav", fold, ids[pick % len(ids)]) for k, (n, fold, pick) in enumerate(clips)]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        if us8k:
            header = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
            table = [[f, 1, 0.0, 4.0, 1, fold, cid, names[cid]] for f, fold, cid in rows]
            write_csv(base / "metadata" / "UrbanSound8K.csv", header, table)
            paths = [base / "audio" / f"fold{fold}" / f for f, fold, _ in rows]
        else:
            header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
            table = [[f, fold, cid, names[cid], "False", 1, "A"] for f, fold, cid in rows]
            write_csv(base / "meta" / "esc50.csv", header, table)
            paths = [base / "audio" / f for f, _, _ in rows]
        for p in paths:
            touch(p)
        ds = D.load_us8k(base) if us8k else D.load_esc50(base)
        present = sorted({cid for _, _, cid in rows})
        assert ds.classes == [names[c] for c in present]
        assert ds.items == [Item(p, present.index(cid), fold) for p, (_, fold, cid) in zip(paths, rows)]


@settings(max_examples=20, deadline=None)
@given(
    ids=st.lists(st.text(alphabet="abcXYZ012-_", min_size=3, max_size=11), min_size=1, max_size=10),
    captions=st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=10),
)
def test_audiocaps_round_trip_one_item_per_clip(ids, captions):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rows = [[k, yid, 30, captions[k % len(captions)]] for k, yid in enumerate(ids + ids)]
        write_csv(base / "train.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)
        for yid in set(ids):
            touch(base / "train" / f"{yid}.wav")
        with no_dataset_warnings():
            assert D.audiocaps_files(base) == sorted(base / "train" / f"{yid}.wav" for yid in set(ids))


# ----------------------------------------------------------------------------------------------- sources


def test_audiocaps_dedup_missing_and_splits(tmp_path):
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    write_csv(
        tmp_path / "train.csv",
        header,
        [
            [1, "abc", 30, "a dog barks"],
            [2, "abc", 30, "a dog, barking"],
            [3, "def", 0, "rain"],
            [4, "gone", 0, "x"],
        ],
    )
    write_csv(tmp_path / "val.csv", header, [[5, "vvv", 10, "wind"]])
    write_csv(tmp_path / "test.csv", header, [[6, "ttt", 10, "cars"]])
    touch(tmp_path / "train" / "abc.wav")
    touch(tmp_path / "train" / "Ydef.flac")  # AudioSet-style name, re-encoded
    touch(tmp_path / "val" / "vvv.wav")
    missing: list[Path] = []
    with pytest.warns(DatasetWarning, match=r"AudioCaps: 1 file\(s\)"):
        files = D.audiocaps_files(tmp_path, missing_out=missing)
    assert files == [tmp_path / "train" / "Ydef.flac", tmp_path / "train" / "abc.wav"]
    assert missing == [tmp_path / "train" / "gone.wav"]
    with pytest.warns(DatasetWarning, match="2 file"):
        assert len(D.audiocaps_files(tmp_path, "all")) == 3
    assert D.audiocaps_files(tmp_path, "val") == [tmp_path / "val" / "vvv.wav"]
    with pytest.raises(DatasetError, match="AudioCaps splits must be among train, val, test"):
        D.audiocaps_files(tmp_path, ["dev"])
    with pytest.warns(DatasetWarning):
        assert D.parse_data_spec(f"audiocaps:{tmp_path}") == files


def test_clotho_dedup_and_audio_folders(tmp_path):
    header = ["file_name"] + [f"caption_{k}" for k in range(1, 6)]
    write_csv(
        tmp_path / "clotho_captions_development.csv",
        header,
        [["a b.wav", *"abcde"], ["c.wav", *"abcde"], ["a b.wav", *"vwxyz"]],
    )
    touch(tmp_path / "development" / "a b.wav")
    touch(tmp_path / "development" / "c.wav")
    with no_dataset_warnings():
        assert D.clotho_files(tmp_path) == [
            tmp_path / "development" / "a b.wav",
            tmp_path / "development" / "c.wav",
        ]
    write_csv(tmp_path / "clotho_captions_validation.csv", header, [["v.wav", *"abcde"]])
    touch(tmp_path / "clotho_audio_validation" / "v.wav")
    assert D.clotho_files(tmp_path, "validation") == [tmp_path / "clotho_audio_validation" / "v.wav"]
    assert len(D.parse_data_spec(f"CLOTHO:{tmp_path}")) == 2
    write_csv(tmp_path / "clotho_captions_evaluation.csv", header, [["e.wav", *"abcde"]])
    with pytest.raises(DatasetError, match=r"Clotho evaluation audio folder not found \(looked for evaluation/"):
        D.clotho_files(tmp_path, "all")
    # the reference code's layout: captions CSV beside data/
    ref = tmp_path / "ref"
    write_csv(ref / "clotho_captions_development.csv", header, [["r.wav", *"abcde"]])
    touch(ref / "data" / "r.wav")
    assert D.clotho_files(ref) == [ref / "data" / "r.wav"]


MACS_YAML = """\
files:
- filename: airport-lisbon-1000-40000-a.wav
  annotations:
  - annotator_id: 3
    sentence: people talking in a big hall
    tags: [adults talking, announcement]
  - annotator_id: 7
    sentence: an announcement over a loudspeaker
    tags: [announcement]
- filename: park-paris-92-2800-a.wav
  annotations:
  - annotator_id: 3
    sentence: birds singing
    tags: [birds singing]
- filename: tram-vienna-285-8639-a.wav
  annotations: []
"""


def test_macs_yaml_and_recursive_audio_search(tmp_path):
    (tmp_path / "MACS.yaml").write_text(MACS_YAML)
    tau = tmp_path / "TAU-urban-acoustic-scenes-2019-development" / "audio"
    touch(tau / "airport-lisbon-1000-40000-a.wav")
    touch(tmp_path / "audio" / "park-paris-92-2800-a.wav")
    missing: list[Path] = []
    with pytest.warns(DatasetWarning, match=r"MACS: 1 file\(s\)"):
        files = D.macs_files(tmp_path / "MACS.yaml", missing_out=missing)
    assert files == [tau / "airport-lisbon-1000-40000-a.wav", tmp_path / "audio" / "park-paris-92-2800-a.wav"]
    assert missing == [tmp_path / "audio" / "tram-vienna-285-8639-a.wav"]
    touch(tau / "tram-vienna-285-8639-a.wav")
    assert len(D.parse_data_spec(f"macs:{tmp_path}")) == 3

    (tmp_path / "MACS.yaml").write_text("files:\n- annotations: []\n")
    with pytest.raises(DatasetError, match=r"MACS\.yaml: files\[0\] has no 'filename:'"):
        D.macs_files(tmp_path)
    (tmp_path / "MACS.yaml").write_text("- just a list\n")
    with pytest.raises(DatasetError, match="expected a top-level 'files:' list"):
        D.macs_files(tmp_path)
    (tmp_path / "MACS.yaml").write_text("files: [unclosed\n")
    with pytest.raises(DatasetError, match="not valid YAML"):
        D.macs_files(tmp_path)


def test_fsd50k_dev_and_eval(tmp_path):
    gt = tmp_path / "FSD50K.ground_truth"
    write_csv(
        gt / "dev.csv",
        ["fname", "labels", "mids", "split"],
        [[64760, "Electric_guitar,Music", "/m/a", "train"], [16399, "Drill", "/m/b", "val"]],
    )
    write_csv(gt / "eval.csv", ["fname", "labels", "mids"], [[37199, "Speech", "/m/c"]])
    for f in ("64760", "16399"):
        touch(tmp_path / "FSD50K.dev_audio" / f"{f}.wav")
    touch(tmp_path / "FSD50K.eval_audio" / "37199.wav")
    dev = D.fsd50k_files(tmp_path)
    assert dev == [tmp_path / "FSD50K.dev_audio" / "16399.wav", tmp_path / "FSD50K.dev_audio" / "64760.wav"]
    assert D.fsd50k_files(tmp_path, include_eval=True) == dev + [tmp_path / "FSD50K.eval_audio" / "37199.wav"]
    assert D.parse_data_spec(f"fsd50k:{tmp_path}") == dev
    with pytest.raises(DatasetError, match=r"FSD50K\.ground_truth/dev\.csv: metadata file not found"):
        D.fsd50k_files(tmp_path / "FSD50K.dev_audio")


def test_folder_scan(tmp_path):
    touch(tmp_path / "b.WAV")
    touch(tmp_path / "x" / "y" / "a.flac")
    touch(tmp_path / "x" / "c.Mp3")
    touch(tmp_path / "x" / "d.aif")
    touch(tmp_path / "x" / "notes.txt")
    touch(tmp_path / ".hidden.wav")
    touch(tmp_path / ".cache" / "e.wav")
    os.symlink(tmp_path / "x", tmp_path / "x" / "y" / "loop")  # a link back up the tree
    os.symlink(tmp_path / "b.WAV", tmp_path / "x" / "same.wav")  # the same file under two names
    expected = [
        tmp_path / "b.WAV",
        tmp_path / "x" / "c.Mp3",
        tmp_path / "x" / "d.aif",
        tmp_path / "x" / "y" / "a.flac",
    ]
    assert D.scan_audio_folder(tmp_path) == expected
    assert D.parse_data_spec(str(tmp_path)) == expected
    assert D.parse_data_spec(f"folder:{tmp_path / 'x' / '..'}") == expected


def test_folder_scan_real_recordings(animals_dir):
    files = D.parse_data_spec(f"folder:{animals_dir}")
    assert [f.stem for f in files] == [
        "cat",
        "cow",
        "dog",
        "duck",
        "frog",
        "horse",
        "owl",
        "pig",
        "rooster",
        "sheep",
    ]


def test_manifest_text_and_csv(tmp_path):
    touch(tmp_path / "audio" / "a.wav")
    touch(tmp_path / "audio" / "b.ogg")
    elsewhere = touch(tmp_path.parent / f"{tmp_path.name}_other" / "c.mp3")
    lst = tmp_path / "lists" / "m.txt"
    write_lines(
        lst,
        [
            "# my clips",
            "",
            "../audio/a.wav",
            "  ../audio/b.ogg  ",
            str(elsewhere),
            "../audio/a.wav",
            "../audio/none.wav",
        ],
    )
    missing: list[Path] = []
    with pytest.warns(DatasetWarning, match=r"manifest: 1 file\(s\)"):
        files = D.manifest_files(lst, missing_out=missing)
    assert files == sorted([tmp_path / "audio" / "a.wav", tmp_path / "audio" / "b.ogg", elsewhere])
    assert missing == [tmp_path / "audio" / "none.wav"]
    man = write_csv(
        tmp_path / "m.csv",
        ["path", "caption"],
        [["audio/a.wav", "x"], ["audio/b.ogg", "y"], ["audio/a.wav", "z"]],
    )
    assert D.parse_data_spec(str(man)) == [tmp_path / "audio" / "a.wav", tmp_path / "audio" / "b.ogg"]
    assert D.parse_data_spec(f"manifest:{man}") == D.manifest_files(man)
    tsv = tmp_path / "m.tsv"
    tsv.write_text("caption\tpath\nx\taudio/b.ogg\n")
    assert D.manifest_files(tsv) == [tmp_path / "audio" / "b.ogg"]
    with pytest.raises(DatasetError, match=r"m2\.csv: missing column\(s\) path"):
        D.manifest_files(write_csv(tmp_path / "m2.csv", ["file"], [["a.wav"]]))


def test_labelled_datasets_as_sources(tmp_path, us8k_root):
    root = make_esc50(tmp_path / "esc")
    assert D.parse_data_spec(f"esc50:{root}") == sorted(root / "audio" / f for f, *_ in ESC_ROWS)
    make_tut_dev(tmp_path / DEV)
    assert len(D.parse_data_spec(f"tut17:{tmp_path / DEV}")) == 8
    files = D.parse_data_spec(f"us8k:{us8k_root}")
    assert len(files) == 2148 and files == sorted(files)


def test_one_spec_grammar_options(tmp_path):
    """`KIND:PATH#folds=..&limit=..` selects clips for sources too; a '#' without key=value is in the path."""
    root = make_esc50(tmp_path / "esc")
    fold1 = D.parse_data_spec(f"esc50:{root}#folds=1")
    assert fold1 == sorted(root / "audio" / f for f, fold, *_ in ESC_ROWS if fold == 1)
    assert D.parse_data_spec(f"esc50:{root}#folds=1+2&limit=2") == D.spread(
        D.parse_data_spec(f"esc50:{root}#folds=1,2"), 2
    )
    assert len(D.parse_data_spec(f"{root / 'audio'}#limit=3")) == 3
    hashed = tmp_path / "take#2"
    touch(hashed / "a.wav")
    assert D.parse_data_spec(str(hashed)) == [hashed / "a.wav"]
    with pytest.raises(DatasetError, match="unknown option 'fold'"):
        D.parse_data_spec(f"esc50:{root}#fold=1")
    with pytest.raises(DatasetError, match="folds and subset apply to"):
        D.parse_data_spec(f"folder:{root}#folds=1")
    s = D.parse_dataset_spec(f"ESC50:{root}#folds=2&limit=1")
    assert (s.name, s.root, s.folds, s.limit, s.label()) == ("esc50", str(root), (2,), 1, "esc50-f2")
    assert len(D.load_eval_dataset(s.name, s.root, folds=s.folds, limit=s.limit).items) == 1


def test_parse_data_spec_errors_and_odd_paths(tmp_path):
    odd = tmp_path / "clips:2024"  # not a kind, so the colon is part of the path
    touch(odd / "a.wav")
    assert D.parse_data_spec(str(odd)) == [odd / "a.wav"]
    with pytest.raises(DatasetError, match=r"does not exist \(expected KIND:PATH or PATH; kinds: audiocaps, clotho"):
        D.parse_data_spec(str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="has no path"):
        D.parse_data_spec("folder:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no audio files found \(folder at"):
        D.parse_data_spec(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DatasetError, match="folder not found"):
        D.parse_data_spec(f"audiocaps:{tmp_path / 'nope'}")
    with pytest.raises(DatasetError, match="unknown data kind 'vggsound'"):
        D.list_audio_files("vggsound", tmp_path)
    assert set(D.DATA_KINDS) == {
        "audiocaps",
        "clotho",
        "macs",
        "fsd50k",
        "folder",
        "manifest",
        "us8k",
        "esc50",
        "tut17",
        "csv",
    }


def test_labelled_dataset_checks_labels(tmp_path):
    with pytest.raises(DatasetError, match="label 2 of .* is not in 0..1"):
        D.LabelledDataset("x", tmp_path, ["a", "b"], [Item(tmp_path / "a.wav", 2)])


def test_docs_match_module_docstring():
    doc = D.__doc__
    start, end = "<!-- data-layouts:start -->", "<!-- data-layouts:end -->"
    section = doc[doc.index(start) : doc.index(end) + len(end)]
    md = (ROOT / "docs" / "data_layouts.md").read_text()
    assert section in md
    for kind in D.DATA_KINDS + D.DATASET_NAMES:
        assert f"`{kind}" in section


def test_module_does_not_import_torch():
    code = "import sys, tinyclap.data.spec; assert 'torch' not in sys.modules"  # spec imports every data module
    res = run_python(code)
    assert res.returncode == 0, res.stderr
