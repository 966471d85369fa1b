"""`tinyclap adapt` / `tinyclap.adapt`: few-shot class vectors, the leave-one-out choice of the text weight,
classes without text, and the adapted classes.npz deployed unchanged through the torch-free runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import calibrate_bn

from tinyclap.adapt import ALPHA_GRID, adapt_classes, leave_one_out
from tinyclap.audio import eval_windows, load_audio
from tinyclap.audio.frontend import LogMel
from tinyclap.cli import main
from tinyclap.cli.adapt import read_examples
from tinyclap.deploy.export import export
from tinyclap.models import save_student
from tinyclap.models.students import create_student
from tinyclap.zeroshot import ZeroShotClassifier

NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
DIM = 128
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _toy(seed: int = 0, n_per: int = 4, text_noise: float = 0.3, audio_noise: float = 1.0) -> tuple:
    """Three classes around random centres: examples = centre + audio noise, text = centre + text noise."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((3, 32)))
    y = np.repeat(np.arange(3), n_per)
    emb = _unit(centres[y] + audio_noise * rng.standard_normal((len(y), 32)) / np.sqrt(32))
    text = _unit(centres + text_noise * rng.standard_normal((3, 32)) / np.sqrt(32))
    return emb, y, text


def test_class_matrix_matches_numpy() -> None:
    """The adapted class vectors, against a direct computation of the formula."""
    emb, y, text = _toy()
    labels = ["a", "b", "c"]
    ex_labels = [labels[i] for i in y]
    tz = ZeroShotClassifier(["b", "a"], text[[1, 0]], float(np.log(20)))  # 'c' has no text
    clf, rep = adapt_classes(emb, ex_labels, tz, alpha=0.3)
    expect = []
    for c in range(3):
        m = _unit(emb[y == c].mean(0))
        expect.append(_unit(0.3 * text[c] + 0.7 * m) if c < 2 else m)
    assert clf.labels == labels and np.allclose(clf.weights, np.array(expect), atol=1e-6)
    assert rep.alpha == 0.3 and rep.chosen_by == "fixed"
    assert [c["text"] for c in rep.classes] == [True, True, False] and [c["examples"] for c in rep.classes] == [4] * 3
    # no text at all: prototypes only
    clf0, rep0 = adapt_classes(emb, ex_labels, None)
    assert rep0.chosen_by == "no text" and np.allclose(clf0.weights, [_unit(emb[y == c].mean(0)) for c in range(3)])


def test_leave_one_out_scores_by_hand() -> None:
    emb, y, text = _toy(n_per=3)
    y = y.copy()
    y[-1] = 2
    emb = np.concatenate([emb, emb[:1]])
    y = np.concatenate([y, [1]])  # an extra example of class 1
    has_text = np.array([True, True, False])
    y[2] = 0
    scores, ok = leave_one_out(emb, y, text, has_text, 0.4)
    for i in range(len(y)):
        vecs = []
        for c in range(3):
            others = [j for j in range(len(y)) if y[j] == c and j != i]
            full = [j for j in range(len(y)) if y[j] == c]
            members = others if c == y[i] else full
            if not members:
                vecs.append(text[c] if has_text[c] else np.zeros(32))
                continue
            m = _unit(emb[members].mean(0))
            vecs.append(_unit(0.4 * text[c] + 0.6 * m) if has_text[c] else m)
        assert np.allclose(scores[i], np.array(vecs) @ emb[i], atol=1e-6), i
    assert ok.all()
    # a lone example of a class without text cannot be scored
    y2 = np.array([0, 0, 1, 2])
    _, ok2 = leave_one_out(emb[:4], y2, text, has_text, 0.4)
    assert ok2.tolist() == [True, True, True, False]


def test_leave_one_out_choice() -> None:
    """Useless text -> little text weight; perfect text with noisy audio -> a lot of it."""
    emb, y, _ = _toy(seed=1, n_per=6, audio_noise=0.8)
    labels = ["a", "b", "c"]
    ex = [labels[i] for i in y]
    rng = np.random.default_rng(5)
    useless = ZeroShotClassifier(labels, _unit(rng.standard_normal((3, 32))), 3.0)
    _, rep = adapt_classes(emb, ex, useless)
    assert rep.chosen_by == "leave-one-out" and rep.alpha < 0.9
    assert rep.loo_accuracy[f"{rep.alpha:g}"] > rep.loo_accuracy["1"] + 0.3  # text alone is chance here
    assert set(rep.loo_accuracy) == {f"{a:g}" for a in ALPHA_GRID}
    assert rep.loo_accuracy[f"{rep.alpha:g}"] == max(rep.loo_accuracy.values())
    emb2, y2, text2 = _toy(seed=2, n_per=3, text_noise=0.0, audio_noise=4.0)
    _, rep2 = adapt_classes(emb2, [labels[i] for i in y2], ZeroShotClassifier(labels, text2, 3.0))
    assert rep2.alpha >= 0.8
    # the leave-one-out accuracy it reports is the one recomputed by hand
    scores, ok = leave_one_out(emb2, y2, text2, np.ones(3, bool), rep2.alpha)
    assert rep2.loo_accuracy[f"{rep2.alpha:g}"] == pytest.approx(float(np.mean(scores.argmax(1) == y2)))


def test_adapt_rejects_bad_input() -> None:
    emb, y, text = _toy()
    with pytest.raises(ValueError, match="alpha"):
        adapt_classes(emb, ["a"] * len(y), None, alpha=1.5)
    with pytest.raises(ValueError, match="not finite"):
        adapt_classes(np.full_like(emb, np.nan), ["a"] * len(y))
    with pytest.raises(ValueError, match="labelled examples"):
        adapt_classes(emb, ["a"])


def test_read_examples(tmp_path: Path) -> None:
    (tmp_path / "ok.csv").write_text("path,label\nx.wav,dog\n\n/abs/y.wav, cat \n")
    assert read_examples(tmp_path / "ok.csv") == [(str(tmp_path / "x.wav"), "dog"), ("/abs/y.wav", "cat")]
    for text, match in [("a.wav\n", "row 1"), ("a.wav,\n", "row 1"), ("path,label\n", "no examples"),
                        ("a.wav,b,c\n", "two non-empty"), ("a.wav,do\x07g\n", "printable")]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(ValueError, match=match):
            read_examples(tmp_path / "bad.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_examples(tmp_path / "bin.csv")
    with pytest.raises(ValueError, match="no such file"):
        read_examples(tmp_path / "missing.csv")


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory, us8k_root: Path) -> dict[str, Path]:
    """A random student (BatchNorm fitted to real clips), an examples CSV of three US8K classes (3 clips each,
    one unreadable row), text vectors for two of the labels, and `tinyclap adapt`'s output."""
    tmp = tmp_path_factory.mktemp("adapt")
    meta = (us8k_root / "metadata" / "UrbanSound8K.csv").read_text().splitlines()[1:]
    by_class: dict[str, list[Path]] = {}
    for line in meta:
        f = line.split(",")
        path = us8k_root / "audio" / f"fold{f[5]}" / f[0].replace(".wav", ".ogg")
        if f[7] in ("dog_bark", "siren", "jackhammer") and path.is_file():
            by_class.setdefault(f[7], []).append(path)
    rows = [(p, lb) for lb, ps in sorted(by_class.items()) for p in ps[:4]]
    torch.manual_seed(0)
    student = create_student(NAME, embed_dim=DIM)
    waves = np.stack([eval_windows(load_audio(p), 220_500)[0] for p, _ in rows])
    calibrate_bn(student, LogMel()(torch.from_numpy(waves)))
    ckpt = save_student(student, tmp / "student")
    train = [r for i, r in enumerate(rows) if i % 4 != 3]  # 3 examples per class; the 4th clip is held out
    (tmp / "ex.csv").write_text("path,label\n" + "".join(f"{p},{lb}\n" for p, lb in train) + "gone.wav,siren\n")
    rng = np.random.default_rng(0)
    text = ZeroShotClassifier(["dog bark", "siren"], rng.standard_normal((2, DIM)), float(np.log(30)))
    text.save(tmp / "text.npz")
    out = tmp / "adapted.npz"
    assert main(["adapt", "--model", str(ckpt), "--examples", str(tmp / "ex.csv"), "--text-classes",
                 str(tmp / "text.npz"), "--out", str(out), "--json", "--no-progress"]) == 0
    export(student, tmp / "export", ZeroShotClassifier.load(out), parity_audio=[rows[0][0]])
    return {"ckpt": ckpt, "out": out, "export": tmp / "export", "tmp": tmp,
            "held_out": [r for i, r in enumerate(rows) if i % 4 == 3], "csv": tmp / "ex.csv"}


def test_adapt_cli_output(adapted: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    clf = ZeroShotClassifier.load(adapted["out"])
    assert clf.labels == ["dog_bark", "jackhammer", "siren"] and clf.embed_dim == DIM
    assert np.allclose(np.linalg.norm(clf.weights, axis=1), 1.0, atol=1e-5)
    # the CLI's class matrix is the library's, from the same embeddings
    from tinyclap.adapt import adapt_classes
    from tinyclap.classifier import Classifier

    rows = read_examples(adapted["csv"])
    res = Classifier.from_model(adapted["ckpt"]).embed_files([p for p, _ in rows])
    lib, rep = adapt_classes(res.embeddings, [rows[i][1] for i in res.kept],
                             ZeroShotClassifier.load(adapted["tmp"] / "text.npz"))
    assert np.allclose(lib.weights, clf.weights, atol=1e-5) and lib.logit_scale == pytest.approx(clf.logit_scale)
    assert [c["text"] for c in rep.classes] == [True, False, True]  # "jackhammer" has no text vector


def test_adapted_classes_through_torch_free_runtime(adapted: dict[str, Path]) -> None:
    """The adapted classes.npz deploys unchanged: the export's runtime (no torch) ranks with it, and agrees
    with classify on the PyTorch model."""
    files = [str(p) for p, _ in adapted["held_out"]]
    site = str(adapted["tmp"] / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")])}
    (adapted["tmp"] / "site").mkdir(exist_ok=True)
    (adapted["tmp"] / "site" / "sitecustomize.py").write_text(NO_TORCH)
    res = subprocess.run([sys.executable, "-m", "tinyclap.runtime", str(adapted["export"]), *files, "--json",
                          "--top", "3"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    onnx = [r["labels"][0]["label"] for r in json.loads(res.stdout)["results"]]
    from tinyclap.classifier import Classifier

    torch_top = [r.ranked[0][0] for r in Classifier.from_model(adapted["ckpt"], adapted["out"]).classify_files(files)]
    assert onnx == torch_top and set(onnx) <= {"dog_bark", "jackhammer", "siren"}


def test_adapt_cli_errors(adapted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["adapt", "--model", str(adapted["ckpt"]), "--out", str(tmp_path / "o" / "c.npz")]
    (tmp_path / "bad.csv").write_text("a.wav\n")
    assert main([*base, "--examples", str(tmp_path / "bad.csv")]) == 1
    assert "row 1" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main([*base, "--examples", str(adapted["csv"]), "--alpha", "2"]) == 1
    assert main([*base, "--examples", str(adapted["csv"]), "--strict", "--no-text"]) == 1
    assert "could not be read" in capsys.readouterr().err and not (tmp_path / "o").exists()
    # no text side at all (a bare student records no teacher): classes from the examples alone
    assert main([*base, "--examples", str(adapted["csv"]), "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "no text side" in cap.err and "audio only" in cap.out
