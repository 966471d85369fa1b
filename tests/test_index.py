"""`tinyclap embed` / `tinyclap search` and `tinyclap.index`: incremental re-embedding, SIGKILL and resume,
exact search against numpy, --like finding itself, unreadable files, an export folder as the model (no
torch), text queries through the recorded teacher, and the README's index block."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import calibrated_models, distinct_sound, tinyclap_argv, us8k_clips, write_wav

from tinyclap.cli import main as cli_main
from tinyclap.index import Index, audio_query, embed_sources, text_query
from tinyclap.index.search import ROUNDING_MARGIN, merge_adjacent

STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(work: Path) -> dict[str, Path]:
    """A tiny random teacher and a student with BatchNorm fitted to distinct sounds (so clips differ), the
    student saved with the teacher recorded in its config, and its fp32 export."""
    from tinyclap.deploy.export import export
    from tinyclap.models import save_student
    from tinyclap.zeroshot import ZeroShotClassifier

    waves = torch.from_numpy(np.stack([distinct_sound(i, 5.0) for i in range(10)]))
    teacher, student, _ = calibrated_models(waves, STUDENT, work / "teacher")
    ckpt = save_student(student, work / "student", teacher=str(work / "teacher.safetensors"))
    clf = ZeroShotClassifier(["a", "b"], np.random.default_rng(0).standard_normal((2, student.embed_dim)), 3.0)
    parity = [write_wav(work / f"parity{i}.wav", distinct_sound(i, 5.0)) for i in range(2)]
    export(student, work / "export", clf, parity_audio=parity)
    return {"teacher": work / "teacher.safetensors", "student": ckpt, "export": work / "export"}


def _sounds(folder: Path, ids: range, seconds: float = 4.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_wav(folder / f"s{i}.wav", distinct_sound(i, seconds)) for i in ids]


def _content(folder: Path) -> dict[tuple[str, float, float], bytes]:
    """(path, start, end) -> the fp16 bytes of its row: what an index holds, whatever the row order."""
    with Index.open(folder) as ix:
        rows, fids, starts, ends = ix.window_table()
        paths = ix.paths(fids)
        f16 = ix.matrices()["f16"]
        return {(paths[f], s, e): f16[r].tobytes() for r, f, s, e in zip(rows, fids, starts, ends)}


def _files(folder: Path) -> dict[str, tuple]:
    with Index.open(folder) as ix:
        return {r.path: (r.size, r.sha256, r.duration, r.status, r.error) for r in ix.files()}


# ---------------------------------------------------------------------------------------------- tests


def test_incremental_add_change_delete(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    audio = tmp_path / "audio"
    files = _sounds(audio, range(5))
    (audio / "sub").mkdir()
    write_wav(audio / "sub" / "long.wav", distinct_sound(7, 12.0))
    (audio / "bad.wav").write_text("not audio")
    index = tmp_path / "index"
    argv = ["embed", str(audio), "--model", str(models["student"]), "--out", str(index), "--no-progress",
            "--json", "--batch-size", "3"]
    assert cli_main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["embedded"], first["windows"], len(first["failed"])) == (6, 5 + 8, 1)  # 12 s, 1 s hop: 8
    assert cli_main([*argv, "--strict"]) == 1  # unchanged; the bad file is listed again
    again = json.loads(capsys.readouterr().out)
    assert (again["embedded"], again["unchanged"], again["failed"][0]["path"]) == (0, 7, str(audio / "bad.wav"))
    before = _content(index)

    files[0].unlink()  # delete
    write_wav(files[1], distinct_sound(11, 4.0))  # change
    write_wav(audio / "s9.wav", distinct_sound(9, 4.0))  # add
    os.utime(files[2], ns=(1, 1))  # touched, same bytes: not re-embedded
    assert cli_main(argv) == 0
    third = json.loads(capsys.readouterr().out)
    assert (third["embedded"], third["removed"], third["unchanged"]) == (2, 1, 5)
    after = _content(index)
    assert not any(k[0] == str(files[0]) for k in after)
    kept = {k: v for k, v in before.items() if k[0] not in (str(files[0]), str(files[1]))}
    assert all(after[k] == v for k, v in kept.items())

    fresh = tmp_path / "fresh"  # the updated index equals one built from scratch on the final folder
    assert cli_main([*argv[:4], "--out", str(fresh), "--no-progress"]) == 0
    assert after == _content(fresh)
    assert _files(index) == _files(fresh)
    with Index.open(index) as ix:  # rows of the deleted and changed files are orphans, never hits
        assert ix.rows == len(after) + 2 and len(ix) == len(after)


def _random_index(folder: Path, n_files: int, dim: int, seed: int) -> tuple[Index, np.ndarray, list]:
    """An index of random clustered unit vectors (files of 1-6 windows of 5 s, hop 5 s), no model."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    ix = Index.create(folder, {"kind": "audio", "model": {"fingerprint": "test"}, "window": 5.0, "hop": 5.0,
                               "embed_dim": dim})
    records, embs, windows = [], [], []
    for i in range(n_files):
        k = int(rng.integers(1, 7))
        spans = [(5.0 * j, 5.0 * j + 5.0) for j in range(k)]
        records.append(({"path": f"/music/{i}.wav", "size": 1, "mtime_ns": 1, "sha256": None, "duration": 5.0 * k,
                         "status": "ok", "error": None}, spans))
        e = centres[rng.integers(0, 8)] + 0.7 * rng.standard_normal((k, dim))
        embs.append(e / np.linalg.norm(e, axis=1, keepdims=True))
        windows += [(i, s, en) for s, en in spans]
        if len(records) == 50:
            ix.append(records, np.concatenate(embs))
            records, embs = [], []
    if records:
        ix.append(records, np.concatenate(embs))
    return ix, ix.matrices()["f16"].astype(np.float32), windows


def test_search_matches_bruteforce(tmp_path: Path) -> None:
    ix, f16, windows = _random_index(tmp_path / "ix", 400, 48, seed=1)
    rng = np.random.default_rng(2)
    queries = np.concatenate([rng.standard_normal((6, 48)), f16[[3, 50]]])
    for q, hits in zip(queries, ix.search_batch(queries, k=25, dedupe=False)):
        exact = f16 @ (q / np.linalg.norm(q))
        order = np.argsort(-exact)[:25]
        assert [(f"/music/{windows[r][0]}.wav", windows[r][1]) for r in order] == [(h.path, h.start) for h in hits]
        np.testing.assert_allclose([h.score for h in hits], exact[order], atol=1e-5)
    assert ix.search(f16[50], k=1, dedupe=False)[0].score == pytest.approx(1.0, abs=1e-3)
    # min_score keeps exactly the windows at or above it
    q = queries[0] / np.linalg.norm(queries[0])
    ranked = np.sort(f16 @ q)
    floor = float(ranked[-7] + ranked[-8]) / 2
    assert len(ix.search(q, k=100, min_score=floor, dedupe=False)) == 7
    # dedupe: adjacent windows of one file merge into one hit with the best score; k files still come back
    deduped = ix.search(q, k=10)
    assert len(deduped) == 10
    assert all(h.end - h.start >= 5.0 for h in deduped)
    # removed files are never returned, their rows stay masked
    ix.remove([h.path for h in deduped[:3]])
    assert not {h.path for h in deduped[:3]} & {h.path for h in ix.search(q, k=20)}
    ix.close()


def test_error_bound_holds() -> None:
    """|approximate - exact| <= alpha * scale_r + beta for every row and query (`bound_coefficients`), on
    dense, spiky and sign-adversarial unit vectors; exact = the fp16 rows times the query in float64."""
    from tinyclap.index.search import approximate_scores, bound_coefficients
    from tinyclap.index.store import quantize_rows

    rng = np.random.default_rng(7)
    dim = 1024
    rows = rng.standard_normal((600, dim))
    rows[200:400, :3] += 40.0  # spiky rows: a large scale, coarse steps elsewhere
    rows[400:] = np.sign(rows[400:]) + 0.01 * rng.standard_normal((200, dim))  # flat rows: many entries at 127
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)
    q8, scales = quantize_rows(rows.astype(np.float32))
    u8 = (q8.astype(np.int16) + 128).astype(np.uint8)
    queries = np.concatenate([rng.standard_normal((6, dim)), np.sign(rows[400:403].astype(np.float64)),
                              rows[[0, 250]].astype(np.float64)])
    queries[3, :2] += 30.0
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    approx, q_err = approximate_scores(u8, scales, queries)
    alpha, beta = bound_coefficients(queries, q_err)
    exact = queries.astype(np.float64) @ rows.astype(np.float64).T
    slack = alpha[:, None].astype(np.float64) * scales[None].astype(np.float64) + beta[:, None] - ROUNDING_MARGIN
    assert (np.abs(approx - exact) <= slack + 1e-6).all()  # the bound holds without most of its fp32 margin


def test_resident_rows_score_like_the_streamed_path(tmp_path: Path, monkeypatch) -> None:
    """`Index.load_resident` (the int8 rows packed once into ONNX Runtime) gives bit-identical approximate
    scores, hence identical results; rows appended after packing are streamed; a removed file stays masked."""
    from tinyclap.index import search as search_mod

    monkeypatch.setattr(search_mod, "RESIDENT_CHUNK_ROWS", 300)  # several packed sessions and a partial one
    ix, f16, windows = _random_index(tmp_path / "ix", 300, 48, seed=5)
    rng = np.random.default_rng(6)
    queries = np.concatenate([rng.standard_normal((5, 48)), f16[[0, 7, len(f16) - 1]]])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    mats = ix.matrices()
    streamed = search_mod.approximate_scores(mats["u8"], mats["scales"], queries.astype(np.float32))
    before = ix.search_batch(queries, k=25, dedupe=False)
    ix.load_resident()
    assert ix.resident.rows == len(f16) and len(ix.resident.sessions) == -(-len(f16) // 300)
    resident = search_mod.approximate_scores(mats["u8"], mats["scales"], queries.astype(np.float32), ix.resident)
    assert np.array_equal(streamed[0], resident[0]) and np.array_equal(streamed[1], resident[1])
    key = [[(h.path, h.start, h.score) for h in hits] for hits in before]
    assert [[(h.path, h.start, h.score) for h in hits] for hits in ix.search_batch(queries, k=25, dedupe=False)] == key
    # rows appended after packing: the packed prefix plus the streamed tail, still equal to brute force
    extra = rng.standard_normal((4, 48))
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    ix.append([({"path": "/music/new.wav", "size": 1, "mtime_ns": 1, "sha256": None, "duration": 20.0,
                 "status": "ok", "error": None}, [(5.0 * j, 5.0 * j + 5.0) for j in range(4)])], extra)
    assert ix.rows == len(f16) + 4 and ix.resident.rows == len(f16)
    hits = ix.search(extra[2], k=3, dedupe=False)
    assert (hits[0].path, hits[0].start) == ("/music/new.wav", 10.0)
    everything = ix.matrices()["f16"].astype(np.float32)
    np.testing.assert_allclose([h.score for h in hits], np.sort(everything @ extra[2])[::-1][:3], atol=1e-5)
    ix.remove(["/music/new.wav"])
    assert "/music/new.wav" not in {h.path for h in ix.search(extra[2], k=10)}
    ix.close()
    assert ix.resident is None


def test_approximate_index(tmp_path: Path) -> None:
    from tinyclap.index.ann import build_ann

    ix, f16, _ = _random_index(tmp_path / "ix", 400, 48, seed=3)
    build_ann(ix)
    queries = f16[np.random.default_rng(4).integers(0, len(f16), 20)]
    exact = ix.search_batch(queries, k=10, dedupe=False)
    approx = ix.search_batch(queries, k=10, dedupe=False, approximate=True)
    recall = np.mean([len({(h.path, h.start) for h in a} & {(h.path, h.start) for h in e}) / 10
                      for a, e in zip(approx, exact)])
    assert recall >= 0.9
    rows, fids, starts, _ = ix.window_table()
    row_of = {(int(f), float(st)): int(r) for r, f, st in zip(rows, fids, starts)}
    for q, a in zip(queries, approx):  # candidates are re-scored exactly from fp16
        qn = q / np.linalg.norm(q)
        assert [h.score for h in a] == pytest.approx([float(f16[row_of[h.file_id, h.start]] @ qn) for h in a],
                                                     abs=1e-5)
    q = queries[0] / np.linalg.norm(queries[0])
    assert ix.search(q, k=1, approximate=True)[0].score == pytest.approx(float(np.max(f16 @ q)), abs=1e-5)
    ix.remove([exact[0][0].path])  # the index changed: the graph is stale and refused
    with pytest.raises(ValueError, match="stale"):
        ix.search(q, approximate=True)
    ix.close()


def test_merge_adjacent() -> None:
    hits = [(1, 5.0, 10.0, 0.9), (1, 10.0, 15.0, 0.8), (2, 0.0, 5.0, 0.7), (1, 30.0, 35.0, 0.6),
            (1, 0.0, 5.0, 0.5)]
    assert merge_adjacent(hits, 1e-6) == [(1, 0.0, 15.0, 0.9), (2, 0.0, 5.0, 0.7), (1, 30.0, 35.0, 0.6)]


def test_like_returns_itself_first_and_text_search(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    from tinyclap.models import load_model
    from tinyclap.models.teacher import bundled_tokenizer_dir

    audio = tmp_path / "audio"
    files = _sounds(audio, range(8))
    report = embed_sources([audio], models["student"], tmp_path / "ix", progress=False, workers=2)
    assert report.embedded == 8 and not report.failed
    with Index.open(tmp_path / "ix") as ix:
        for f in files:
            hits = ix.search(audio_query(ix, f), k=3)
            assert hits[0].path == str(f) and hits[0].score > 0.999
        wave = distinct_sound(3, 4.0)[::2].copy()  # a waveform at another rate is resampled first
        assert ix.search(audio_query(ix, wave, sample_rate=22050), k=1)[0].path == str(files[3])
        tok = str(bundled_tokenizer_dir())
        q = text_query(ix, "a dog barking", tokenizer=tok, raw=True)  # the teacher recorded in the student's config
        teacher = load_model(models["teacher"], tokenizer_dir=tok)
        expect = teacher.encode_text(["a dog barking"]).detach().numpy()[0]
        np.testing.assert_allclose(q, expect / np.linalg.norm(expect), atol=1e-5)
        q = text_query(ix, "a dog barking", tokenizer=tok)  # by default, in classify's template
        expect = teacher.encode_text(["this is the sound of a dog barking"]).detach().numpy()[0]
        np.testing.assert_allclose(q, expect / np.linalg.norm(expect), atol=1e-5)
    assert cli_main(["search", str(tmp_path / "ix"), "a", "dog", "barking", "--tokenizer", tok, "--json",
                     "-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["hits"]) == 3 and out["hits"][0]["cosine"] >= out["hits"][-1]["cosine"]
    assert cli_main(["search", str(tmp_path / "ix"), "--like", str(files[5]), "-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()  # the query file itself is left out of its hits
    assert len(table) == 4 and str(files[5]) not in "\n".join(table)
    assert cli_main(["search", str(tmp_path / "ix"), "--like", str(tmp_path / "missing.wav")]) == 1
    assert "missing.wav: file not found" in capsys.readouterr().err


def test_export_folder_as_model_without_torch(models: dict[str, Path], tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    files = _sounds(audio, range(4))
    (audio / "bad.wav").write_text("not audio")
    code = NO_TORCH + (
        "from tinyclap.cli import main\n"
        "rc = main(['embed', sys.argv[1], '--model', sys.argv[2], '--out', sys.argv[3], '--no-progress'])\n"
        "rc2 = main(['search', sys.argv[3], '--like', sys.argv[4], '--json', '-k', '1'])\n"
        "assert sys.modules['torch'] is None\n"
        "sys.exit(rc or rc2)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(audio), str(models["export"]), str(tmp_path / "ix"),
                          str(files[2])], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert "4 file(s) embedded" in res.stdout and f"skipped {audio / 'bad.wav'}" in res.stderr
    hits = json.loads(res.stdout[res.stdout.index("{"):])["hits"]
    assert hits and hits[0]["path"] != str(files[2])  # the query file itself is left out
    # the export embeds like the PyTorch student it came from
    embed_sources([audio], models["student"], tmp_path / "torch", progress=False)
    a, b = _content(tmp_path / "ix"), _content(tmp_path / "torch")
    assert a.keys() == b.keys()
    for k in a:
        cos = np.frombuffer(a[k], np.float16).astype(np.float32) @ np.frombuffer(b[k], np.float16).astype(np.float32)
        assert cos > 0.999


def test_long_file_is_embedded_in_pieces(models: dict[str, Path], tmp_path: Path) -> None:
    """A file with more windows than fit in one decoded piece (80 windows of 2 s, hop 1 s) is streamed again and
    embedded in batches; its windows and offsets are those of the short path."""
    from tinyclap.index import build

    write_wav(tmp_path / "long.wav", distinct_sound(3, 81.0, sr=8000), rate=8000)
    embed_sources([tmp_path / "long.wav"], models["export"], tmp_path / "a", window=2.0, hop=1.0, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "LONG_FILE_WINDOWS", 1000)
        embed_sources([tmp_path / "long.wav"], models["export"], tmp_path / "b", window=2.0, hop=1.0,
                      progress=False)
    a, b = _content(tmp_path / "a"), _content(tmp_path / "b")
    assert len(a) == 80 and sorted(a) == sorted(b)
    assert max(k[2] for k in a) == pytest.approx(81.0)


def test_refuses_other_settings_and_bad_folders(models: dict[str, Path], tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    _sounds(audio, range(2))
    embed_sources([audio], models["student"], tmp_path / "ix", progress=False)
    with pytest.raises(ValueError, match="other settings .*window"):
        embed_sources([audio], models["student"], tmp_path / "ix", window=2.0, progress=False)
    from tinyclap._util import folder_lock

    with folder_lock(tmp_path / "ix", blocking=False, name=".embed.lock"), \
            pytest.raises(BlockingIOError, match="in use by another tinyclap process"):
        embed_sources([audio], models["student"], tmp_path / "ix", progress=False)  # one writer at a time
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an index"):
        embed_sources([audio], models["student"], tmp_path / "other", progress=False)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e9):
        with pytest.raises(ValueError, match="--window and --hop must be"):
            embed_sources([audio], models["student"], tmp_path / "new", window=bad, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        embed_sources([tmp_path / "nope"], models["student"], tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    with sqlite3.connect(tmp_path / "ix" / "index.sqlite") as db:  # a damaged database: one line, no traceback
        db.execute("UPDATE windows SET row = 999 WHERE id = (SELECT MIN(id) FROM windows)")
    with Index.open(tmp_path / "ix") as ix, pytest.raises(ValueError, match="refers to a row past"):
        ix.search(np.ones(ix.embed_dim))
    (tmp_path / "ix" / "embeddings.f16").write_bytes(b"")
    with pytest.raises(ValueError, match="embeddings.f16: holds 0 rows"):
        Index.open(tmp_path / "ix")


def test_ranks_split_the_files(models: dict[str, Path], tmp_path: Path) -> None:
    """torchrun ranks (here two threads with RANK/WORLD_SIZE given) each take every 2nd file and append
    under the folder lock: together they give the single-process index."""
    from concurrent.futures import ThreadPoolExecutor

    audio = tmp_path / "audio"
    _sounds(audio, range(6))
    embed_sources([audio], models["export"], tmp_path / "one", progress=False)
    with ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda r: embed_sources([audio], models["export"], tmp_path / "two", rank=r,
                                                     world_size=2, progress=False, batch_size=1), (0, 1)))
    assert [r.embedded for r in reps] == [3, 3]
    assert (tmp_path / "two" / "report.rank1.json").is_file()
    assert _content(tmp_path / "one") == _content(tmp_path / "two")


# --------------------------------------------------------------------------------------- SIGKILL, resume


def _committed(index: Path) -> int:
    try:
        db = sqlite3.connect(f"{(index / 'index.sqlite').as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT COUNT(*) FROM files").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_index(models: dict[str, Path], us8k_root: Path,
                                                    tmp_path: Path) -> None:
    clips = [str(p) for p in us8k_clips(us8k_root, 40, fold=2)]
    manifest = tmp_path / "clips.txt"
    manifest.write_text("\n".join(clips) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

    def argv(out: Path) -> list[str]:
        return tinyclap_argv("embed", f"manifest:{manifest}", "--model", str(models["export"]), "--out", str(out),
                             "--batch-size", "2", "--workers", "1", "--no-progress")

    subprocess.run(argv(tmp_path / "whole"), check=True, env=env, timeout=300, capture_output=True)
    rnd, landed, runs = random.Random(13), 0, 0
    target = tmp_path / "killed"
    while runs < 20 and landed < 3:
        runs += 1
        proc = subprocess.Popen(argv(target), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start_count, t0 = _committed(target), time.monotonic()
        while proc.poll() is None and _committed(target) == start_count and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.0, 0.15))  # shortly after a commit: mid-batch, mid-write or mid-commit
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=60)
        landed += rc == -signal.SIGKILL
        if (target / "manifest.json").exists():  # a reader opens what a killed writer left, at once
            with Index.open(target) as ix:
                assert len(ix) <= len(clips) and len(ix) == ix.rows
        if rc == 0 and landed < 3:  # finished before enough kills (a fast machine): start over
            shutil.rmtree(target)
            landed = 0
    subprocess.run(argv(target), check=True, env=env, timeout=300, capture_output=True)
    assert landed >= 3, f"only {landed} SIGKILLs landed mid-run"
    assert _content(target) == _content(tmp_path / "whole")
    assert _files(target) == _files(tmp_path / "whole")
    with Index.open(target) as ix:
        assert len(ix) == len(clips) and ix.rows >= len(clips)


# ------------------------------------------------------------------------------------------------ README


def test_readme_index_block(models: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    """The README's "Your own audio" commands, with the test's models in place of the run folders."""
    import re
    import shlex

    from tinyclap.models.teacher import bundled_tokenizer_dir

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^## Your own audio.*?^```bash\n(.*?)^```", readme, flags=re.S | re.M).group(1)
    monkeypatch.chdir(tmp_path)
    audio = tmp_path / "my-sounds"
    _sounds(audio, range(3))
    shutil.copytree(models["export"], tmp_path / "export")
    subs = {"runs/student": str(models["student"]), "runs/export": str(tmp_path / "export"),
            "runs/proxy": str(models["teacher"]), "my-sounds/": str(audio) + "/",
            "clip.wav": str(audio / "s1.wav")}
    lines = [ln for ln in block.splitlines() if ln.startswith("tinyclap ")]
    assert len(lines) >= 4
    for line in lines:
        for a, b in subs.items():
            line = line.replace(a, b)
        words = [w for w in shlex.split(line.split("  #")[0])[1:] if w != "--int8"]  # the test export is fp32
        if words[0] == "search" and "--like" not in words:
            words += ["--tokenizer", str(bundled_tokenizer_dir())]
        assert cli_main(words) == 0, line
    assert "s1.wav" in capsys.readouterr().out


def test_cpu_without_vnni_streams_with_7_bit_queries(tmp_path: Path, monkeypatch) -> None:
    """Where MLAS's u8 x s8 sums could saturate (x86 without VNNI), queries are quantised to |q8| <= 64 (no
    pairwise sum can exceed 32767), results stay equal to brute force, and packing is declined."""
    from tinyclap.index import search as search_mod

    monkeypatch.setattr(search_mod, "int8_sums_may_saturate", lambda: True)
    assert search_mod.query_levels() == 64
    ix, f16, _ = _random_index(tmp_path / "ix", 400, 32, seed=9)
    rng = np.random.default_rng(10)
    q = rng.standard_normal(32)
    q /= np.linalg.norm(q)
    hits = ix.search(q, k=15, dedupe=False)
    np.testing.assert_allclose([h.score for h in hits], np.sort(f16.astype(np.float32) @ q)[::-1][:15], atol=1e-5)
    with pytest.warns(RuntimeWarning, match="no VNNI"):
        ix.load_resident()
    assert ix.resident is None
    ix.close()
