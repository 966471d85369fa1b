"""`tinyclap.Classifier` (one code path for classify and the Python API) and timelines (`tinyclap.timeline`):
the front end run once and windows sliced from it, segments, the text view."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import calibrate_bn, tone, write_wav

from tinyclap.audio import eval_windows, load_audio, stream_windows
from tinyclap.audio.frontend import LogMel
from tinyclap.audio.mel import NumpyLogMel
from tinyclap.classifier import Classifier
from tinyclap.cli import main
from tinyclap.deploy.clips import find_audio, pick
from tinyclap.deploy.export import export
from tinyclap.models import StudentEmbedder, save_student
from tinyclap.models.students import create_student
from tinyclap.timeline import (
    NONE_LABEL,
    TimelineRow,
    array_chunks,
    format_segments,
    format_timeline_rows,
    iter_windows,
    merge_segments,
)
from tinyclap.zeroshot import ZeroShotClassifier

NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
DIM = 256
SR = 44100
LABELS = ["low", "high", "noise"]
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def _scene(seconds: float = 24.0) -> np.ndarray:
    """A 440 Hz tone, then a 2.5 kHz tone from 8 s, then noise from 16 s (44.1 kHz)."""
    rng = np.random.default_rng(0)
    third = int(seconds * SR) // 3
    return np.concatenate([tone(third / SR, SR, 440.0), tone(third / SR, SR, 2500.0),
                           0.3 * rng.standard_normal(third).astype(np.float32)]).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, us8k_root: Path) -> dict[str, Path]:
    """A random student (checkpoint + fp32 export), class vectors = its embeddings of the scene's three parts."""
    tmp = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    student = create_student(NAME, embed_dim=DIM)
    write_wav(tmp / "scene.wav", _scene(), SR)
    wave = load_audio(tmp / "scene.wav")  # as decoded (16-bit): what every test below reads
    third = wave.shape[0] // 3
    calib = [wave[s : s + 5 * SR] for s in range(0, wave.shape[0] - 5 * SR, SR)]
    calib += [eval_windows(load_audio(p), 220_500)[0] for p in pick(find_audio(us8k_root / "audio" / "fold2"), 8)]
    calibrate_bn(student, LogMel()(torch.from_numpy(np.stack(calib))))  # distinct embeddings per sound
    ckpt = save_student(student, tmp / "student")
    with torch.no_grad():
        parts = torch.from_numpy(np.stack([wave[i * third : i * third + 5 * SR] for i in range(3)]))
        proto = StudentEmbedder(student).embed_waveform(parts).numpy()
    classes = ZeroShotClassifier(LABELS, proto, float(np.log(100))).save(tmp / "classes.npz")
    export(student, tmp / "export", ZeroShotClassifier.load(classes),
           parity_audio=pick(find_audio(us8k_root / "audio" / "fold1"), 2))
    return {"ckpt": ckpt, "classes": classes, "export": tmp / "export", "scene": tmp / "scene.wav", "tmp": tmp}


def test_numpy_logmel_matches_torch(us8k_root: Path) -> None:
    clip = load_audio(pick(find_audio(us8k_root / "audio" / "fold2"), 1)[0])
    for wave in (clip, np.random.default_rng(1).standard_normal(50_000).astype(np.float32)):
        ref = LogMel()(torch.from_numpy(wave))[0].numpy()
        ours = NumpyLogMel()(wave)
        assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-3  # dB
    with pytest.raises(ValueError, match="invalid log-mel settings"):
        NumpyLogMel({"n_fft": 1 << 30})


@pytest.mark.parametrize(("n", "hop_n"), [(30_000, SR), (220_500, SR // 2), (220_501, 220_500),
                                          (13 * SR + 77, SR), (20 * SR, 320 * 50), (6 * SR, 1000)])
def test_sliced_logmel_equals_per_window(n: int, hop_n: int) -> None:
    """Windows sliced from one log-mel == each window's own log-mel (at its frame-grid start); the windows are
    stream_windows' (same starts, ends and count)."""
    wave = (np.random.default_rng(n + hop_n).standard_normal(n) * 0.1).astype(np.float32)
    fe = NumpyLogMel()
    plain = list(iter_windows(array_chunks(wave, 50_000), 220_500, hop_n))
    sliced = list(iter_windows(array_chunks(wave, 50_000), 220_500, hop_n, fe))
    assert [(a, b) for a, b, _ in plain] == [(a, b) for a, b, _ in sliced]
    for a, b, w in plain:
        f = int(np.floor(a / 320 + 0.5)) * 320  # the frame-grid start the sliced window is analysed at
        grid = wave[f : f + 220_500] if b - a == 220_500 and f + 220_500 <= n else w
        own = fe(np.pad(grid, (0, 220_500 - grid.shape[0])))
        lm = next(x for s, _, x in sliced if s == a)
        assert np.abs(own - lm).max() < 1e-3


def test_windows_match_stream_windows(tmp_path: Path, animals_dir: Path) -> None:
    from tinyclap.audio import stream_audio

    path = animals_dir / "owl.mp3"  # 48 kHz, resampled while streaming
    ref = list(stream_windows(path, window=2.0, hop=1.5, block_seconds=1.0))
    ours = list(iter_windows(stream_audio(path, SR, 1.0), 2 * SR, int(1.5 * SR)))
    assert [s for s, _ in ref] == [a / SR for a, _, _ in ours]
    assert all(np.array_equal(w, x) for (_, w), (_, _, x) in zip(ref, ours))


def test_classifier_torch_model(model_dir: dict[str, Path], animals_dir: Path, tmp_path: Path) -> None:
    clf = Classifier.from_model(model_dir["ckpt"], model_dir["classes"])
    assert clf.labels == LABELS and clf.sample_rate == SR and clf.clip_seconds == 5.0
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    files = [animals_dir / "dog.mp3", bad, animals_dir / "owl.mp3"]
    res = clf.classify_files(files, top=2)
    assert [r.ok for r in res] == [True, False, True] and "unreadable" in res[1].error
    # independent computation: mean of the 5 s windows' embeddings, renormalised, then the class matrix
    student = clf.engine.model
    cls = ZeroShotClassifier.load(model_dir["classes"])
    for r in (res[0], res[2]):
        wins = torch.from_numpy(eval_windows(load_audio(r.path), 220_500))
        with torch.no_grad():
            e = torch.nn.functional.normalize(student.embed_waveform(wins).mean(0), dim=-1).numpy()
        expect = cls.rank(e[None], 2)[0]
        assert [lb for lb, _ in r.ranked] == [lb for lb, _ in expect]
        assert np.allclose([p for _, p in r.ranked], [p for _, p in expect], atol=1e-4)
    # arrays at another rate are resampled; embed_files lists failures
    wave16 = load_audio(animals_dir / "dog.mp3", 16000)
    arr = clf.classify_arrays([wave16], 16000, top=3)[0]
    assert arr[0][0] == res[0].ranked[0][0]
    emb = clf.embed_files(files)
    assert emb.kept == [0, 2] and emb.embeddings.shape == (2, DIM) and emb.failed[0][0] == str(bad)
    assert np.allclose(np.linalg.norm(emb.embeddings, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="text side|no text encoder|text tower"):
        Classifier.from_model(model_dir["ckpt"]).set_labels(["a", "b"])


def _per_window_rows(clf: Classifier, wave: np.ndarray, hop: float) -> list[np.ndarray]:
    """Each window embedded on its own (waveform model), at the frame-grid start a timeline analyses."""
    out = []
    for a, b, w in iter_windows(array_chunks(wave), 220_500, int(round(hop * SR))):
        f = int(np.floor(a / 320 + 0.5)) * 320
        if b - a == 220_500 and f + 220_500 <= wave.shape[0]:
            w = wave[f : f + 220_500]
        out.append(clf.engine.embed_waves(np.pad(w, (0, 220_500 - w.shape[0]))[None])[0])
    return out


@pytest.mark.parametrize("kind", ["torch", "export"])
def test_timeline_equals_per_window(model_dir: dict[str, Path], kind: str) -> None:
    clf = (Classifier.from_model(model_dir["ckpt"], model_dir["classes"]) if kind == "torch"
           else Classifier.from_export(model_dir["export"]))
    assert clf.engine.frontend is not None  # the sliced path, not per-window waveforms
    wave = load_audio(model_dir["scene"])
    tl = clf.timeline(model_dir["scene"], window=5.0, hop=1.0)
    assert [r.start for r in tl.rows] == [float(k) for k in range(20)] and tl.rows[-1].end == 24.0
    ref = _per_window_rows(clf, wave, 1.0)
    cls = clf.classes
    for row, e in zip(tl.rows, ref):
        sim = cls.weights @ (e / np.linalg.norm(e))
        assert np.abs(row.similarity - sim).max() < 2e-3, (row.start, row.similarity, sim)
    # the same from the waveform at another rate (resampled first), and windows of another length
    tl16 = clf.timeline(load_audio(model_dir["scene"], 16000), 5.0, 1.0, sample_rate=16000)
    assert len(tl16.rows) == len(tl.rows)
    assert np.mean([a.top() == b.top() for a, b in zip(tl.rows, tl16.rows)]) >= 0.9
    tl3 = clf.timeline(model_dir["scene"], window=3.0, hop=3.0)
    assert [r.start for r in tl3.rows] == [0, 3, 6, 9, 12, 15, 18, 21]
    # the scene: low tone, high tone, noise; windows wholly inside one part get its label, and segments
    # follow (windows straddling a boundary hear a mixture: a random student may call it anything)
    tops = tl.top_labels()
    assert tops[0:4] == ["low"] * 4 and tops[8:12] == ["high"] * 4 and tops[16:20] == ["noise"] * 4
    segs = tl.segments()
    assert segs[0].label == "low" and "high" in [s.label for s in segs] and segs[-1].label == "noise"
    assert segs[0].start == 0.0 and segs[-1].end == 24.0 and sum(s.windows for s in segs) == 20


def test_export_classifier_without_torch(model_dir: dict[str, Path], animals_dir: Path) -> None:
    code = NO_TORCH + (
        "from tinyclap.classifier import Classifier\n"
        "clf = Classifier.from_export(sys.argv[1])\n"
        "res = clf.classify_files([sys.argv[2]], top=2)\n"
        "tl = clf.timeline(sys.argv[3], 5.0, 2.0)\n"
        "print(res[0].ranked[0][0], len(tl.rows), [s.label for s in tl.segments()])\n"
        "assert sys.modules['torch'] is None\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(model_dir["export"]), str(animals_dir / "dog.mp3"),
                          str(model_dir["scene"])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    label, n, segs = out.stdout.split(" ", 2)
    # 2 s hops: full windows at 0, 2, ..., 18 s, then a padded one from 20 s for the last second
    assert label in LABELS and int(n) == 11 and segs.startswith("['low'") and segs.strip().endswith("'noise']")


def _row(start: float, p: list[float], sim: list[float] | None = None) -> TimelineRow:
    return TimelineRow(start, start + 5.0, np.array(p, np.float32), None if sim is None else np.array(sim))


def test_segments_merge_threshold_and_floor() -> None:
    labels = ["a", "b"]
    rows = [_row(0, [0.9, 0.1], [0.5, 0.1]), _row(1, [0.8, 0.2], [0.4, 0.1]), _row(2, [0.4, 0.6], [0.1, 0.05]),
            _row(3, [0.3, 0.7], [0.1, 0.3]), _row(4, [0.45, 0.55], [0.2, 0.3])]
    raw = {"smooth": 0.0, "min_segment": 0.0}  # the windows' own decisions (smoothing: tests/test_timeline_segments.py)
    segs = merge_segments(rows, labels, **raw)
    assert [(s.label, s.windows) for s in segs] == [("a", 2), ("b", 3)]
    # each window stands for one hop around its centre: the boundary lies between centres 3.5 and 4.5
    assert (segs[0].start, segs[0].end, segs[1].start, segs[1].end) == (0.0, 4.0, 4.0, 9.0)
    assert segs[0].score == pytest.approx(0.85) and segs[0].peak == pytest.approx(0.9)
    by_threshold = merge_segments(rows, labels, threshold=0.65, **raw)
    assert [s.label for s in by_threshold] == ["a", NONE_LABEL, "b", NONE_LABEL]
    by_floor = merge_segments(rows, labels, min_similarity=0.2, **raw)
    assert [s.label for s in by_floor] == ["a", NONE_LABEL, "b"]
    assert [s.label for s in merge_segments(rows, labels, min_similarity=0.2, keep_none=False, **raw)] == ["a", "b"]
    assert merge_segments([], labels) == []
    with pytest.raises(ValueError):
        merge_segments(rows, labels, threshold=1.5)


def test_text_view_fits_100_columns() -> None:
    labels = ["a" * 80, "b" * 3, "c" * 200]
    rows = [_row(3600.0 * k, [0.5, 0.2, 0.3], [0.2, 0.1, 0.1]) for k in range(3)]
    lines = list(format_timeline_rows(rows, labels))
    lines += list(format_segments(merge_segments(rows, labels)))
    assert all(len(line) <= 100 for line in lines) and "1:00:00.0" in "".join(lines)


def test_classify_cli_segments_and_json(model_dir: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["classify", str(model_dir["scene"]), "--window", "5", "--hop", "2"]
    assert main([*base, "--model", str(model_dir["ckpt"]), "--classes", str(model_dir["classes"]), "--segments"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("scene.wav") and out[1].split()[:3] == ["start", "end", "length"]
    found = [line.split()[3] for line in out[2:]]
    assert found[0] == "low" and found[-1] == "noise" and all(len(line) <= 100 for line in out)
    assert main([*base, "--export-dir", str(model_dir["export"]), "--segments", "--json"]) == 0
    tl = json.loads(capsys.readouterr().out)["results"][0]["timeline"]
    assert len(tl["rows"]) == 11 and tl["segments"][0]["label"] == "low" and "cosines" in tl["rows"][0]
    assert sum(s["windows"] for s in tl["segments"]) == 11
    # a score floor: windows whose best cosine is below it are "none of these"
    raw = ["--smooth", "0", "--min-segment", "0", "--none-below", "0.9"]  # the windows' own decisions
    assert main([*base, "--export-dir", str(model_dir["export"]), "--segments", "--json", *raw]) == 0
    tl = json.loads(capsys.readouterr().out)["results"][0]["timeline"]
    below = sum(max(r["cosines"]) < 0.9 for r in tl["rows"])
    assert 0 < below == sum(s["windows"] for s in tl["segments"] if s["label"] == NONE_LABEL)
    assert main([*base[:2], "--export-dir", str(model_dir["export"]), "--segments"]) == 1
    assert "need --window" in capsys.readouterr().err


def test_hostile_inputs(model_dir: dict[str, Path], tmp_path: Path) -> None:
    clf = Classifier.from_export(model_dir["export"])
    with pytest.raises(ValueError, match="non-finite"):
        clf.classify_arrays([np.array([0.0, np.nan, 0.1], np.float32)], SR)
    with pytest.raises(ValueError, match="sample_rate"):
        clf.classify_arrays([np.zeros(100, np.float32)], 0)
    with pytest.raises(ValueError, match="1-D"):
        clf.timeline(np.zeros((2, 1000), np.float32), sample_rate=SR)
    with pytest.raises(ValueError, match="window and hop"):
        clf.timeline(model_dir["scene"], window=0.0)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), np.float32), SR)
    with pytest.raises(ValueError, match="empty"):
        clf.timeline(empty)
    wrong = ZeroShotClassifier(["x"], np.ones((1, 8)), 1.0).save(tmp_path / "wrong.npz")
    with pytest.raises(ValueError, match="8 dims"):
        clf.set_classes(wrong)


def _readme_block(heading: str, lang: str) -> str:
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = text.index(heading)
    return re.search(rf"^```{lang}\n(.*?)^```", text[start:], flags=re.S | re.M).group(1)


@pytest.mark.slow
def test_readme_examples_run(model_dir: dict[str, Path], shared_data: Path, us8k_root: Path,
                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's adapt/classify/export/timeline block and its Python API block, on the small student."""
    import shlex

    tmp = model_dir["tmp"]
    clips = pick(find_audio(us8k_root / "audio" / "fold1"), 6)
    (tmp / "ex.csv").write_text("".join(f"{p},{'ab'[i % 2]}\n" for i, p in enumerate(clips)))
    subs = {"runs/my-classes.npz": str(tmp / "my-classes.npz"), "runs/my-export": str(tmp / "my-export"),
            "my-examples.csv": str(tmp / "ex.csv"), "runs/student": str(model_dir["ckpt"]),
            "my-clip.wav": str(shared_data / "animals-cc0" / "dog.mp3"), "my-recording.wav": str(model_dir["scene"]),
            "$DATA": str(shared_data), "runs/classes.npz": str(model_dir["classes"]),
            "runs/export": str(model_dir["export"])}

    def sub(text: str) -> str:
        for a, b in subs.items():
            text = text.replace(a, b)
        return text

    for line in _readme_block("## Your own classes", "bash").strip().splitlines():
        argv = shlex.split(sub(line))[1:]
        extra = ["--parity-size", "2"] if argv[0] == "export" else ["--no-progress"] if argv[0] == "adapt" else []
        assert main(argv + extra) == 0, line
    out = capsys.readouterr().out
    assert "2 classes from 6 examples" in out and "length" in out  # the segments view
    assert ZeroShotClassifier.load(tmp / "my-export" / "classes.npz").labels == ["a", "b"]
    monkeypatch.setenv("DATA", str(shared_data))
    exec(compile(sub(_readme_block("### The Python API", "python")), "README.md#api", "exec"), {})
    printed = capsys.readouterr().out
    assert "dog.mp3 [(" in printed and "no-such.wav file not found" in printed and " s  " in printed


def test_teacher_timeline_sliced() -> None:
    """MS CLAP's teacher (here its tiny form) takes log-mels too: its timeline slices them, same numbers."""
    from helpers import tiny_teacher

    teacher = tiny_teacher()
    wave = _scene(12.0)
    calibrate_bn(teacher.audio_encoder, LogMel()(torch.from_numpy(np.stack([wave[:220_500], wave[-220_500:]]))))
    rng = np.random.default_rng(0)
    clf = Classifier.from_model(teacher, ZeroShotClassifier(LABELS, rng.standard_normal((3, teacher.embed_dim)), 2.0))
    assert clf.engine.frontend is not None
    tl = clf.timeline(wave, window=5.0, hop=2.0, sample_rate=SR)
    ref = _per_window_rows(clf, wave, 2.0)
    assert len(tl.rows) == len(ref) == 5
    for row, e in zip(tl.rows, ref):
        assert np.abs(row.similarity - clf.classes.weights @ (e / np.linalg.norm(e))).max() < 2e-3
