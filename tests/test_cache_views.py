"""Augmented views in the cache (`tinyclap cache --views K`) and their use in training (views, SpecAugment)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from helpers import distinct_sound

import tinyclap.train.loop as loop_mod
from tinyclap.audio import CLIP_SAMPLES, SAMPLE_RATE, load_audio
from tinyclap.cli import main
from tinyclap.models.teacher import load_teacher
from tinyclap.train.cache import CachedDataset, CacheStore, build_cache, split_of
from tinyclap.train.cache.options import VIEW_AUGMENT
from tinyclap.train.config import DistillConfig
from tinyclap.train.recipes import resolve_recipe
from tinyclap.train.targets import SPEC_FREQ_MAX, SPEC_TIME_MAX, spec_augment

K = 3  # views per crop
VAL = 0.3
SEED = 7
STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"


@pytest.fixture(scope="module")
def clips(work: Path) -> list[Path]:
    """Eight generated clips: 6 s ones (2 crops with crops_per_clip=2) and 3 s ones (one zero-padded crop)."""
    folder = work / "clips"
    folder.mkdir()
    paths = []
    for i in range(8):
        p = folder / f"c{i}.wav"
        sf.write(p, distinct_sound(i, 6.0 if i % 2 else 3.0), SAMPLE_RATE)
        paths.append(p)
    splits = [split_of(p.name, SEED, VAL) for p in paths]
    assert "val" in splits and splits.count("train") >= 3  # the seed gives both splits
    return paths


def build(teacher, clips, out: Path, **kw):  # noqa: ANN001, ANN201 - test helper
    kw = {"crops_per_clip": 2, "shard_size": 10, "batch_size": 8, "workers": 0, "progress": False,
          "views": K, "seed": SEED, "val_fraction": VAL, **kw}  # fmt: skip
    return build_cache(teacher, [str(clips[0].parent)], out, **kw)


@pytest.fixture(scope="module")
def views_cache(work: Path, teacher_ckpt: Path, clips: list[Path]) -> Path:
    out = work / "views"
    report = build(str(teacher_ckpt), clips, out, workers=2)  # the DataLoader decoding path
    assert report.views_written > 0 and not report.skipped
    return out


def shard_bytes(root: Path) -> dict[str, bytes]:
    """Every file of every finished shard, by relative path, plus cache.json."""
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "shards").glob("r*/*"))}
    return {**files, "cache.json": (root / "cache.json").read_bytes()}


def test_rows_items_and_config(views_cache: Path) -> None:
    store = CacheStore(views_cache)
    cfg = store.config
    assert cfg["views"] == K == store.views and cfg["view_augment"] == json.loads(json.dumps(VIEW_AUGMENT))
    items = store.items
    assert [it["view"] for it in items] == store.row_views.tolist()
    by_file: dict[str, list[dict]] = {}
    for it in items:
        by_file.setdefault(it["rel"], []).append(it)
    for rel, rows in by_file.items():
        crops = sorted({it["crop"] for it in rows})
        if rows[0]["split"] == "val":  # validation files: the clean rows only
            assert [it["view"] for it in rows] == [0] * len(crops) and all(it["aug"] is None for it in rows)
            continue
        assert [(it["crop"], it["view"]) for it in rows] == [(j, v) for j in crops for v in range(K + 1)]
        for it in rows:
            assert (it["aug"] is None) == (it["view"] == 0)
            if it["aug"] is not None:
                a = it["aug"]
                assert VIEW_AUGMENT["gain_db"][0] <= a["gain_db"] <= VIEW_AUGMENT["gain_db"][1]
                assert 0 <= a["shift"] <= CLIP_SAMPLES - a["crop_len"] and a["crop_len"] >= 1
                if a["mix"] is not None:  # partners: other train-split files of the same source list
                    assert a["mix"] != rel and split_of(a["mix"], SEED, VAL) == "train"
                    assert VIEW_AUGMENT["mix_lambda"][0] <= a["lam"] <= VIEW_AUGMENT["mix_lambda"][1]
    assert any(it["aug"] and it["aug"]["mix"] for it in items) and any(it["aug"] and not it["aug"]["mix"]
                                                                     for it in items)  # fmt: skip
    counts = store.verify()
    assert counts["val"] == int((store.row_views[store.indices("val")] == 0).sum()) > 0


def _independent_view(it: dict) -> np.ndarray:
    """The augmented waveform of a row, rebuilt from its `aug` record in float64 (no tinyclap view code)."""
    a = it["aug"]
    wave = load_audio(it["path"], SAMPLE_RATE).astype(np.float64)
    s = int(round(it["offset"] * SAMPLE_RATE))
    crop = np.zeros(CLIP_SAMPLES)
    piece = wave[s : s + CLIP_SAMPLES]
    crop[: len(piece)] = piece
    view = np.zeros(CLIP_SAMPLES)
    view[a["shift"] : a["shift"] + a["crop_len"]] = crop[a["crop_start"] : a["crop_start"] + a["crop_len"]]
    view = np.clip(view * 10 ** (a["gain_db"] / 20), -1, 1)
    if a["mix"] is not None:
        p = load_audio(a["mix_path"], SAMPLE_RATE).astype(np.float64)
        ps = int(round(a["mix_offset"] * SAMPLE_RATE))
        partner = np.zeros(CLIP_SAMPLES)
        partner[: len(p[ps : ps + CLIP_SAMPLES])] = p[ps : ps + CLIP_SAMPLES]
        view = (1 - a["lam"]) * view + a["lam"] * partner
        view /= max(1.0, np.abs(view).max())
    return view.astype(np.float32)


def test_view_targets_are_the_teachers_embedding_of_the_augmented_wave(views_cache, teacher_ckpt) -> None:
    store = CacheStore(views_cache)
    teacher = load_teacher(teacher_ckpt).eval()
    rows = [i for i, it in enumerate(store.items) if it["aug"] is not None]
    mixed = [i for i in rows if store.items[i]["aug"]["mix"]][:3]
    gain_only = [i for i in rows if not store.items[i]["aug"]["mix"]][:3]
    assert mixed and gain_only
    for i in mixed + gain_only:
        x = torch.from_numpy(_independent_view(store.items[i]))[None]
        with torch.no_grad():
            expect = F.normalize(teacher.embed_waveform(x), dim=-1)[0]  # the teacher's own (conv) front end
        torch.testing.assert_close(torch.from_numpy(store.target(i).copy()), expect, atol=5e-5, rtol=0)
        clean = [j for j, it in enumerate(store.items) if it["path"] == store.items[i]["path"]
                 and it["crop"] == store.items[i]["crop"] and it["view"] == 0]  # fmt: skip
        assert not np.allclose(store.target(clean[0]), store.target(i), atol=1e-4)  # a view is not the clean crop


def test_views_are_bit_identical_on_rerun(views_cache, teacher_ckpt, clips, work) -> None:
    again = work / "views-again"
    build(str(teacher_ckpt), clips, again, workers=0)  # no decoding workers this time
    assert shard_bytes(again) == shard_bytes(views_cache)


def test_killed_build_resumes_to_the_identical_store(views_cache, teacher_ckpt, clips, work) -> None:
    out = work / "views-crash"

    def crash(path: Path) -> None:
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        build(str(teacher_ckpt), clips, out, on_shard=crash)
    assert len(CacheStore(out).shard_paths) == 1
    report = build(str(teacher_ckpt), clips, out)
    assert report.files_cached_before > 0
    assert shard_bytes(out) == shard_bytes(views_cache)
    assert CacheStore(out).identity() == CacheStore(views_cache).identity()


def test_zero_views_keeps_the_cache_format(teacher_ckpt, clips, work) -> None:
    out = work / "plain"
    build(str(teacher_ckpt), clips, out, views=0)
    cfg = json.loads((out / "cache.json").read_text())
    assert "views" not in cfg and "view_augment" not in cfg
    store = CacheStore(out)
    assert store.views == 0 and not store.row_views.any()
    assert all(set(it) == {"path", "rel", "offset", "crop", "split", "file"} for it in store.items)
    # the same cache.json bytes as a build that never heard of views
    out2 = work / "plain-default"
    build_cache(str(teacher_ckpt), [str(clips[0].parent)], out2, crops_per_clip=2, shard_size=10, batch_size=8,
                workers=0, progress=False, seed=SEED, val_fraction=VAL)  # fmt: skip
    assert (out2 / "cache.json").read_bytes() == (out / "cache.json").read_bytes()
    assert CacheStore(out2).identity() == store.identity()
    # the views cache's clean rows are the plain cache's rows (same crops, same split, same order)
    clean = CacheStore(work / "views")
    keys = [(it["rel"], it["crop"], it["split"]) for it in clean.items if it["view"] == 0]
    assert keys == [(it["rel"], it["crop"], it["split"]) for it in store.items]
    with pytest.raises(ValueError, match="views"):
        build(str(teacher_ckpt), clips, work / "too-many", views=65)


def test_cached_dataset_views(views_cache) -> None:
    store = CacheStore(views_cache)
    plain = CachedDataset(store, "train")
    clean_train = store.indices("train", view=0)
    assert np.array_equal(plain.rows, clean_train) and len(plain) == len(clean_train)
    for k in range(len(plain)):
        assert np.array_equal(plain[k][1].numpy(), store.target(int(clean_train[k])))
    ds = CachedDataset(store, "train", views=True)
    assert len(ds) == len(plain)  # one item per (file, crop): same epoch length
    seen: dict[int, set[int]] = {}
    targets = {i: store.target(i).tobytes() for i in store.indices("train")}
    torch.manual_seed(0)
    for _ in range(40):
        for k in range(len(ds)):
            t = ds[k][1].numpy().tobytes()
            seen.setdefault(k, set()).add(next(i for i, b in targets.items() if b == t))
    for k, rows in seen.items():  # every view of the crop drawn, nothing else
        assert rows == set(range(int(ds.rows[k]), int(ds.rows[k]) + K + 1))
    val = CachedDataset(store, "val", views=True)
    assert np.array_equal(val.rows, store.indices("val")) and not store.row_views[val.rows].any()


def test_spec_augment_masks_the_student_input_only() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 100, 64)
    y = spec_augment(x, g)
    changed = y != x
    assert changed.any()
    for b in range(x.shape[0]):
        assert torch.allclose(y[b][changed[b]], x[b].mean().expand(int(changed[b].sum())))
        full_t = changed[b].all(dim=1)  # masked frames (every band)
        full_f = changed[b].all(dim=0)  # masked bands (every frame)
        assert int(full_t.sum()) <= 2 * int(SPEC_TIME_MAX * 100) and int(full_f.sum()) <= 2 * SPEC_FREQ_MAX
        assert (changed[b] == (full_t[:, None] | full_f[None, :])).all()  # only whole frames and bands
    assert torch.equal(spec_augment(x, torch.Generator().manual_seed(0)), y)  # seeded


def test_recipes_and_training_use_views_and_spec_augment(views_cache, tmp_path, monkeypatch) -> None:
    paper, plus = resolve_recipe("paper"), resolve_recipe("plus")
    assert paper.is_paper and not paper.views and not paper.spec_augment
    assert not plus.views and not plus.spec_augment and not plus.is_paper  # the ablation left them out of plus
    assert not resolve_recipe("paper", views=True).is_paper and resolve_recipe("plus", views=True).views is True
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    step = loop_mod.train_step

    def record(model, optimizer, logmel, target, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append((logmel.clone(), target.clone()))
        return step(model, optimizer, logmel, target, **kw)

    monkeypatch.setattr(loop_mod, "train_step", record)
    kw = dict(student=STUDENT, cache=str(views_cache), stages=(1,), epochs1=1, batch_size=4, workers=0,
              device="cpu", progress=False, tensorboard=False, train_crop_seconds=1.0)  # fmt: skip
    from tinyclap.train.distill import distill

    distill(DistillConfig(out=str(tmp_path / "paper"), **kw))  # paper: the clean rows, unmasked
    store = CacheStore(views_cache)
    clean = {store.target(int(i)).tobytes() for i in store.indices("train", view=0)}
    all_rows = {store.target(int(i)).tobytes() for i in store.indices("train")}
    paper_targets = {t.numpy().tobytes() for _, tt in seen for t in tt}
    assert paper_targets == clean
    cfg = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert cfg["loss"]["views"] is False and cfg["loss"]["spec_augment"] is False

    seen.clear()
    masked = []
    monkeypatch.setattr(loop_mod, "spec_augment", lambda x: masked.append(x.clone()) or spec_augment(x))
    distill(DistillConfig(out=str(tmp_path / "aug"), views=True, spec_augment=True, **kw))
    assert len(masked) == len(seen)
    for (logmel, target), before in zip(seen, masked):
        assert {t.numpy().tobytes() for t in target} <= all_rows  # unmasked teacher targets of rows
        assert not torch.equal(logmel, before)  # the student saw the masked log-mel
    assert {t.numpy().tobytes() for _, tt in seen for t in tt} - clean  # some augmented views were drawn
    cfg = json.loads((tmp_path / "aug" / "config.json").read_text())
    assert cfg["loss"]["views"] is True and cfg["loss"]["spec_augment"] is True


def test_cli_flags_and_views_on_a_viewless_cache(teacher_ckpt, clips, work, tmp_path, capsys) -> None:
    from tinyclap.cli import build_parser
    from tinyclap.cli.distill import config_from_args

    base = ["distill", "--student", STUDENT, "--cache", "c", "--out", "o"]
    parse = build_parser().parse_args
    assert config_from_args(parse(base)).views is None  # the recipe's
    assert config_from_args(parse([*base, "--views", "--no-spec-augment"])).views is True
    c = config_from_args(parse([*base, "--no-views", "--spec-augment"]))
    assert c.views is False and c.spec_augment is True and not c.resolved_recipe().views
    assert parse(["cache", "--teacher", "t", "--data", "d", "--out", "o", "--views", "4"]).views == 4
    with pytest.raises(SystemExit):
        parse(["cache", "--teacher", "t", "--data", "d", "--out", "o", "--views", "65"])

    plain = work / "plain"  # built by test_zero_views_keeps_the_cache_format, or here
    if not (plain / "cache.json").exists():
        build(str(teacher_ckpt), clips, plain, views=0)
    out = tmp_path / "run"
    argv = ["distill", "--student", STUDENT, "--cache", str(plain), "--out", str(out), "--views", "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(plain) in err and "tinyclap cache --views K" in err and not out.exists()
    # the plus recipe (no views) on that cache trains, SpecAugment asked for on its own
    argv = ["distill", "--student", STUDENT, "--cache", str(plain), "--out", str(out), "--recipe", "plus",
            "--spec-augment", "--stages", "1", "--epochs1", "1", "--batch-size", "4", "--workers", "0",
            "--train-crop-seconds", "1", "--no-progress", "--no-tensorboard"]  # fmt: skip
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["loss"]["views"] is False and cfg["loss"]["spec_augment"] is True and cfg["loss"]["rel_weight"] > 0
