"""Pruning of the shared latent space: criteria, masked model, physically smaller students, the sweep CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from helpers import calibrated_models, distinct_sound, write_esc50_meta

from tinyclap.evaluation.prune import (
    MaskedEmbedder,
    dim_scores,
    finetune_small_student,
    mask_embeddings,
    removed_params,
    select_dims,
    shrink_student,
)
from tinyclap.models.students import count_params, create_student
from tinyclap.zeroshot import ZeroShotClassifier

STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
CLASSES = ["dog", "rain", "sea_waves", "crying_baby"]  # targets 0..3; ESC-10: dog and rain
SR = 44100


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from tinyclap.models import save_student
    from tinyclap.models.teacher import bundled_tokenizer_dir

    tmp = tmp_path_factory.mktemp("prune")
    esc = tmp / "ESC-50-master"
    (esc / "audio").mkdir(parents=True)
    rows = []
    for i in range(8):
        c, fold = i % 4, i // 4 + 1
        name = f"{fold}-{100 + i}-A-{c}.wav"
        sf.write(esc / "audio" / name, distinct_sound(i, [2.0, 5.0, 3.0, 4.0][i % 4], kinds=4), SR)
        rows.append([name, fold, c, CLASSES[c], c < 2, "x", "A"])
    write_esc50_meta(esc, rows)

    waves = torch.from_numpy(np.stack([np.resize(distinct_sound(i, 5.0, kinds=4), 5 * SR) for i in range(4)]))
    # a 64-d shared space; log-mels (4, 690, 64)
    teacher, student, logmel = calibrated_models(waves, STUDENT, tmp / "teacher")
    save_student(student, tmp / "run" / "student", teacher=str(tmp / "teacher.safetensors"),
                 tokenizer=str(bundled_tokenizer_dir()))  # fmt: skip
    teacher.set_tokenizer(bundled_tokenizer_dir())
    return SimpleNamespace(tmp=tmp, esc=esc, teacher=teacher.eval(), student=student.eval(), run=tmp / "run",
                           rows=rows, logmel=logmel)  # fmt: skip


# --------------------------------------------------------------------------------------------- criteria


def test_criteria_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 6))
    t = rng.standard_normal((3, 6))
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    # contribution: mean over every (clip, class) pair of |a_k t_k|, written out as the definition
    want = np.zeros(6)
    for i in range(7):
        for c in range(3):
            want += np.abs(an[i] * tn[c])
    np.testing.assert_allclose(dim_scores(a, t, "contribution"), want / 21, rtol=1e-12)
    np.testing.assert_allclose(dim_scores(torch.from_numpy(a), None, "variance"), an.var(axis=0), rtol=1e-6)
    np.testing.assert_allclose(dim_scores(a, None, "energy"), (an**2).mean(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="text"):
        dim_scores(a, None, "contribution")
    with pytest.raises(ValueError, match="criterion"):
        dim_scores(a, t, "magnitude")

    s = np.array([0.1, 0.5, 0.3, 0.5, 0.0])
    assert select_dims(s, 2).tolist() == [1, 3]
    assert select_dims(s, 3).tolist() == [1, 2, 3]
    assert select_dims(np.ones(4), 2).tolist() == [0, 1]  # ties: lower index kept
    with pytest.raises(ValueError):
        select_dims(s, 6)


def test_masked_scores_equal_independent_computation(env: SimpleNamespace) -> None:
    from tinyclap.evaluation.metrics import evaluate
    from tinyclap.models import StudentEmbedder

    rng = np.random.default_rng(1)
    n, d, c = 50, 32, 6
    text = rng.standard_normal((c, d))
    labels = rng.integers(0, c, n)
    audio = text[labels] + 1.5 * rng.standard_normal((n, d))
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    folds = np.arange(n) % 2 + 1
    clf = ZeroShotClassifier([f"c{i}" for i in range(c)], text, 2.0)
    dims = select_dims(dim_scores(audio, text, "contribution"), 8)
    rep = evaluate(mask_embeddings(audio, dims), labels, clf.select(dims), folds)

    a = audio[:, dims] / np.linalg.norm(audio[:, dims], axis=1, keepdims=True)
    tt = text[:, dims] / np.linalg.norm(text[:, dims], axis=1, keepdims=True)
    pred = np.argmax(a @ tt.T, axis=1)
    assert rep.predictions.tolist() == pred.tolist()
    assert rep.accuracy == pytest.approx(np.mean(pred == labels))
    for f in (1, 2):
        assert rep.fold_accuracy[f] == pytest.approx(np.mean(pred[folds == f] == labels[folds == f]))
    # the torch path of mask_embeddings agrees with the numpy one
    np.testing.assert_allclose(mask_embeddings(torch.from_numpy(audio), dims).numpy(), a, atol=1e-6)

    # MaskedEmbedder = full model, kept entries, renormalised
    full = StudentEmbedder(env.student).eval()
    masked = MaskedEmbedder(full, dims[:5])
    wave = torch.from_numpy(np.stack([distinct_sound(0, 5.0, kinds=4), distinct_sound(1, 5.0, kinds=4)]))
    with torch.no_grad():
        want = F.normalize(full.embed_waveform(wave)[:, torch.from_numpy(dims[:5])], dim=-1)
        np.testing.assert_allclose(masked.embed_waveform(wave).numpy(), want.numpy(), atol=1e-6)
    assert masked.embed_dim == 5 and masked.sample_rate == SR


# --------------------------------------------------------------------------------------------- small students


def test_small_student_has_exactly_the_expected_parameters() -> None:
    torch.manual_seed(0)
    full = create_student(STUDENT).eval()  # 1024-d shared space, 2048 -> 1024 projection
    d, k = 1024, 96
    dims = np.sort(np.random.default_rng(0).choice(d, k, replace=False))
    small = shrink_student(full, dims)
    removed = (d - k) * 2048 + (d * d - k * k) + 2 * (d - k)  # linear1 rows, linear2 rows+cols, LayerNorm
    assert removed_params(d, k) == removed
    assert count_params(small) == count_params(full) - removed
    assert small.embed_dim == k and small.config()["embed_dim"] == k

    sel = torch.from_numpy(dims)
    p, q = full.projection, small.projection
    assert torch.equal(q.linear1.weight, p.linear1.weight[sel])
    assert torch.equal(q.linear2.weight, p.linear2.weight[sel][:, sel])
    assert torch.equal(q.layer_norm.weight, p.layer_norm.weight[sel])
    assert torch.equal(q.layer_norm.bias, p.layer_norm.bias[sel])
    for (name, a), (_, b) in zip(full.base.state_dict().items(), small.base.state_dict().items()):
        assert torch.equal(a, b), name
    q.linear1.weight.data.zero_()
    assert p.linear1.weight.abs().sum() > 0  # a copy: nothing is shared with the full student

    # keeping every entry gives back the same function
    x = torch.randn(2, 200, 64)
    same = shrink_student(full, np.arange(d))
    with torch.no_grad():
        torch.testing.assert_close(same(x), full(x))
    with pytest.raises(ValueError, match="distinct"):
        shrink_student(full, [1, 1, 2])


def test_finetuning_the_small_student_moves_it_towards_the_masked_targets(env: SimpleNamespace) -> None:
    from tinyclap.train.cache import CachedDataset, build_cache
    from tinyclap.train.targets import select_targets

    cache = env.tmp / "distill-cache"
    build_cache(env.teacher, [str(env.esc / "audio")], cache, val_fraction=0.0, progress=False, workers=0)
    env.cache = cache
    with torch.no_grad():
        a = env.teacher.embed_waveform(torch.from_numpy(np.stack([distinct_sound(i, 5.0, kinds=4) for i in range(8)])))
    text = ZeroShotClassifier.from_teacher(env.teacher, CLASSES).weights
    dims = select_dims(dim_scores(a, text, "contribution"), 16)
    small = shrink_student(env.student, dims).eval()
    ds = CachedDataset(cache, "train")
    assert len(ds) == 8

    def mean_cosine(model: torch.nn.Module) -> float:
        logmel = torch.stack([ds[i][0] for i in range(len(ds))]).float()
        target = torch.stack([ds[i][1] for i in range(len(ds))])
        with torch.no_grad():
            out = model.eval()(logmel)
        masked = select_targets(target, torch.from_numpy(dims))
        return float(F.cosine_similarity(out, masked, dim=-1).mean())

    before = mean_cosine(small)
    base_before = {k: v.clone() for k, v in small.base.state_dict().items()}
    res = finetune_small_student(small, dims, cache, epochs=3, lr=0.02, batch_size=8, progress=False, seed=0)
    after = mean_cosine(small)
    assert after > before + 0.05, (before, after)
    assert res.best_val_cosine == pytest.approx(after, abs=1e-4)
    for k, v in small.base.state_dict().items():  # projection-only: the base did not change
        assert torch.equal(v, base_before[k]), k


# --------------------------------------------------------------------------------------------- the sweep


def test_prune_cli_sweep(env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinyclap.audio import load_audio
    from tinyclap.cli import main
    from tinyclap.evaluation.embedding import embed_clip
    from tinyclap.models import StudentEmbedder, load_student
    from tinyclap.models.fingerprint import model_fingerprint
    from tinyclap.models.teacher import CLAPTeacher

    if not hasattr(env, "cache"):  # the fine-tuning test builds it; build it here when run alone
        from tinyclap.train.cache import build_cache

        env.cache = env.tmp / "distill-cache"
        build_cache(
            env.teacher, [str(env.esc / "audio")], env.cache, val_fraction=0.0, progress=False, workers=0
        )
    out, embed_cache = env.tmp / "sweep", env.tmp / "embed-cache"
    args = ["prune", "--no-progress", "--model", str(env.run), "--dims", "8", "--calibration",
            f"esc50:{env.esc}#folds=1", "--eval", f"esc50:{env.esc}", f"esc10:{env.esc}", "--out", str(out),
            "--embed-cache", str(embed_cache)]  # fmt: skip
    assert main([*args, "--finetune-epochs", "1", "--cache", str(env.cache), "--lr", "0.02"]) == 0
    res = json.loads((out / "prune.json").read_text())
    assert [r["k"] for r in res["rows"]] == [64, 8]
    assert res["calibration"]["audio_source"] == "teacher" and res["calibration"]["n_clips"] == 4
    for name in ("prune.csv", "prune.md", "prune.png", "k8/student.safetensors", "k8/dims.json"):
        assert (out / name).is_file(), name
    table = list(csv.DictReader(open(out / "prune.csv")))
    assert [int(r["k"]) for r in table] == [64, 8] and "small_acc_esc10" in table[0]
    assert "| 8 |" in (out / "prune.md").read_text()

    # the ranking: contribution computed from the teacher's calibration embeddings, written out directly
    cal = [env.esc / "audio" / r[0] for r in env.rows if int(r[1]) == 1]
    a = torch.stack([embed_clip(env.teacher, load_audio(p, SR)) for p in cal]).numpy()
    with torch.no_grad():
        t = env.teacher.encode_text([f"this is the sound of {c.replace('_', ' ')}" for c in CLASSES]).numpy()
    contrib = np.mean([[np.abs(x * y) for y in t] for x in a], axis=(0, 1))
    # masked accuracy: the full student's cached embeddings, kept entries, renormalised, against sliced text
    fingerprint = model_fingerprint(env.run)
    metas = [json.loads(f.read_text()) for f in embed_cache.glob("esc50-*.json")]
    (meta,) = [m for m in metas if m["model"] == fingerprint]
    emb = np.load(embed_cache / f"esc50-{meta['key'][:24]}.npy")
    by_name = {r[0]: r for r in env.rows}
    labels = np.array([int(by_name[Path(meta["paths"][i]).name][2]) for i in meta["kept"]])
    assert len(labels) == 8
    one = StudentEmbedder(load_student(env.run)).eval()  # spot check: the cache holds the student's embedding
    np.testing.assert_allclose(emb[1], embed_clip(one, load_audio(meta["paths"][1], SR)).numpy(), atol=2e-5)
    full_params = count_params(load_student(env.run))
    for row in res["rows"]:
        k = row["k"]
        dims = np.sort(np.argsort(-contrib, kind="stable")[:k])
        assert json.loads((out / f"k{k}" / "dims.json").read_text())["dims"] == dims.tolist()
        x = emb[:, dims] / np.linalg.norm(emb[:, dims], axis=1, keepdims=True)
        y = t[:, dims] / np.linalg.norm(t[:, dims], axis=1, keepdims=True)
        pred = np.argmax(x @ y.T, axis=1)
        assert row["masked"]["esc50"] == pytest.approx(np.mean(pred == labels))
        e10 = labels < 2
        pred10 = np.argmax(x[e10] @ y[:2].T, axis=1)
        assert row["masked"]["esc10"] == pytest.approx(np.mean(pred10 == labels[e10]))
        small = load_student(out / f"k{k}")
        assert row["params"] == count_params(small) == full_params - removed_params(64, k)
        assert row["finetuned"] == (k < 64) and row["small"] is not None
        meta = json.loads((out / f"k{k}" / "student.json").read_text())
        assert meta["dims"] == dims.tolist() and meta["finetuned"] == (k < 64)

    # a second sweep needs no audio forward pass at all: the embeddings of both models are cached
    def boom(self, wave):  # noqa: ANN001, ANN202
        raise AssertionError("an audio model ran although its embeddings are cached")

    monkeypatch.setattr(StudentEmbedder, "embed_waveform", boom)
    monkeypatch.setattr(CLAPTeacher, "embed_waveform", boom)
    assert main([*args[:-4], "--out", str(env.tmp / "sweep2"), "--embed-cache", str(embed_cache),
                 "--criterion", "variance", "--dims", "16"]) == 0  # fmt: skip
    res2 = json.loads((env.tmp / "sweep2" / "prune.json").read_text())
    assert res2["criterion"] == "variance" and [r["k"] for r in res2["rows"]] == [64, 16]
    assert res2["rows"][0]["masked"] == res["rows"][0]["masked"]  # the full model is the same

    # the saved small student evaluates on its own: its class matrix is the teacher's, sliced to its dims
    # (and its embeddings are those the sweep cached)
    ev = ["eval", "--no-progress", "--model", str(out / "k8"), "--dataset", "esc50", "--root", str(env.esc),
          "--out", str(env.tmp / "eval-k8"), "--embed-cache", str(embed_cache)]  # fmt: skip
    assert main(ev) == 0
    rep = json.loads((env.tmp / "eval-k8" / "report.json").read_text())
    assert rep["embed_cache"]["reused"] and "sliced to the 8 entries" in rep["text"]["source"]
    assert rep["results"]["accuracy"] == pytest.approx(res["rows"][1]["small"]["esc50"])
