"""The distillation cache: build, skip bad files, exact targets, file-level split, resume, CLI, two ranks."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from helpers import chirp, us8k_clips
from torch import nn

from tinyclap.audio import CLIP_SAMPLES, SAMPLE_RATE, fit_clip, load_audio
from tinyclap.audio.frontend import FFTLogMel, LogMel
from tinyclap.cli import main
from tinyclap.models.teacher import load_teacher
from tinyclap.train.cache import (
    CachedDataset,
    CacheError,
    CacheOptions,
    CacheStore,
    build_cache,
    crop_starts,
    split_of,
)

N_US8K = 24
LONG_SECONDS = 12.0  # > 2 windows: yields 2 crops with crops_per_clip=2


@pytest.fixture(scope="module")
def sources(work: Path, us8k_root: Path) -> dict[str, object]:
    """24 real US8K clips (Ogg, 22.05 kHz, 4 s), a generated 12 s WAV at 44.1 kHz, a text file named .wav."""
    us8k = us8k_clips(us8k_root, 12) + us8k_clips(us8k_root, 12, fold=2)
    assert len(us8k) == N_US8K
    gen = work / "gen"
    gen.mkdir()
    long = gen / "long.wav"
    sf.write(long, chirp(LONG_SECONDS, SAMPLE_RATE), SAMPLE_RATE)
    bad = gen / "bad.wav"
    bad.write_text("this is text, not audio\n")
    return {"good": [*us8k, long], "long": long, "bad": bad, "all": [*us8k, long, bad]}


def build(teacher, sources, out: Path, **kw):  # noqa: ANN001, ANN201 - test helper
    kw = {"crops_per_clip": 2, "shard_size": 5, "batch_size": 8, "workers": 0, "progress": False, **kw}
    return build_cache(teacher, sources, out, **kw)


@pytest.fixture(scope="module")
def built(work: Path, teacher_ckpt: Path, sources: dict) -> tuple[Path, object]:
    out = work / "ref"
    # workers=2: the DataLoader decoding path
    return out, build(str(teacher_ckpt), sources["all"], out, workers=2, val_fraction=0.3)


def rows_by_key(store: CacheStore) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray, str]]:
    return {
        (it["path"], it["crop"]): (store.logmel(i).astype(np.float32), store.target(i).copy(), it["split"])
        for i, it in enumerate(store.items)
    }


def test_build_skips_and_reports_bad_file(built, sources) -> None:
    out, report = built
    assert report.files_read == N_US8K + 1
    assert report.crops_written == N_US8K + 2  # the 12 s clip gives 2 crops
    assert [s["path"] for s in report.skipped] == [str(sources["bad"])]
    assert "unreadable or unsupported audio format" in report.skipped[0]["problem"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["skipped"] == report.skipped and on_disk["crops_written"] == report.crops_written
    assert on_disk["store_rows"] == N_US8K + 2 and on_disk["ranks_missing"] == []
    assert report.teacher_input == "logmel"  # CLAP teacher at 44.1 kHz: fed the shared front end


def test_shapes_dtypes_and_config(built, sources) -> None:
    out, _ = built
    store = CacheStore(out)
    cfg = store.config
    assert cfg["format"] == "tinyclap-cache/1" and cfg["n_frames"] == 690 and cfg["n_mels"] == 64
    assert cfg["embed_dim"] == store.embed_dim == 64 and cfg["teacher"]["sample_rate"] == SAMPLE_RATE
    assert cfg["frontend"] == LogMel().config() and len(cfg["teacher"]["sha256"]) == 64
    assert len(store) == N_US8K + 2 and len(store.shard_paths) >= 5
    assert store.logmel(0).dtype == np.float16 and store.logmel(0).shape == (690, 64)
    assert store.target(-1).dtype == np.float32 and store.target(-1).shape == (64,)
    counts = store.verify()
    assert counts["rows"] == N_US8K + 2 and counts["files"] == N_US8K + 1
    assert sorted(np.concatenate([store.indices("train"), store.indices("val")]).tolist()) == list(
        range(len(store))
    )
    long_rows = [it for it in store.items if it["path"] == str(sources["long"])]
    assert [it["crop"] for it in long_rows] == [0, 1]
    assert long_rows[1]["offset"] - long_rows[0]["offset"] >= 5.0  # non-overlapping
    assert long_rows[1]["offset"] + 5.0 <= LONG_SECONDS + 1e-9

    ds = CachedDataset(out, split="all")
    x, y = ds[3]
    assert x.dtype == torch.float16 and x.shape == (690, 64) and y.dtype == torch.float32 and y.shape == (64,)
    assert len(pickle.dumps(ds)) < 20_000  # memory maps are not pickled (spawned DataLoader workers)
    loader = torch.utils.data.DataLoader(CachedDataset(store, "train"), batch_size=4, num_workers=2)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 690, 64) and yb.shape == (4, 64)
    torch.testing.assert_close(yb.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)


def test_targets_are_the_teachers_embedding_of_the_same_crop(built, teacher_ckpt, sources) -> None:
    out, _ = built
    store = CacheStore(out)
    teacher = load_teacher(teacher_ckpt)
    frontend = LogMel()
    picks = [0, 7] + [i for i, it in enumerate(store.items) if it["path"] == str(sources["long"])]
    for i in picks:
        it = store.items[i]
        wave = load_audio(it["path"])
        start = int(round(it["offset"] * SAMPLE_RATE))
        crop = fit_clip(wave[start : start + CLIP_SAMPLES], CLIP_SAMPLES)  # zero-padded if short
        x = torch.from_numpy(crop)[None]
        expect = teacher.embed_waveform(x)[0]  # the teacher's own (conv) front end, from the waveform
        torch.testing.assert_close(torch.from_numpy(store.target(i).copy()), expect, atol=2e-5, rtol=0)
        mel = frontend(x)[0].numpy()
        np.testing.assert_allclose(store.logmel(i).astype(np.float32), mel, atol=0.07, rtol=2e-3)


def test_split_is_by_file_and_deterministic(built, teacher_ckpt, sources, work) -> None:
    out, _ = built
    again = build(
        str(teacher_ckpt), sources["all"], work / "again", shard_size=100, batch_size=3, val_fraction=0.3
    )
    assert again.files_read == N_US8K + 1
    a, b = rows_by_key(CacheStore(out)), rows_by_key(CacheStore(work / "again"))
    assert a.keys() == b.keys()
    splits = {}
    for (path, crop), (_, tgt, split) in a.items():
        assert splits.setdefault(path, split) == split  # every crop of a file in one split
        np.testing.assert_allclose(b[(path, crop)][1], tgt, atol=1e-5)
        assert b[(path, crop)][2] == split
    assert set(splits.values()) == {"train", "val"}
    for it in CacheStore(out).items:
        assert it["split"] == split_of(it["rel"], 1234, 0.3)
        assert it["rel"] == Path(it["path"]).name  # single files: relative to their own folder


def test_resume_after_crash_equals_uninterrupted(built, teacher_ckpt, sources, work) -> None:
    out = work / "crash"
    written: list[Path] = []

    def crash_after_three(path: Path) -> None:
        written.append(path)
        if len(written) == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        build(str(teacher_ckpt), sources["all"], out, val_fraction=0.3, on_shard=crash_after_three)
    assert len(CacheStore(out).shard_paths) == 3
    # the last finished shard is damaged too, and a killed run left its shard in flight behind
    (written[-1] / "logmel.npy").write_bytes((written[-1] / "logmel.npy").read_bytes()[:1000])
    (out / "shards" / ".tmp-r00-00003-999").mkdir()
    with pytest.raises(CacheError, match="logmel.npy"):
        CacheStore(out)
    first_two = sum(len(json.loads((p / "items.json").read_text())) for p in written[:2])

    report = build(str(teacher_ckpt), sources["all"], out, val_fraction=0.3)
    assert len(report.corrupt_shards) == 1 and written[-1].name in report.corrupt_shards[0]
    assert report.files_cached_before == first_two  # US8K files give one crop each
    assert not (out / "shards" / ".tmp-r00-00003-999").exists()
    resumed, reference = rows_by_key(CacheStore(out)), rows_by_key(CacheStore(built[0]))
    assert resumed.keys() == reference.keys()
    for key, (mel, tgt, split) in reference.items():
        np.testing.assert_allclose(resumed[key][0], mel, atol=0.07, rtol=2e-3)
        np.testing.assert_allclose(resumed[key][1], tgt, atol=1e-5)
        assert resumed[key][2] == split
    CacheStore(out).verify()

    # nothing left to do: a third run reads no file
    third = build(str(teacher_ckpt), sources["all"], out, val_fraction=0.3)
    assert third.files_read == 0 and third.files_cached_before == N_US8K + 1


def test_other_settings_are_refused_unless_overwrite(built, teacher_ckpt, sources, work) -> None:
    out = work / "small"
    files = sources["good"][:2]
    build(str(teacher_ckpt), files, out)
    with pytest.raises(CacheError, match=r"different settings \(crops_per_clip: 2 -> 1"):
        build(str(teacher_ckpt), files, out, crops_per_clip=1)
    report = build(str(teacher_ckpt), files, out, crops_per_clip=1, overwrite=True)
    assert report.files_read == 2 and CacheStore(out).config["crops_per_clip"] == 1
    (work / "foreign").mkdir()
    (work / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty"):
        build(str(teacher_ckpt), files, work / "foreign", overwrite=True)


def test_cli_cache_with_manifest_spec(teacher_ckpt, sources, work, capsys) -> None:
    manifest = work / "list.txt"
    manifest.write_text("\n".join(str(p) for p in [*sources["good"][:3], sources["bad"]]) + "\n")
    out = work / "cli"
    argv = ["cache", "--teacher", str(teacher_ckpt), "--data", f"manifest:{manifest}", "--out", str(out)]
    argv += ["--workers", "0", "--no-progress", "--verify"]
    assert main([*argv, "--strict"]) == 1  # the bad file was skipped
    printed = capsys.readouterr()
    assert "3 files read" in printed.out and "bad.wav" in printed.out and "verified" in printed.out
    assert main([*argv, "--json"]) == 0  # resume: nothing left but the bad file
    rep = json.loads(capsys.readouterr().out)
    assert rep["files_cached_before"] == 3 and rep["files_read"] == 0 and len(rep["skipped"]) == 1
    items = CacheStore(out).items
    assert {it["rel"] for it in items} == {
        f"{Path(p).parent.name}/{Path(p).name}" for p in sources["good"][:3]
    }
    # two specs listing the same file: it is cached once
    out2 = work / "cli2"
    f0 = str(sources["good"][0])
    assert main(["cache", "--teacher", str(teacher_ckpt), "--data", f0, "--data", f"manifest:{manifest}",
                 "--out", str(out2), "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    assert len(CacheStore(out2)) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a rank process: a pure-torch teacher keeps it light (no transformers import); RANK/WORLD_SIZE come from env
RANK_SCRIPT = """
import sys, torch, torch.nn.functional as F
from tinyclap.train.cache import build_cache

class Stats(torch.nn.Module):
    sample_rate, embed_dim = 44100, 4
    def embed_waveform(self, w):
        feats = [w.mean(1), w.std(1), w.abs().amax(1), w[:, :999].std(1) + 1e-3]
        return F.normalize(torch.stack(feats, 1), dim=-1)

build_cache(Stats(), [sys.argv[1]], sys.argv[2], workers=0, progress=False, shard_size=2)
"""


def test_two_ranks_under_torchrun_env(sources, work) -> None:
    manifest = work / "ranks.txt"
    files = sources["good"][:9]
    manifest.write_text("\n".join(str(p) for p in files) + "\n")
    out = work / "ranks"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", OMP_NUM_THREADS="1")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-c", RANK_SCRIPT, str(manifest), str(out)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert any(n.startswith("r00-") for n in names) and any(n.startswith("r01-") for n in names)
    store = CacheStore(out)
    assert len(store) == 9 and sorted(it["path"] for it in store.items) == sorted(map(str, files))
    for shard in store.shard_paths:  # rank r took the files i with i % 2 == r
        rank = int(shard.name[1:3])
        assert {it["file"] % 2 for it in json.loads((shard / "items.json").read_text())} == {rank}
    store.verify()
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["files_read"] == 9 and report["ranks_missing"] == []


class RateTeacher(nn.Module):
    """A generic 16 kHz teacher: records what it is given; embedding = a few statistics of the waveform."""

    sample_rate = 16000
    embed_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def embed_waveform(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, 4)
        self.seen.append(wave.shape[-1])
        feats = torch.stack([wave.mean(1), wave.std(1), wave.abs().amax(1), wave[:, :1000].std(1) + 1e-3], 1)
        return F.normalize(feats, dim=-1)


def test_generic_teacher_at_its_own_rate_sees_the_same_crop(sources, work) -> None:
    teacher = RateTeacher()
    report = build(teacher, [sources["long"], *sources["good"][:2]], work / "rate", crop="random")
    assert report.teacher_input == "waveform" and set(teacher.seen) == {80000}  # 5 s at 16 kHz
    store = CacheStore(work / "rate")
    assert store.config["teacher"]["sample_rate"] == 16000 and store.config["crop"] == "random"
    wave = load_audio(sources["long"])
    for i, it in enumerate(store.items):
        if it["path"] != str(sources["long"]):
            continue
        start = int(round(it["offset"] * SAMPLE_RATE))
        crop = wave[start : start + CLIP_SAMPLES]
        at16 = soxr.resample(crop, SAMPLE_RATE, 16000, quality="HQ").astype(np.float32)
        expect = teacher.embed_waveform(torch.from_numpy(at16)[None])[0].numpy()
        np.testing.assert_allclose(store.target(i), expect, atol=1e-5)


def test_crop_starts() -> None:
    L = CLIP_SAMPLES
    assert crop_starts(L // 2, L, 3) == [0]
    assert crop_starts(L, L, 3) == [0]
    assert crop_starts(int(1.5 * L), L, 1) == [(int(1.5 * L) - L) // 2]  # the centre crop, as fit_clip
    wave = np.arange(int(1.5 * L), dtype=np.float32)
    assert fit_clip(wave, L)[0] == crop_starts(wave.size, L, 1)[0]
    for n in (2 * L, 2 * L + 7, int(3.7 * L), 10 * L + 3):
        for mode in ("even", "random"):
            for k in (1, 2, 3, 5):
                starts = crop_starts(n, L, k, mode, np.random.default_rng(k))
                assert len(starts) == min(k, n // L)
                assert all(b - a >= L for a, b in zip(starts, starts[1:]))  # non-overlapping
                assert starts[0] >= 0 and starts[-1] + L <= n
    assert crop_starts(3 * L, L, 3, "even") == [0, L, 2 * L]
    with pytest.raises(ValueError, match="crop mode"):
        crop_starts(3 * L, L, 1, "middle")  # type: ignore[arg-type]


def test_split_of_is_stable() -> None:
    # pinned: the split must not change across versions, machines or Python hash seeds
    assert [i for i in range(40) if split_of(f"fold1/{i}.wav", 1234, 0.1) == "val"] == [27, 35]
    assert split_of("a.wav", 1, 0.0) == "train" and split_of("a.wav", 1, 0.999999) == "val"
    frac = np.mean([split_of(f"{i}.wav", 7, 0.25) == "val" for i in range(4000)])
    assert 0.22 < frac < 0.28


def test_fft_logmel_matches_logmel(us8k_root, rng) -> None:
    path = us8k_clips(us8k_root, 1)[0]
    real = fit_clip(load_audio(path), CLIP_SAMPLES)
    x = torch.from_numpy(np.stack([real, 0.1 * rng.standard_normal(CLIP_SAMPLES).astype(np.float32)]))
    ref = LogMel()(x)
    got = FFTLogMel()(x)
    assert got.shape == ref.shape == (2, 690, 64)
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-4)


def test_options_are_checked_before_anything_is_written(sources, work) -> None:
    out = work / "never"
    with pytest.raises(TypeError, match="crops_per_clp"):
        build_cache(RateTeacher(), [sources["long"]], out, crops_per_clp=2)  # a misspelt option
    with pytest.raises(ValueError, match="val_fraction"):
        build_cache(RateTeacher(), [sources["long"]], out, CacheOptions(val_fraction=1.0))
    assert not out.exists()
