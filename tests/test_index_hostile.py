"""Hostile folders and damaged files against `embed`/`search` (issue 20) and what search shows (issue 21):
manifests that are too deep, too big or hold 1e999, a FIFO and a non-UTF-8 name in the source folder,
damaged matrix files, a --model that did not build the index, numeric options, templates, --like leaving
the query out, labels on hits. Each case asserts a one-line error (no traceback) and an index still usable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import calibrated_models, distinct_sound, tinyclap_argv, write_wav

from tinyclap.index import Index, embed_sources

STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"


@pytest.fixture(scope="module")
def models(work: Path) -> dict[str, Path]:
    """A tiny random teacher and a student fitted to distinct sounds, saved with the teacher recorded."""
    from tinyclap.models import save_student

    waves = torch.from_numpy(np.stack([distinct_sound(i, 5.0) for i in range(10)]))
    _, student, _ = calibrated_models(waves, STUDENT, work / "teacher")
    ckpt = save_student(student, work / "student", teacher=str(work / "teacher.safetensors"))
    with torch.no_grad():  # the same architecture and size, other weights
        next(student.parameters()).add_(0.01)
    other = save_student(student, work / "other", teacher=str(work / "teacher.safetensors"))
    return {"teacher": work / "teacher.safetensors", "student": ckpt, "other": other}


@pytest.fixture(scope="module")
def built(models: dict[str, Path], work: Path) -> tuple[Path, list[Path]]:
    """An index of 5 distinct sounds (4 s each), built once; tests copy it before damaging it."""
    audio = work / "audio"
    audio.mkdir()
    files = [write_wav(audio / f"s{i}.wav", distinct_sound(i, 4.0)) for i in range(5)]
    embed_sources([audio], models["student"], work / "index", progress=False, workers=0)
    return work / "index", files


def _copy(index: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(index, to)
    return to


def _cli(*args: str, fresh: bool = False) -> subprocess.CompletedProcess:
    """`tinyclap ARGS`: in this process (fast), or with `fresh` in a new interpreter with a time limit."""
    if fresh:
        return subprocess.run(tinyclap_argv(*args), capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    import contextlib
    import io

    from tinyclap.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = int(e.code or 0)
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("tinyclap ")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("case", ["deep", "huge", "overflow", "nan"])
def test_hostile_index_manifest(built: tuple[Path, list[Path]], tmp_path: Path, case: str) -> None:
    """A manifest nested 100,000 deep, one of 3 GB (sparse), one holding 1e999 or NaN: one line, bounded."""
    index = _copy(built[0], tmp_path / "ix")
    man = index / "manifest.json"
    good = json.loads(man.read_text())
    if case == "deep":
        man.write_text("[" * 100_000 + "]" * 100_000)
    elif case == "huge":
        with open(man, "r+b") as f:
            f.truncate(3 << 30)  # sparse: no disk used, but a whole read would take 3 GB
    else:
        man.write_text(json.dumps(good)[:-1] + ', "x": ' + ("1e999" if case == "overflow" else "NaN") + "}")
    cap = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
    code = cap + "import sys; from tinyclap.cli import main; sys.exit(main(sys.argv[1:]))"
    res = subprocess.run([sys.executable, "-c", code, "search", str(index), "--like", str(built[1][0])],
                         capture_output=True, text=True, timeout=120)
    expect = {"deep": "nested more than", "huge": "more than the", "overflow": "1e999",
              "nan": "NaN is not a number"}[case]
    _one_line_error(res, "manifest.json", expect)


def test_ann_meta_and_export_manifest_refuse_non_finite(built: tuple[Path, list[Path]], tmp_path: Path) -> None:
    from tinyclap.deploy.runtime import EXPORT_FORMAT, ExportError, read_manifest
    from tinyclap.index.ann import _load

    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text(f'{{"format": "{EXPORT_FORMAT}", "sample_rate": 1e999}}')
    with pytest.raises(ExportError, match="1e999"):
        read_manifest(export)
    (export / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(ExportError, match="nested more than"):
        read_manifest(export)
    index = _copy(built[0], tmp_path / "ix")
    (index / "ann.faiss").write_bytes(b"x")
    (index / "ann.json").write_text('{"rows": 1e999}')
    with Index.open(index) as ix, pytest.raises(ValueError, match="1e999"):
        _load(ix)


def test_overflowing_numbers_refused_even_where_nan_is_read() -> None:
    """Run configs and checkpoints are read with finite=False (Python writes NaN for a scheduler's initial
    loss), yet `1e999` (which no writer of ours produces) is refused there too."""
    from tinyclap._util import JSONFileError, loads_json

    assert loads_json('{"best": NaN}', "config.json", finite=False)["best"] != 0
    with pytest.raises(JSONFileError, match="config.json: not valid JSON .1e999 overflows a float"):
        loads_json('{"embed_dim": 1e999}', "config.json", finite=False)


# ---------------------------------------------------------------------------------------- hostile folders


def test_fifo_in_source_folder_is_skipped_not_waited_on(models: dict[str, Path], tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    files = [write_wav(audio / f"s{i}.wav", distinct_sound(i, 3.0)) for i in range(2)]
    os.mkfifo(audio / "pipe.wav")
    res = _cli("embed", str(audio), "--model", str(models["student"]), "--out", str(tmp_path / "ix"),
               "--no-progress", fresh=True)
    assert res.returncode == 0, res.stderr
    assert f"skipped {audio / 'pipe.wav'}: not a regular file (a FIFO/named pipe)" in res.stderr
    assert "2 file(s) embedded" in res.stdout
    with Index.open(tmp_path / "ix") as ix:
        assert {r.path for r in ix.files("ok")} == {str(f) for f in files}
    # a known file replaced by a FIFO: the rerun's change check does not open it either
    os.unlink(files[0])
    os.mkfifo(files[0])
    res = _cli("embed", str(audio), "--model", str(models["student"]), "--out", str(tmp_path / "ix"),
               "--no-progress", fresh=True)
    assert res.returncode == 0 and "not a regular file" in res.stderr, res.stderr


def test_non_utf8_name_is_indexed_losslessly(models: dict[str, Path], tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    good = [write_wav(audio / f"s{i}.wav", distinct_sound(i, 3.0)) for i in range(2)]
    odd = os.path.join(os.fsencode(audio), b"caf\xe9-\xff.wav")  # Latin-1 bytes: not UTF-8
    write_wav(odd, distinct_sound(3, 3.0))
    out = tmp_path / "ix"
    for _ in range(2):  # the rerun finds everything unchanged (the stored name compares equal)
        res = _cli("embed", str(audio), "--model", str(models["student"]), "--out", str(out), "--no-progress",
                   "--json", "--strict")
        assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["unchanged"] == 3
    with Index.open(out) as ix:
        paths = {r.path for r in ix.files("ok")}
        assert paths == {str(p) for p in good} | {os.fsdecode(odd)}
        assert len(ix) == ix.rows == 3
        hit = ix.search(ix.matrices()["f16"][2].astype(np.float32), k=1)[0]
        assert os.fsencode(hit.path) in {os.fsencode(p) for p in paths}
    res = _cli("search", str(out), "--like", os.fsdecode(odd), "-k", "3", "--json")
    assert res.returncode == 0, res.stderr
    os.unlink(odd)  # a deleted odd name is dropped like any other
    res = _cli("embed", str(audio), "--model", str(models["student"]), "--out", str(out), "--no-progress", "--json")
    assert json.loads(res.stdout)["removed"] == 1


def test_failed_commit_leaves_matrix_and_table_agreeing(built: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """A transaction SQLite refuses rolls the matrix files back at once: rows in the files == rows committed."""
    import sqlite3

    index = _copy(built[0], tmp_path / "ix")
    with Index.open(index, readonly=False) as ix:
        rows, sizes = ix.rows, {p.name: p.stat().st_size for p in index.glob("*.f*")}
        row = np.zeros((1, ix.embed_dim), np.float32)
        row[0, 0] = 1.0
        bad = {"path": "/x.wav", "size": 1, "mtime_ns": 1, "sha256": None, "duration": 1.0, "status": object(),
               "error": None}
        with pytest.raises(sqlite3.Error):
            ix.append([(bad, [(0.0, 1.0)])], row)
        assert ix.rows == rows and {p.name: p.stat().st_size for p in index.glob("*.f*")} == sizes


# ---------------------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("case", ["nan_f16", "nan_scale", "random_u8", "flipped_f16_bit"])
def test_damaged_matrix_files_are_detected(built: tuple[Path, list[Path]], models: dict[str, Path],
                                           tmp_path: Path, case: str) -> None:
    index = _copy(built[0], tmp_path / "ix")
    with Index.open(index) as ix:
        dim, rows = ix.embed_dim, ix.rows
    name, offset, data = {
        "nan_f16": ("embeddings.f16", 2 * dim * 2 + 6, np.array([np.nan], np.float16).tobytes()),
        "nan_scale": ("scales.f32", 4 * 3, np.array([np.nan], np.float32).tobytes()),
        "random_u8": ("embeddings.u8", dim, np.random.default_rng(0).integers(0, 256, dim, np.uint8).tobytes()),
        "flipped_f16_bit": ("embeddings.f16", 2 * dim * (rows - 1), None),
    }[case]
    with open(index / name, "r+b") as f:
        f.seek(offset)
        if data is None:
            data = bytes([f.read(1)[0] ^ 0x01])
            f.seek(offset)
        f.write(data)
    res = _cli("search", str(index), "--like", str(built[1][0]))
    _one_line_error(res, "index damaged", "--overwrite")
    res = _cli("embed", str(built[1][0].parent), "--model", str(models["student"]), "--out", str(index),
               "--no-progress")
    _one_line_error(res, "index damaged")
    res = _cli("embed", str(built[1][0].parent), "--model", str(models["student"]), "--out", str(index),
               "--no-progress", "--overwrite")
    assert res.returncode == 0, res.stderr
    with Index.open(index) as ix:  # rebuilt: searchable again
        assert len(ix) == 5


# ---------------------------------------------------------------------------------------- search


def test_like_with_another_model_is_refused(built: tuple[Path, list[Path]], models: dict[str, Path]) -> None:
    index, files = built
    res = _cli("search", str(index), "--like", str(files[0]), "--model", str(models["other"]))
    _one_line_error(res, "not the model", "was built with", "--allow-other-model")
    res = _cli("search", str(index), "--like", str(files[0]), "--model", str(models["other"]), "--allow-other-model",
               "--json")
    assert res.returncode == 0 and "warning: " in res.stderr, res.stderr
    res = _cli("search", str(index), "--like", str(files[0]), "--model", str(models["student"]), "--json")
    assert res.returncode == 0, res.stderr  # the model that built it, named explicitly


def test_text_with_another_teacher_is_refused(built: tuple[Path, list[Path]], models: dict[str, Path],
                                              tmp_path: Path) -> None:
    from helpers import save_tiny_teacher

    from tinyclap.models.teacher import bundled_tokenizer_dir

    other = save_tiny_teacher(tmp_path / "teacher2", seed=1)
    tok = ["--tokenizer", str(bundled_tokenizer_dir())]
    res = _cli("search", str(built[0]), "a", "dog", "--teacher", str(other), *tok)
    _one_line_error(res, "not the teacher", "was built with", "--allow-other-model")
    res = _cli("search", str(built[0]), "a", "dog", "--teacher", str(other), *tok, "--allow-other-model")
    assert res.returncode == 0 and "warning: " in res.stderr, res.stderr
    res = _cli("search", str(built[0]), "a", "dog", "--teacher", str(models["teacher"]), *tok, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["hits"], res.stderr


@pytest.mark.parametrize("argv", [
    ["search", "IX", "--like", "F", "--min-score", "nan"],
    ["search", "IX", "--like", "F", "--min-score", "2"],
    ["embed", "F", "--model", "M", "--out", "O", "--window", "nan"],
    ["embed", "F", "--model", "M", "--out", "O", "--hop", "inf"],
    ["embed", "F", "--model", "M", "--out", "O", "--window", "1e9"],
    ["embed", "F", "--model", "M", "--out", "O", "--batch-size", "0"],
    ["embed", "F", "--model", "M", "--out", "O", "--workers", "-1"],
    ["export", "--model", "M", "--out", "O", "--parity-size", "-5"],
    ["export", "--model", "M", "--out", "O", "--eval-size", "0"],
    ["export", "--model", "M", "--out", "O", "--int8-search-target", "nan"],
    ["export", "--model", "M", "--out", "O", "--opset", "3"],
])
def test_numeric_options_are_validated(argv: list[str], capsys) -> None:
    from tinyclap.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "out of range" in err or "not a" in err, err


def test_like_leaves_itself_out_and_hits_show_labels(models: dict[str, Path], tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    files = [write_wav(audio / f"s{i}.wav", distinct_sound(i, 3.0)) for i in range(6)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(
        f"audio/{f.name},{'dog' if i % 2 else 'rain'}\n" for i, f in enumerate(files)))
    out = tmp_path / "ix"
    res = _cli("embed", f"csv:{tmp_path / 'labels.csv'}", "--model", str(models["student"]), "--out", str(out),
               "--no-progress")
    assert res.returncode == 0, res.stderr
    res = _cli("search", str(out), "--like", str(files[1]), "-k", "10", "--json")
    hits = json.loads(res.stdout)["hits"]
    assert len(hits) == 5 and str(files[1]) not in {h["path"] for h in hits}
    expect = {str(f): "dog" if i % 2 else "rain" for i, f in enumerate(files)}
    assert all(h["label"] == expect[h["path"]] for h in hits)
    res = _cli("search", str(out), "--like", str(files[1]), "-k", "1")
    line = res.stdout.splitlines()[2]
    assert line.endswith(f"[{expect[line.split()[3]]}]"), line


# ---------------------------------------------------------------------------------------- classify bounds


def _sparse_wav(path: Path, seconds: float, rate: int = 44100) -> Path:
    """A mono 16-bit WAV of `seconds` of silence that takes no disk space (its data is a hole)."""
    import struct

    data = int(seconds * rate) * 2
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)
    return path


@pytest.fixture(scope="module")
def classes(models: dict[str, Path], work: Path) -> Path:
    from tinyclap.zeroshot import ZeroShotClassifier

    return ZeroShotClassifier(["a", "b"], np.random.default_rng(0).standard_normal((2, 64)), 3.0).save(
        work / "classes.npz")


def test_classify_timeline_bounds(models: dict[str, Path], classes: Path, tmp_path: Path, capsys) -> None:
    from tinyclap.cli import main

    wav = write_wav(tmp_path / "short.wav", distinct_sound(1, 6.0))
    long = _sparse_wav(tmp_path / "long.wav", 1800.0)
    base = ["classify", "--model", str(models["student"]), "--classes", str(classes)]
    for opts in (["--hop", "1e-9"], ["--hop", "0.0001"], ["--hop", "nan"], ["--window", "3600"]):
        with pytest.raises(SystemExit) as e:  # refused by the parser: nothing printed before the error
            main([*base, str(wav), "--window", "5", *opts])
        out = capsys.readouterr()
        assert e.value.code == 2 and not out.out and ("out of range" in out.err or "not a number" in out.err)
    assert main([*base, str(wav), "--window", "600"]) == 1  # longer than the 6 s file: mostly padding
    out = capsys.readouterr()
    assert not out.out and "the window (600 s) is longer than the audio (6 s)" in out.err, out
    assert main([*base, str(long), str(wav), "--window", "5", "--hop", "0.01", "--json"]) == 0
    out = capsys.readouterr()  # 1800 s at a 0.01 s hop: 179,501 windows, refused before any work
    assert f"skipped {long}: 179501 windows" in out.err and "use a hop of at least 0.018" in out.err
    results = json.loads(out.out)["results"]
    assert [r["file"] for r in results] == [str(wav)] and len(results[0]["timeline"]["rows"]) == 101


_PEAK = """import resource, sys
from tinyclap.cli import main
rc = main(sys.argv[1:])
print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)
sys.exit(rc)
"""


def _peak_mb(*argv: str) -> int:
    res = subprocess.run([sys.executable, "-c", _PEAK, *argv], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    return int(res.stderr.rsplit("PEAK", 1)[1].split()[0])


@pytest.mark.slow
def test_whole_file_paths_stream_long_files(built: tuple[Path, list[Path]], models: dict[str, Path], classes: Path,
                                           tmp_path: Path) -> None:
    """`classify` without --window and `search --like` on a 10-minute file take about the memory of an 80 s
    one (the same batches of windows); decoded whole, its samples and windows would add 2-3 x 106 MB."""
    short = _sparse_wav(tmp_path / "short.wav", 80.0)
    long = _sparse_wav(tmp_path / "long.wav", 600.0)
    cls = ["classify", "--model", str(models["student"]), "--classes", str(classes), "--json"]
    assert _peak_mb(*cls, str(long)) - _peak_mb(*cls, str(short)) < 100
    like = ["search", str(built[0]), "--json", "--like"]
    assert _peak_mb(*like, str(long)) - _peak_mb(*like, str(short)) < 100


def test_streamed_windows_equal_whole_file_windows(tmp_path: Path, monkeypatch) -> None:
    import tinyclap.audio.io as aio
    from tinyclap.audio import eval_windows, iter_eval_windows, load_audio

    for seconds, rate in ((3.0, 44100), (23.7, 44100), (27.9, 22050), (12.4, 48000)):
        x = distinct_sound(2, seconds, rate)
        path = write_wav(tmp_path / f"{rate}.wav", x, rate)
        whole = eval_windows(load_audio(path), 220500)
        monkeypatch.setattr(aio, "WHOLE_DECODE_SECONDS", 1.0)
        streamed = np.stack(list(iter_eval_windows(path, 220500)))
        monkeypatch.undo()
        np.testing.assert_allclose(streamed, whole, atol=1e-6)


# ---------------------------------------------------------------------------------------- export inputs


def test_export_audio_arguments_and_output_checked_first(tmp_path: Path, capsys) -> None:
    from tinyclap.cli import main
    from tinyclap.deploy.clips import find_audio

    one = write_wav(tmp_path / "one.wav", distinct_sound(0, 1.0))
    (tmp_path / "list.txt").write_text(f"{one}\n")
    assert find_audio(one) == [one.resolve()]  # an audio file is itself, never read as a list
    assert find_audio(f"@{tmp_path / 'list.txt'}") == [one.resolve()]  # a list only when named as one
    with pytest.raises(ValueError, match=r"list\.txt: not an audio file .*@"):
        find_audio(tmp_path / "list.txt")
    base = ["export", "--model", "no-such-model", "--classes", "none.npz"]
    for out, why in (("/proc/x", "No such file"), (str(one / "x"), "Not a directory")):
        assert main([*base, "--parity-audio", str(one), "--out", out]) == 1  # before any model or audio
        assert f"{out}: cannot create the export folder there ({why}" in capsys.readouterr().err
    assert main([*base, "--parity-audio", str(tmp_path / "list.txt"), "--out", str(tmp_path / "e")]) == 1
    assert "not an audio file" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_search_checks_the_rows_it_rescores(built: tuple[Path, list[Path]], tmp_path: Path, monkeypatch) -> None:
    """An index too big for the open's full CRC pass (here: the limit set to 0) is still checked where it
    matters: a row whose int8 copy was overwritten (here with another row's) is caught when re-scored."""
    import tinyclap.index.store as store
    from tinyclap.index import IndexDamaged

    index = _copy(built[0], tmp_path / "ix")
    monkeypatch.setattr(store, "VERIFY_OPEN_BYTES", 0)
    with Index.open(index) as ix:
        dim, query = ix.embed_dim, ix.matrices()["f16"][0].astype(np.float32)
        assert ix.search(query, k=1)[0].score > 0.999
    with open(index / "embeddings.u8", "r+b") as f:
        row0 = f.read(dim)
        f.seek(3 * dim)
        f.write(row0)
    with Index.open(index) as ix, pytest.raises(IndexDamaged, match="fp16 and int8 copies disagree"):
        ix.search(query, k=1)
    monkeypatch.undo()
    with pytest.raises(IndexDamaged, match="rows 0..4 do not match the checksum"):
        Index.open(index)
