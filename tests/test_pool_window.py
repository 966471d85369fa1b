"""Pooled windows (issue 19, item 2): a student embeds a clip from shorter windows (backbone per window,
features averaged, head once) in torch, `eval`, `classify`, the Classifier and an ONNX export alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import calibrate_bn, tiny_teacher, write_csv

from tinyclap.audio import eval_windows, load_audio
from tinyclap.audio.frontend import LogMel
from tinyclap.audio.io import window_starts
from tinyclap.classifier import Classifier
from tinyclap.cli import main
from tinyclap.deploy.clips import find_audio, pick
from tinyclap.deploy.export import export
from tinyclap.models import StudentEmbedder, load_model, save_student
from tinyclap.models.embedder import with_pool_window
from tinyclap.models.students import create_student
from tinyclap.zeroshot import ZeroShotClassifier

NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
DIM = 128
SR = 44100
US8K_CLASSES = ["air conditioner", "car horn", "children playing", "dog bark", "drilling", "engine idling",
                "gun shot", "jackhammer", "siren", "street music"]


def test_window_starts() -> None:
    assert window_starts(5 * SR, SR) == [0, SR, 2 * SR, 3 * SR, 4 * SR]
    w = int(1.3 * SR)  # 3 full windows, and 1.1 s left: one more aligned to the end
    assert window_starts(5 * SR, w) == [0, w, 2 * w, 5 * SR - w]
    assert window_starts(int(5.2 * SR), 5 * SR) == [int(0.1 * SR)]  # a short remainder: centred
    assert window_starts(100, 1000) == [0]


@pytest.fixture(scope="module")
def student(us8k_root: Path) -> torch.nn.Module:
    """A random student whose BatchNorm statistics are fitted to real clips (distinct embeddings per clip)."""
    torch.manual_seed(0)
    model = create_student(NAME, embed_dim=DIM)
    clips = [eval_windows(load_audio(p), 5 * SR)[0] for p in pick(find_audio(us8k_root / "audio" / "fold2"), 8)]
    waves = torch.from_numpy(np.stack(clips))
    windows = waves.reshape(-1, SR)  # 1 s windows too, so pooled features are in range
    calibrate_bn(model, torch.cat([LogMel()(waves)[:, :138], LogMel()(windows)]))
    return model.eval()


def test_pooled_embedding_is_the_head_of_the_mean_window_features(student: torch.nn.Module) -> None:
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 5 * SR)).astype(np.float32) * 0.1)
    lm = LogMel()
    with torch.no_grad():
        for seconds in (1.0, 1.3):
            win = int(round(seconds * SR))
            feats = torch.stack([student.features(lm(wave[:, s : s + win])) for s in window_starts(5 * SR, win)], 1)
            want = F.normalize(student.head(feats.mean(1)), dim=-1)
            got = StudentEmbedder(student, pool_window=seconds).embed_waveform(wave)
            assert torch.allclose(got, want, atol=1e-5)
        # one window as long as the clip: the plain embedding; longer: the clip zero-padded to it
        whole = StudentEmbedder(student).embed_waveform(wave)
        assert torch.allclose(StudentEmbedder(student, pool_window=5.0).embed_waveform(wave), whole, atol=1e-6)
        padded = StudentEmbedder(student).embed_waveform(F.pad(wave, (0, 2 * SR)))
        assert torch.allclose(StudentEmbedder(student, pool_window=7.0).embed_waveform(wave), padded, atol=1e-5)
        # averaging the windows' final embeddings instead is a different thing
        assert not torch.allclose(StudentEmbedder(student, pool_window=1.0).embed_waveform(wave), whole, atol=1e-3)
    with pytest.raises(ValueError, match="pool window"):
        StudentEmbedder(student, pool_window=0.0)


def test_teachers_refuse_a_pool_window(tmp_path: Path, teacher_ckpt: Path, animals_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="needs a student"):
        with_pool_window(tiny_teacher(), 1.0)
    assert with_pool_window(tiny_teacher(), None) is not None
    code = main(["classify", str(animals_dir / "dog.mp3"), "--model", str(teacher_ckpt), "--labels", "a,b",
                 "--pool-window", "1"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "needs a student" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):  # longer than a clip: a usage error
        main(["classify", "x.wav", "--model", NAME, "--classes", "c.npz", "--pool-window", "9"])
    assert "out of range" in capsys.readouterr().err


@pytest.fixture(scope="module")
def pooled_export(student: torch.nn.Module, us8k_root: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Path]:
    """The student saved, a class matrix of its own pooled embeddings of real clips (US8K names), and an fp32
    export made with a 1 s pool window."""
    tmp = tmp_path_factory.mktemp("pool")
    ckpt = save_student(student, tmp / "student")
    protos = [eval_windows(load_audio(p), 5 * SR)[0] for p in pick(find_audio(us8k_root / "audio" / "fold1"), 10)]
    with torch.no_grad():
        matrix = StudentEmbedder(student, pool_window=1.0).embed_waveform(torch.from_numpy(np.stack(protos)))
    classes = ZeroShotClassifier(US8K_CLASSES, matrix.numpy(), float(np.log(100))).save(tmp / "classes.npz")
    manifest = export(StudentEmbedder(student, pool_window=1.0), tmp / "export", ZeroShotClassifier.load(classes),
                      parity_audio=pick(find_audio(us8k_root / "audio" / "fold3"), 2))
    assert manifest["pool_window"] == 1.0 and manifest["parity"]["model.onnx"]["min_cosine"] > 0.9999
    return {"ckpt": ckpt, "classes": classes, "export": tmp / "export", "tmp": tmp}


def test_same_decisions_in_torch_and_onnx(pooled_export: dict[str, Path], us8k_root: Path) -> None:
    files = pick(find_audio(us8k_root / "audio" / "fold3"), 8)
    torch_clf = Classifier.from_model(pooled_export["ckpt"], pooled_export["classes"], pool_window=1.0)
    onnx_clf = Classifier.from_export(pooled_export["export"])  # the export's window, by default
    plain = Classifier.from_model(pooled_export["ckpt"], pooled_export["classes"])
    assert torch_clf.pool_window == onnx_clf.pool_window == 1.0 and plain.pool_window is None
    a, b = torch_clf.embed_files(files), onnx_clf.embed_files(files)
    assert len(a.kept) == len(files) and np.min(np.sum(a.embeddings * b.embeddings, 1)) > 0.9999
    assert np.argmax(a.embeddings @ torch_clf.classes.weights.T, 1).tolist() == \
        np.argmax(b.embeddings @ onnx_clf.classes.weights.T, 1).tolist()
    assert np.max(np.sum(a.embeddings * plain.embed_files(files).embeddings, 1)) < 0.99999  # pooling did something
    # timelines: each 5 s window pooled alike (the export's timelines go through model.onnx)
    wave = np.concatenate([load_audio(f) for f in files[:3]])
    ta, tb = torch_clf.timeline(wave, 5.0, 2.0, sample_rate=SR), onnx_clf.timeline(wave, 5.0, 2.0, sample_rate=SR)
    assert ta.top_labels() == tb.top_labels() and len(ta.rows) == len(tb.rows) > 1
    # the window is part of the exported graph
    assert Classifier.from_export(pooled_export["export"], pool_window=1.0).pool_window == 1.0
    with pytest.raises(ValueError, match="exported for pooled windows of 1 s"):
        Classifier.from_export(pooled_export["export"], pool_window=0.5)
    exported = load_model(pooled_export["export"])  # what `eval --model EXPORT` runs
    assert with_pool_window(exported, 1.0).pool_window == 1.0
    with pytest.raises(ValueError, match="needs `tinyclap export --pool-window 0.5`"):
        with_pool_window(exported, 0.5)


def test_classify_and_eval_take_pool_window(pooled_export: dict[str, Path], us8k_root: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in pick(find_audio(us8k_root / "audio" / "fold3"), 3)]
    ckpt, classes = str(pooled_export["ckpt"]), str(pooled_export["classes"])
    assert main(["classify", *files, "--model", ckpt, "--classes", classes, "--pool-window", "1", "--json"]) == 0
    by_torch = json.loads(capsys.readouterr().out)["results"]
    assert main(["classify", *files, "--export-dir", str(pooled_export["export"]), "--json"]) == 0
    by_onnx = json.loads(capsys.readouterr().out)["results"]
    assert [r["labels"][0]["label"] for r in by_torch] == [r["labels"][0]["label"] for r in by_onnx]
    # eval: the report says which window was measured; the embedding cache keeps pooled and whole apart
    csv = write_csv(pooled_export["tmp"] / "clips.csv", ["path", "label"],
                    [[f, US8K_CLASSES[i]] for i, f in enumerate(files)])
    base = ["eval", "--model", ckpt, "--dataset", f"csv:{csv}", "--classes", classes, "--no-progress",
            "--embed-cache", str(pooled_export["tmp"] / "cache")]
    assert main([*base, "--out", str(pooled_export["tmp"] / "e1"), "--pool-window", "1"]) == 0
    assert main([*base, "--out", str(pooled_export["tmp"] / "e0")]) == 0
    r1 = json.loads((pooled_export["tmp"] / "e1" / "report.json").read_text())
    r0 = json.loads((pooled_export["tmp"] / "e0" / "report.json").read_text())
    assert r1["protocol"]["pool_window"] == 1.0 and r0["protocol"]["pool_window"] is None
    assert r1["embed_cache"]["file"] != r0["embed_cache"]["file"] and not r0["embed_cache"]["reused"]
