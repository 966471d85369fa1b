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

from tinyclap.adapt import (
    LAMBDA_GRID,
    PRIOR,
    SE_RULE,
    adapt_classes,
    cosine_ramp,
    find_groups,
    leave_one_group_out,
    overlap,
    recording_spectrum,
    text_weights,
)
from tinyclap.audio import eval_windows, load_audio
from tinyclap.audio.frontend import LogMel
from tinyclap.cli import main
from tinyclap.cli.adapt import read_examples, tidy_examples
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
    """The adapted class vectors, against a direct computation of the formula (each group counts once)."""
    emb, y, text = _toy()
    labels = ["a", "b", "c"]
    ex_labels = [labels[i] for i in y]
    tz = ZeroShotClassifier(["b", "a"], text[[1, 0]], float(np.log(20)))  # 'c' has no text
    groups = ["r1", "r1", "r1", "r2"] * 3  # per class: a recording sliced three ways and another one
    clf, rep = adapt_classes(emb, ex_labels, tz, alpha=0.3, groups=groups)
    expect = []
    for c in range(3):
        e = emb[y == c]
        m = _unit(e[:3].mean(0) + e[3])
        expect.append(_unit(0.3 * text[c] + 0.7 * m) if c < 2 else m)
    assert clf.labels == labels and np.allclose(clf.weights, np.array(expect), atol=1e-6)
    assert rep.chosen_by == "fixed alpha" and rep.grouping == "given"
    assert [c["text"] for c in rep.classes] == [True, True, False] and [c["examples"] for c in rep.classes] == [4] * 3
    assert [c["independent"] for c in rep.classes] == [2] * 3 and [c["text_weight"] for c in rep.classes] == [.3, .3, 0]
    # the shrinkage: text weight lam / (lam + independent examples)
    assert np.allclose(text_weights(np.array([1, 2, 4]), np.array([True, True, False]), 2.0), [2 / 3, 0.5, 0])
    # no text at all: prototypes only
    clf0, rep0 = adapt_classes(emb, ex_labels, None)
    assert rep0.chosen_by == "no text" and np.allclose(clf0.weights, [_unit(emb[y == c].mean(0)) for c in range(3)])


def _brute_force_logo(emb: np.ndarray, y: np.ndarray, groups: np.ndarray, text: np.ndarray, has_text: np.ndarray,
                      lam: float) -> np.ndarray:
    """Leave-one-group-out by its definition: drop a group, rebuild every class vector, score its examples."""
    scores = np.zeros((len(y), 3))
    for g in np.unique(groups):
        keep = groups != g
        vecs = []
        for c in range(3):
            members = [j for j in np.flatnonzero(keep & (y == c))]
            gs = np.unique(groups[members])
            if not members:
                vecs.append(text[c])  # only the held-out group's class can lose all its examples
                continue
            m = _unit(sum(emb[groups == h].mean(0) for h in gs))
            a = lam / (lam + len(gs)) if has_text[c] else 0.0
            vecs.append(_unit(a * text[c] + (1 - a) * m))
        scores[groups == g] = emb[groups == g] @ np.array(vecs).T
    return scores


def test_leave_one_group_out_equals_brute_force() -> None:
    emb, y, text = _toy(n_per=5)
    groups = np.array([0, 0, 1, 2, 2, 3, 4, 4, 4, 5, 6, 6, 7, 8, 9])  # class 1 has two groups, class 0 three
    has_text = np.array([True, True, False])
    for lam in (0.0, 0.5, 3.0, 64.0):
        scores, ok = leave_one_group_out(emb, y, groups, text, has_text, lam)
        assert np.allclose(scores, _brute_force_logo(emb, y, groups, text, has_text, lam), atol=1e-9), lam
    assert ok.all()
    # a class with a single group cannot be scored: its audio prototype has nothing to be judged on
    _, ok2 = leave_one_group_out(emb, y, np.where(y == 2, 99, groups), text, has_text, 1.0)
    assert ok2.tolist() == [True] * 10 + [False] * 5


def test_near_duplicates_keep_the_blend_text_heavy() -> None:
    """Without affinities (a plain class matrix): slices of one recording found as one group per class, flagged,
    so the blend keeps the text weight of
    one example (3 / 4), and leave-one-group-out has nothing to judge them on; the same examples given as
    independent recordings lean on the audio (3 / 8)."""
    rng = np.random.default_rng(3)
    centres = _unit(rng.standard_normal((3, 32)))
    text = _unit(centres + 4.0 * rng.standard_normal((3, 32)) / np.sqrt(32))  # a weak text side
    rec = _unit(centres + rng.standard_normal((3, 32)) / np.sqrt(32))  # one recording per class, off-centre
    y = np.repeat(np.arange(3), 5)
    slices = _unit(rec[y] + 0.05 * rng.standard_normal((15, 32)) / np.sqrt(32))
    labels = [["a", "b", "c"][i] for i in y]
    tz = ZeroShotClassifier(["a", "b", "c"], text, 3.0)
    ramp = cosine_ramp(slices, y)
    assert all(find_groups(overlap(slices[y == c], ramp)).tolist() == [0] * 5 for c in range(3))
    clf, rep = adapt_classes(slices, labels, tz, affinity=0)
    assert rep.chosen_by == "prior" and rep.lam == PRIOR == 3 and rep.scored_examples == 0
    assert all(c["one_recording"] and c["independent"] == 1 and c["text_weight"] == 0.75 for c in rep.classes)
    m = np.array([_unit(slices[y == c].mean(0)) for c in range(3)])
    assert np.allclose(clf.weights, _unit(0.75 * text + 0.25 * m), atol=1e-6)
    _, rep1 = adapt_classes(slices, labels, tz, affinity=0, prior="auto")
    assert rep1.chosen_by == "prior (nothing to judge)" and rep1.lam == PRIOR
    _, rep2 = adapt_classes(slices, labels, tz, affinity=0, groups=[str(i) for i in range(15)])
    assert all(c["text_weight"] == pytest.approx(3 / 8) for c in rep2.classes)
    _, rep2 = adapt_classes(slices, labels, tz, affinity=0, groups=[str(i) for i in range(15)], prior="auto")
    assert rep2.chosen_by == "leave-one-group-out" and rep2.scored_examples == 15  # slices taken as recordings
    # one class sliced, the others independent: the sliced class keeps more of its text
    mixed = np.concatenate([slices[:5], _unit(centres[y[5:]] + rng.standard_normal((10, 32)) / np.sqrt(32))])
    _, rep3 = adapt_classes(mixed, labels, tz, affinity=0, prior="auto")
    w = [c["text_weight"] for c in rep3.classes]
    assert [c["independent"] for c in rep3.classes] == [1, 5, 5] and w[0] >= w[1] == w[2]
    assert rep3.classes[0]["one_recording"] and not rep3.classes[1]["one_recording"]


def test_example_affinities_as_defined() -> None:
    """By default the class vectors stay the text's and the examples become affinities: gain A * spread * w_i,
    spread the mean (best - median) class cosine of the examples, sharpness SHARPNESS / (1 - the cosine ramp's
    zero); without affinities (affinity=0) lam is PRIOR again."""
    from tinyclap.adapt import AFFINITY, SHARPNESS

    emb, y, text = _toy(n_per=5)
    labels = ["a", "b", "c"]
    tz = ZeroShotClassifier(labels, text, 3.0)
    groups = ["r1", "r1", "r2", "r3", "r4"] * 3  # per class: four recordings, one sliced in two
    clf, rep = adapt_classes(emb, [labels[i] for i in y], tz, groups=groups)
    assert rep.lam is None and np.allclose(clf.weights, text, atol=1e-6)
    s = emb @ text.T
    spread = np.mean(s.max(1) - np.median(s, 1))
    w = np.tile([0.5, 0.5, 1, 1, 1], 3)
    aff = clf.affinity
    assert np.allclose(aff.weights, AFFINITY * spread * w, atol=1e-6) and aff.classes.tolist() == y.tolist()
    assert aff.sharpness == pytest.approx(SHARPNESS / (1 - cosine_ramp(emb, y)[0]))
    assert rep.affinity == {"strength": AFFINITY, "weight": pytest.approx(AFFINITY * spread, abs=1e-4),
                            "sharpness": pytest.approx(aff.sharpness, abs=1e-3)}
    x = _unit(np.random.default_rng(9).standard_normal((6, 32)))
    gain = np.exp(-aff.sharpness * (1 - x @ emb.T)) * aff.weights
    assert np.allclose(clf.scores(x), x @ text.T + gain @ np.eye(3)[y], atol=1e-5)
    plain, rep0 = adapt_classes(emb, [labels[i] for i in y], tz, groups=groups, affinity=0)
    assert plain.affinity is None and rep0.affinity is None and rep0.lam == PRIOR
    with pytest.raises(ValueError, match="affinity"):
        adapt_classes(emb, [labels[i] for i in y], tz, affinity=-1)


def test_slices_of_one_recording_gain_as_one_example() -> None:
    """Five slices of one recording per class share one example's gain (each 1/5), where taken as five
    recordings they would gain five times as much; and a clip far from every example keeps its zero-shot
    class, however many slices were given."""
    rng = np.random.default_rng(3)
    centres = _unit(rng.standard_normal((3, 32)))
    text = _unit(centres + 0.5 * rng.standard_normal((3, 32)) / np.sqrt(32))
    rec = _unit(centres + rng.standard_normal((3, 32)) / np.sqrt(32))
    y = np.repeat(np.arange(3), 5)
    slices = _unit(rec[y] + 0.05 * rng.standard_normal((15, 32)) / np.sqrt(32))
    labels = [["a", "b", "c"][i] for i in y]
    tz = ZeroShotClassifier(["a", "b", "c"], text, 3.0)
    clf, rep = adapt_classes(slices, labels, tz)
    each, _ = adapt_classes(slices, labels, tz, groups=[str(i) for i in range(15)])
    one = rep.affinity["weight"]
    per_class = np.bincount(y, weights=clf.affinity.weights)
    assert np.allclose(per_class, one, atol=1e-5) and all(c["one_recording"] for c in rep.classes)
    assert np.allclose(np.bincount(y, weights=each.affinity.weights), 5 * one, atol=1e-4)
    far = _unit(rng.standard_normal((50, 32)))  # clips unlike every example
    assert (clf.scores(far).argmax(1) == (far @ text.T).argmax(1)).all()
    assert np.abs(clf.scores(far) - far @ text.T).max() < 0.05 * one
    # a clip from a recording is lifted toward its class
    assert (clf.scores(slices).argmax(1) == y).all()


def test_held_out_gains_equal_brute_force() -> None:
    """The logit scale is fitted on gains from the other groups only: as a loop that rebuilds the affinities
    without each example's group."""
    from tinyclap.adapt import _held_out_gains

    emb, y, text = _toy(n_per=5)
    groups = np.array([0, 0, 1, 2, 2, 3, 4, 4, 4, 5, 6, 6, 7, 8, 9])
    clf, _ = adapt_classes(emb, [str(c) for c in y], ZeroShotClassifier(["0", "1", "2"], text, 3.0),
                           groups=[str(g) for g in groups])
    aff = clf.affinity
    got = _held_out_gains(emb, groups, groups, aff, 3)
    for i in range(len(y)):
        keep = groups != groups[i]
        g = np.exp(-aff.sharpness * (1 - emb[keep] @ emb[i])) * aff.weights[keep]
        assert np.allclose(got[i], np.bincount(y[keep], weights=g, minlength=3), atol=1e-6)


def test_mcu_export_refuses_example_affinities(tmp_path: Path) -> None:
    from tinyclap.deploy.mcu.export import export_tflm

    emb, y, text = _toy()
    clf, _ = adapt_classes(emb, [str(c) for c in y], ZeroShotClassifier(["0", "1", "2"], text, 3.0))
    with pytest.raises(ValueError, match="--affinity 0"):
        export_tflm(None, tmp_path / "out", clf, window=1.0, calibration_audio=[], parity_audio=[])
    assert not (tmp_path / "out").exists()


def test_overlap_counts_slices_that_share_a_spectrum_as_one_recording() -> None:
    """Slices of one recording whose embeddings are not near-duplicates (cosine ~0.85) count as one example
    when their long-term spectra agree; five recordings with different spectra stay five. Overlaps are soft:
    each example weighs 1 / (its row's sum), the class counts the sum of its weights."""
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1], 5)
    base = _unit(rng.standard_normal(64))
    emb = _unit(base + 0.42 * rng.standard_normal((10, 64)) / np.sqrt(64) * 8)  # cosines well below 0.95
    cos = emb[:5] @ emb[:5].T
    assert cos[np.triu_indices(5, 1)].max() < 0.95
    one = np.tile(rng.normal(-40, 10, 64), (5, 1)) + rng.normal(0, 0.5, (5, 64))  # one channel, +-0.5 dB
    many = rng.normal(-40, 10, (5, 64))  # five channels
    spectra = np.concatenate([one, many])
    ramp = cosine_ramp(emb, y)
    assert np.allclose(overlap(emb[:5], ramp, spectra[:5]), 1.0)
    assert np.allclose(overlap(emb[5:], ramp, spectra[5:]), np.eye(5), atol=0.3)
    labels = ["slices"] * 5 + ["recordings"] * 5
    _, rep = adapt_classes(emb, labels, spectra=spectra)
    assert [c["independent"] for c in rep.classes][0] == 1 and rep.classes[0]["one_recording"]
    assert rep.classes[1]["independent"] > 4 and not rep.classes[1]["one_recording"]
    _, without = adapt_classes(emb, labels)  # the embeddings alone do not see the slices
    assert without.classes[0]["independent"] > 1.5
    # recording_spectrum: the mean over frames that are not digital silence
    mel = np.full((10, 4), -100.0)
    mel[:4] = [[-10, -20, -30, -40]] * 4
    assert recording_spectrum(mel).tolist() == [-10, -20, -30, -40]


def test_cosine_ramp_is_calibrated_on_cross_class_pairs() -> None:
    """A weakly trained model puts everything close together: when examples of different classes already
    reach cosine ~0.86, five different recordings of a class at ~0.91 count as more than one recording,
    where the fixed 0.75..0.95 ramp would take them for nearly one."""
    from tinyclap.adapt import COS_INDEPENDENT

    rng = np.random.default_rng(11)
    common = _unit(rng.standard_normal(64))
    y = np.repeat([0, 1, 2], 5)
    centres = _unit(common + 0.3 * _unit(rng.standard_normal((3, 64))))
    emb = _unit(centres[y] + 0.3 * _unit(rng.standard_normal((15, 64))))
    cos = emb @ emb.T
    cross = cos[y[:, None] != y[None]]
    assert np.quantile(cross, 0.9) > 0.85  # the weak model's crowd
    zero, one = cosine_ramp(emb, y)
    assert zero == pytest.approx(np.quantile(cross, 0.9)) and one == pytest.approx(zero + 0.8 * (1 - zero))
    _, rep = adapt_classes(emb, [str(c) for c in y])
    fixed = np.clip((cos - 0.75) / 0.2, 0, 1) * (y[:, None] == y[None])
    assert all(c["independent"] > 1.5 for c in rep.classes) and (1 / fixed.sum(1)).sum() / 3 < 1.3
    # a well-spread model keeps the floor: 0.75 to 0.95
    assert cosine_ramp(np.eye(4), np.array([0, 0, 1, 1])) == (COS_INDEPENDENT, pytest.approx(0.95))
    # a class too large for few-shot overlaps is refused in one line, not a square of its size in memory
    from tinyclap.adapt import MAX_CLASS_EXAMPLES

    big = np.tile(emb[:2], (MAX_CLASS_EXAMPLES // 2 + 1, 1))
    with pytest.raises(ValueError, match="at most 5000 per class"):
        adapt_classes(big, ["a"] * (len(big) - 1) + ["b"])


def test_leave_one_group_out_choice() -> None:
    """Useless text -> little text weight; perfect text with noisy audio -> a lot of it."""
    emb, y, _ = _toy(seed=1, n_per=6, audio_noise=0.8)
    labels = ["a", "b", "c"]
    ex = [labels[i] for i in y]
    rng = np.random.default_rng(5)
    useless = ZeroShotClassifier(labels, _unit(rng.standard_normal((3, 32))), 3.0)
    _, rep = adapt_classes(emb, ex, useless, prior="auto")
    assert rep.chosen_by == "leave-one-group-out" and rep.classes[0]["text_weight"] < 0.75
    assert rep.loo_accuracy[f"{rep.lam:g}"] > rep.loo_accuracy["inf"] + 0.3  # text alone is chance here
    assert set(rep.loo_accuracy) == {f"{a:g}" for a in LAMBDA_GRID}
    best = max(rep.loo_accuracy.values())  # the largest lam within SE_RULE standard errors of the best (18 groups)
    ok = [float(k) for k, a in rep.loo_accuracy.items() if a >= best - SE_RULE * np.sqrt(best * (1 - best) / 18)]
    assert rep.lam == max(ok)
    emb2, y2, text2 = _toy(seed=2, n_per=3, text_noise=0.0, audio_noise=4.0)
    _, rep2 = adapt_classes(emb2, [labels[i] for i in y2], ZeroShotClassifier(labels, text2, 3.0), prior="auto")
    assert rep2.lam is None or rep2.lam >= 16
    # the accuracy it reports is the one recomputed by hand
    lam = np.inf if rep2.lam is None else rep2.lam
    scores, ok = leave_one_group_out(emb2, y2, np.arange(9), text2, np.ones(3, bool), lam)
    assert rep2.loo_accuracy[f"{lam:g}"] == pytest.approx(float(np.mean(scores.argmax(1) == y2)))


def test_adapt_rejects_bad_input() -> None:
    emb, y, text = _toy()
    with pytest.raises(ValueError, match="alpha"):
        adapt_classes(emb, ["a", "b"] * (len(y) // 2), None, alpha=1.5)
    with pytest.raises(ValueError, match="not finite"):
        adapt_classes(np.full_like(emb, np.nan), ["a", "b"] * (len(y) // 2))
    with pytest.raises(ValueError, match="labelled examples"):
        adapt_classes(emb, ["a"])
    with pytest.raises(ValueError, match="prior"):
        adapt_classes(emb, ["a", "b"] * (len(y) // 2), None, prior=float("nan"))
    with pytest.raises(ValueError, match="two classes"):
        adapt_classes(emb, ["a"] * len(y))


def test_read_examples(tmp_path: Path) -> None:
    (tmp_path / "ok.csv").write_text("path,label\nx.wav,dog\n\n/abs/y.wav, cat \n/abs/z.wav,cat,rec 7\n")
    assert read_examples(tmp_path / "ok.csv") == [(str(tmp_path / "x.wav"), "dog", None), ("/abs/y.wav", "cat", None),
                                                  ("/abs/z.wav", "cat", "rec 7")]
    (tmp_path / "grp.csv").write_text("path,label,group\nx.wav,dog,a\nw.wav,dog,\n")
    assert [g for _, _, g in read_examples(tmp_path / "grp.csv")] == ["a", None]
    for text, match in [("a.wav\n", "row 1"), ("a.wav,\n", "row 1"), ("path,label\n", "no examples"),
                        ("a.wav,b,c,d\n", "path,label"), ("a.wav,do\x07g\n", "printable"),
                        ("a.wav,dog,g\x07\n", "group must be printable")]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(ValueError, match=match):
            read_examples(tmp_path / "bad.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_examples(tmp_path / "bin.csv")
    with pytest.raises(ValueError, match="no such file"):
        read_examples(tmp_path / "missing.csv")


def test_tidy_examples() -> None:
    """Repeated rows count once, `dog`/`Dog`/`dog ` are one class, one class is refused."""
    rows = [("a.wav", "dog", None), ("a.wav", "dog", None), ("./a.wav", "Dog", None), ("b.wav", "Dog", "r"),
            ("c.wav", "Street_music", None), ("d.wav", "street  music", None)]
    kept, notes = tidy_examples(rows)
    assert kept == [("a.wav", "dog", None), ("b.wav", "dog", "r"), ("c.wav", "Street_music", None),
                    ("d.wav", "Street_music", None)]
    assert any("'Dog' taken as 'dog'" in n for n in notes) and any("2 repeated" in n for n in notes)
    with pytest.raises(ValueError, match="one class only"):
        tidy_examples([("a.wav", "dog", None), ("b.wav", "DOG", None)])


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
    from tinyclap.adapt import adapt_classes, file_spectrum
    from tinyclap.classifier import Classifier

    rows = read_examples(adapted["csv"])
    res = Classifier.from_model(adapted["ckpt"]).embed_files([p for p, _, _ in rows])
    spectra = np.stack([file_spectrum(rows[i][0]) for i in res.kept])  # as the CLI finds groups
    lib, rep = adapt_classes(res.embeddings, [rows[i][1] for i in res.kept],
                             ZeroShotClassifier.load(adapted["tmp"] / "text.npz"), spectra=spectra)
    assert np.allclose(lib.weights, clf.weights, atol=1e-5) and lib.logit_scale == pytest.approx(clf.logit_scale)
    assert np.allclose(lib.affinity.keys, clf.affinity.keys, atol=1e-5)
    assert np.allclose(lib.affinity.weights, clf.affinity.weights, atol=1e-5)
    assert [c["text"] for c in rep.classes] == [True, False, True]  # "jackhammer" has no text vector


def test_adapted_classes_through_torch_free_runtime(adapted: dict[str, Path]) -> None:
    """The adapted classes.npz deploys unchanged: the export's runtime (no torch) ranks with it, and agrees
    with classify on the PyTorch model."""
    files = [str(p) for p, _ in adapted["held_out"]]
    assert ZeroShotClassifier.load(adapted["export"] / "classes.npz").affinity is not None  # the examples travel
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
    # and `classify --classes` reads it as it reads any class matrix
    res = subprocess.run([sys.executable, "-m", "tinyclap.cli", "classify", *files, "--model", str(adapted["ckpt"]),
                          "--classes", str(adapted["out"]), "--json", "--top", "1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [r["labels"][0]["label"] for r in json.loads(res.stdout)["results"]] == torch_top


def test_adapt_cli_errors(adapted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["adapt", "--model", str(adapted["ckpt"]), "--out", str(tmp_path / "o" / "c.npz")]
    (tmp_path / "bad.csv").write_text("a.wav\n")
    assert main([*base, "--examples", str(tmp_path / "bad.csv")]) == 1
    assert "row 1" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main([*base, "--examples", str(adapted["csv"]), "--alpha", "2"]) == 1
    with pytest.raises(SystemExit):
        main([*base, "--examples", str(adapted["csv"]), "--affinity", "-1"])
    assert "--affinity: -1 is out of range ([0.0, 100.0])" in capsys.readouterr().err
    assert main([*base, "--examples", str(adapted["csv"]), "--strict", "--no-text"]) == 1
    assert "could not be read" in capsys.readouterr().err and not (tmp_path / "o").exists()
    # no text side at all (a bare student records no teacher): classes from the examples alone
    assert main([*base, "--examples", str(adapted["csv"]), "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "no text side" in cap.err and "no text" in cap.out and "independent" in cap.out
    # one class (after `Siren` is taken as `siren`) is refused before the model is loaded
    rows = read_examples(adapted["csv"])
    (tmp_path / "one.csv").write_text(f"{rows[-2][0]},siren\n{rows[-3][0]},Siren\n")
    one = [*base, "--examples", str(tmp_path / "one.csv"), "--model", "/nonexistent", "--out", str(tmp_path / "p/c")]
    assert main(one) == 1
    assert "one class only ('siren')" in capsys.readouterr().err and not (tmp_path / "p").exists()
    # a file copied under three names is one recording (warned), a repeated row counts once
    for i in range(3):
        (tmp_path / f"dog{i}.ogg").write_bytes(Path(rows[0][0]).read_bytes())
    (tmp_path / "dup.csv").write_text("dog0.ogg,dog_bark\ndog1.ogg,Dog Bark\ndog2.ogg,dog_bark\ndog2.ogg,dog_bark\n"
                                      f"{rows[-2][0]},siren\n{rows[-3][0]},siren,take-2\n")
    assert main([*base, "--examples", str(tmp_path / "dup.csv"), "--json", "--no-text"]) == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert rep["examples"] == 5 and rep["grouping"] == "given + found"
    assert [(c["label"], c["examples"], c["independent"]) for c in rep["classes"]] == [("dog_bark", 3, 1),
                                                                                       ("siren", 2, 2)]
    assert "'Dog Bark' taken as 'dog_bark'" in cap.err and "1 repeated row" in cap.err
    assert "examples of 'dog_bark' look like one recording" in cap.err and "'siren' look" not in cap.err
    # --affinity 0: a plain class matrix, as the MCU head takes
    plain = [*base[:-1], str(tmp_path / "plain.npz"), "--examples", str(adapted["csv"]), "--affinity", "0"]
    assert main([*plain, "--no-text", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["affinity"] is None
    assert ZeroShotClassifier.load(tmp_path / "plain.npz").affinity is None
