"""Distillation trainer: loss, both stages, best-by-validation, exact resume, CLI run folder, DDP, on the fly.

Everything runs on a real cache built once from 16 UrbanSound8K clips with a tiny random teacher. The
library-level tests crop the cached log-mels to 64 frames (a 5 s clip is 690) to stay fast on 2 CPU cores;
the CLI and DDP runs use the full 5 s items.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_tensors, one_torch_thread, read_tensors, tiny_teacher, us8k_clips
from torch.utils.data import Dataset

import tinyclap.train.loop as loop_mod
from tinyclap.cli import main as cli_main
from tinyclap.models import load_model, load_student
from tinyclap.models.students import create_student
from tinyclap.models.teacher import load_teacher, save_teacher
from tinyclap.train.cache import CachedDataset, CacheStore, build_cache
from tinyclap.train.distill import DistillConfig, distill
from tinyclap.train.loop import train_stage
from tinyclap.train.metrics import METRIC_FIELDS
from tinyclap.train.targets import TeacherTargets, WaveformDataset, distill_loss, select_targets

STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"  # the smallest registered student
N_FILES = 16
SHORT_FRAMES = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    """One intra-op thread for the whole module (helpers.one_torch_thread)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, us8k_root: Path) -> dict:
    """A tiny random teacher (saved) and a cache of 16 US8K clips (about 11 train / 5 val)."""
    root = tmp_path_factory.mktemp("distill")
    teacher = tiny_teacher().eval()
    save_teacher(teacher, root / "teacher")
    files = us8k_clips(us8k_root, N_FILES)
    build_cache(teacher, files, root / "cache", val_fraction=0.25, workers=0, batch_size=8, progress=False)
    store = CacheStore(root / "cache")
    assert len(store.indices("val")) >= 2 and len(store.indices("train")) >= 8
    return {
        "root": root,
        "cache": root / "cache",
        "store": store,
        "teacher": root / "teacher.safetensors",
        "files": files,
    }


class Short(Dataset):
    """Cache items with the log-mel cut to its first frames: same kind of item, much cheaper steps."""

    def __init__(self, ds: Dataset, frames: int = SHORT_FRAMES) -> None:
        self.ds, self.frames = ds, frames

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        logmel, target = self.ds[i]
        return logmel[: self.frames], target


def short_splits(setup: dict) -> tuple[Dataset, Dataset]:
    return Short(CachedDataset(setup["store"], "train")), Short(CachedDataset(setup["store"], "val"))


# ------------------------------------------------------------------------------------------------ units


def test_loss_is_minus_cosine_and_target_dims_renormalise() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 8, generator=g), F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    expected = -(F.normalize(s, dim=-1) * t).sum(-1).mean()
    torch.testing.assert_close(distill_loss(s, t), expected)
    assert distill_loss(t * 3.0, t).item() == pytest.approx(-1.0, abs=1e-6)  # scale-free, perfect = -1
    dims = torch.tensor([1, 4, 6])
    sel = select_targets(t, dims)
    torch.testing.assert_close(sel, F.normalize(t[:, [1, 4, 6]], dim=-1))
    torch.testing.assert_close(sel.norm(dim=-1), torch.ones(5))
    assert select_targets(t, None) is t


def test_command_help_shows_the_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = DistillConfig(out="x")
    with pytest.raises(SystemExit):
        cli_main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    for option, value in [
        ("--epochs1 EPOCHS1", cfg.epochs1), ("--epochs2 EPOCHS2", cfg.epochs2), ("--lr1 LR1", cfg.lr1),
        ("--lr2 LR2", cfg.lr2), ("--batch-size BATCH_SIZE", cfg.batch_size), ("--seed SEED", cfg.seed),
        ("--patience PATIENCE", cfg.plateau_patience), ("--factor FACTOR", cfg.plateau_factor),
        ("--val-every VAL_EVERY", cfg.val_every), ("--workers WORKERS", cfg.workers),
        ("--ckpt-every CKPT_EVERY", cfg.ckpt_every), ("--val-fraction VAL_FRACTION", cfg.val_fraction),
        ("--device DEVICE", cfg.device), ("--stages STAGES", ",".join(map(str, cfg.stages))),
    ]:  # fmt: skip
        shown = text.rsplit(option, 1)[1].split("(default: ", 1)[1].split(")", 1)[0]  # its help, not the usage
        assert shown == str(value), (option, shown, value)
    # the parsed defaults are the config's defaults, field for field
    from tinyclap.cli import build_parser
    from tinyclap.cli.distill import config_from_args

    assert config_from_args(build_parser().parse_args(["distill", "--out", "x"])) == cfg
    crop = build_parser().parse_args(["distill", "--out", "x", "--train-crop-seconds", "2.5"])
    assert config_from_args(crop).train_crop_seconds == 2.5
    pooled = build_parser().parse_args(["distill", "--out", "x", "--pool-window", "1"])
    assert config_from_args(pooled).pool_window == 1.0
    # the paper's recipe
    assert (cfg.lr1, cfg.lr2, cfg.epochs1, cfg.epochs2, cfg.batch_size, cfg.seed) == (
        0.012,
        0.004,
        100,
        10,
        64,
        1234,
    )
    assert (cfg.plateau_factor, cfg.plateau_patience, cfg.stages) == (0.1, 10, (1, 2))


def test_stage_options_for_a_run_take_each_stage_schedule() -> None:
    from tinyclap.train.config import StageOptions

    cfg = DistillConfig(out="x", epochs1=3, epochs2=2, lr1=0.1, lr2=0.2, batch_size=8, ckpt_every=7, workers=0)
    s1, s2 = StageOptions.for_run(cfg, 1), StageOptions.for_run(cfg, 2, out_dir="o", tag_epoch=True)
    assert (s1.stage, s1.epochs, s1.lr, s2.stage, s2.epochs, s2.lr) == (1, 3, 0.1, 2, 2, 0.2)
    assert (s2.batch_size, s2.ckpt_every, s2.workers, s2.out_dir, s2.tag_epoch) == (8, 7, 0, "o", True)
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        StageOptions(stage=1, epochs=1, lr=0.1, resume=True).validate()


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--cache DIR, or --teacher"):
        DistillConfig(out=str(tmp_path), student=STUDENT).validate()
    with pytest.raises(ValueError, match="--init"):
        DistillConfig(out=str(tmp_path), student=STUDENT, cache="c", stages=(2,)).validate()
    with pytest.raises(ValueError, match="stages"):
        DistillConfig(out=str(tmp_path), student=STUDENT, cache="c", stages=(2, 1)).validate()
    assert cli_main(["distill", "--student", STUDENT, "--out", str(tmp_path / "r")]) == 1


def test_training_crops_are_seeded_per_epoch_and_item(animals_dir: Path) -> None:
    paths = [animals_dir / "owl.mp3", animals_dir / "dog.mp3"]  # both longer than 5 s
    ds = WaveformDataset(paths, train=True, seed=7)
    a, _ = ds[(0, 0)]
    assert a.shape == (220500,)
    assert torch.equal(a, ds[(0, 0)][0])  # reproducible (resume, workers)
    assert not torch.equal(a, ds[(1, 0)][0])  # a new crop each epoch
    val = WaveformDataset(paths, train=False)
    assert torch.equal(val[0][0], val[0][0])


# ------------------------------------------------------------------------------------------- one stage


def test_stage2_trains_only_the_projection(setup: dict) -> None:
    train, val = short_splits(setup)
    torch.manual_seed(1)
    student = create_student(STUDENT, embed_dim=64)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    rng, flags = (
        torch.get_rng_state(),
        (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()),
    )
    res = train_stage(student, train, val, stage=2, epochs=1, lr=0.004, batch_size=4, progress=False)
    # the run seeds and sets flags only inside itself
    assert torch.equal(rng, torch.get_rng_state())
    assert flags == (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    after = student.state_dict()
    base = [k for k in before if k.startswith("base.")]
    assert any("running_mean" in k for k in base) and any("num_batches_tracked" in k for k in base)
    for k in base:  # weights AND BatchNorm running statistics, bit for bit
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["projection.linear1.weight"], after["projection.linear1.weight"])
    assert all(p.requires_grad for p in student.parameters())  # flags restored after the stage
    assert res.best_epoch == 1 and res.steps == 3


def test_target_dims_train_a_smaller_projection(setup: dict) -> None:
    train, val = short_splits(setup)
    dims = [3, 5, 8, 13, 21, 34, 40, 63]
    torch.manual_seed(4)
    student = create_student(STUDENT, embed_dim=len(dims))
    res = train_stage(
        student, train, val, stage=2, epochs=1, lr=0.004, batch_size=4, target_dims=dims, progress=False
    )
    logmel = torch.stack([val[i][0] for i in range(len(val))]).float()
    target = torch.stack([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        cos = F.cosine_similarity(student.eval()(logmel), F.normalize(target[:, dims], dim=-1), dim=-1)
    assert res.best_val_cosine == pytest.approx(cos.mean().item(), abs=1e-5)
    with pytest.raises(ValueError, match="target_dims"):
        train_stage(student, train, val, stage=2, epochs=1, lr=0.004, target_dims=dims[:4], progress=False)


def test_pool_window_trains_and_validates_the_pooled_decision(setup: dict) -> None:
    """--pool-window: training and validation run the student as a device does (backbone per window, features
    averaged, head once); the best validation cosine is that decision's, window by window like PooledWindows."""
    from tinyclap.audio.io import window_starts
    from tinyclap.train.loop import PooledWindows

    train, val = short_splits(setup)
    torch.manual_seed(5)
    student = create_student(STUDENT, embed_dim=64)
    res = train_stage(student, train, val, stage=1, epochs=1, lr=0.004, batch_size=4, pool_frames=24,
                      progress=False)
    logmel = torch.stack([val[i][0] for i in range(len(val))]).float()  # (B, 64, M): windows at 0, 24, 40
    target = torch.stack([val[i][1] for i in range(len(val))])
    starts = window_starts(SHORT_FRAMES, 24)
    assert starts == [0, 24, 40]
    with torch.no_grad():
        student.eval()
        feats = torch.stack([student.features(logmel[:, s : s + 24]) for s in starts]).mean(0)
        by_hand = F.cosine_similarity(student.head(feats), target, dim=-1).mean().item()
        pooled = F.cosine_similarity(PooledWindows(student, 24)(logmel), target, dim=-1).mean().item()
    assert pooled == pytest.approx(by_hand, abs=1e-5)
    assert res.best_val_cosine == pytest.approx(by_hand, abs=1e-5)
    assert PooledWindows(student, 24).state_dict().keys() == {f"student.{k}" for k in student.state_dict()}
    with pytest.raises(ValueError, match="pool-window"):
        DistillConfig(out="x", cache="c", student=STUDENT, pool_window=9.0).validate()


def test_pool_window_shorter_than_an_mcu_student_takes_is_refused(setup: dict, tmp_path: Path) -> None:
    cfg = DistillConfig(out=str(tmp_path / "run"), cache=str(setup["cache"]), student="mcu-s", pool_window=0.2,
                        epochs1=1, epochs2=1, progress=False, tensorboard=False, workers=0)
    with pytest.raises(ValueError, match="28 log-mel frames; .* needs at least 63"):
        distill(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_best_checkpoint_is_chosen_on_validation_loss(setup: dict, tmp_path: Path, monkeypatch) -> None:
    train, val = short_splits(setup)
    scripted = iter([-0.5, -0.9, -0.7])  # epoch 2 is best on validation; training loss keeps falling

    def fake_validate(*args, **kwargs) -> tuple[float, float]:
        v = next(scripted)
        return v, -v

    monkeypatch.setattr(loop_mod, "_validate", fake_validate)
    torch.manual_seed(2)
    student = create_student(STUDENT, embed_dim=64)
    res = train_stage(
        student, train, val, stage=2, epochs=3, lr=0.004, batch_size=4, out_dir=tmp_path, progress=False
    )
    assert res.best_epoch == 2 and res.best_val_loss == -0.9 and res.best_val_cosine == 0.9
    assert [r["val_loss"] for r in res.history] == [-0.5, -0.9, -0.7]
    best_cfg = json.loads((tmp_path / "best.json").read_text())
    assert best_cfg["epoch"] == 2 and best_cfg["val_loss"] == -0.9
    best, last = read_tensors(tmp_path / "best.safetensors"), read_tensors(tmp_path / "last.safetensors")
    # the student ends with the best (epoch 2) weights, not the last (epoch 3) ones
    assert_same_tensors({k: v for k, v in student.state_dict().items()}, best)
    w = "projection.linear1.weight"
    assert not torch.equal(best[w], last[f"model.{w}"])
    assert load_student(tmp_path / "best.json").name == STUDENT  # best is a loadable student


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    from tinyclap.train.config import StageOptions

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.01)
    sched = loop_mod._scheduler(opt, StageOptions(stage=1, epochs=5, lr=0.01, schedule="cosine"), 200)
    lrs = []
    for _ in range(200):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warmup = round(loop_mod.WARMUP * 200)  # 10 steps
    assert lrs[0] == pytest.approx(0.01 / warmup) and lrs[warmup - 1] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(lrs[:warmup - 1], lrs[1:warmup]))  # rising, then falling
    assert all(a >= b for a, b in zip(lrs[warmup - 1:], lrs[warmup:]))
    assert lrs[warmup + 95] == pytest.approx(0.005, rel=0.02)  # half-way through the decay: half the peak
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # 0 after the stage's last step
    plateau = loop_mod._scheduler(opt, StageOptions(stage=1, epochs=5, lr=0.01), 200)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)  # the paper's, the default
    with pytest.raises(ValueError, match="--schedule must be one of plateau, cosine"):
        DistillConfig(out="x", student=STUDENT, cache="c", schedule="linear").resolved_recipe()


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_resume_mid_epoch_gives_identical_weights(setup: dict, tmp_path: Path, schedule: str) -> None:
    train, val = short_splits(setup)  # 11 train items, batch 4: 3 steps per epoch
    kw = dict(stage=1, epochs=2, lr=0.012, batch_size=4, ckpt_every=2, progress=False, schedule=schedule)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(3)
        return create_student(STUDENT, embed_dim=64)

    ref = fresh()
    res_ref = train_stage(ref, train, val, out_dir=tmp_path / "a", **kw)

    class Killed(Exception):
        pass

    def kill_after_5(step: int) -> None:
        if step == 5:  # epoch 2, batch 2; the last checkpoint is step 4 (epoch 2, batch 1)
            raise Killed

    with pytest.raises(Killed):
        train_stage(fresh(), train, val, out_dir=tmp_path / "b", step_hook=kill_after_5, **kw)
    state = json.loads((tmp_path / "b" / "last.json").read_text())["progress"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)

    resumed = create_student(STUDENT, embed_dim=64)  # other init: everything comes from the checkpoint
    res = train_stage(resumed, train, val, out_dir=tmp_path / "b", resume=True, **kw)
    assert_same_tensors(ref.state_dict(), resumed.state_dict())  # the best (final) student, bit for bit
    assert_same_tensors(
        read_tensors(tmp_path / "a" / "last.safetensors"), read_tensors(tmp_path / "b" / "last.safetensors"), "model."
    )
    assert_same_tensors(
        read_tensors(tmp_path / "a" / "last.safetensors"), read_tensors(tmp_path / "b" / "last.safetensors"), "optim."
    )
    assert [r["val_loss"] for r in res.history] == [r["val_loss"] for r in res_ref.history]
    assert [r["train_loss"] for r in res.history] == pytest.approx([r["train_loss"] for r in res_ref.history])
    assert res.steps == res_ref.steps == 6
    assert [r["lr"] for r in res.history] == [r["lr"] for r in res_ref.history]
    if schedule == "cosine":  # stepped per optimiser step, resumed where it stopped: 0 after the last step
        assert res.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and res.history[0]["lr"] < 0.012
    rows = (tmp_path / "b" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + one row per epoch, no duplicate from the killed run


# ------------------------------------------------------------------------------------- CLI run folder


@pytest.fixture(scope="module")
def cli_run(setup: dict) -> Path:
    run = setup["root"] / "run"
    argv = ["distill", "--student", STUDENT, "--cache", str(setup["cache"]), "--out", str(run)]
    argv += ["--epochs1", "1", "--epochs2", "1", "--batch-size", "8", "--workers", "0", "--no-progress"]
    assert cli_main(argv) == 0
    return run


def test_cli_run_folder_and_final_student(cli_run: Path, setup: dict) -> None:
    for name in ("config.json", "metrics.csv", "train.log", "student.safetensors", "student.json"):
        assert (cli_run / name).is_file(), name
    for stage in (1, 2):
        for name in ("best.safetensors", "best.json", "last.safetensors", "last.json"):
            assert (cli_run / f"stage{stage}" / name).is_file(), (stage, name)
    assert any((cli_run / "tensorboard").iterdir())
    cfg = json.loads((cli_run / "config.json").read_text())
    assert cfg["student"] == STUDENT and cfg["lr1"] == 0.012 and cfg["stages"] == [1, 2]
    assert cfg["world_size"] == 1 and cfg["embed_dim"] == 64 and "torch" in cfg["versions"]
    assert cfg["cache_info"]["config"]["format"] == "tinyclap-cache/1"
    assert cfg["teacher_info"]["sha256"] == setup["store"].config["teacher"]["sha256"]
    rows = (cli_run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].split(",") == list(METRIC_FIELDS) and len(rows) == 3
    assert "stage 2: best val_cosine" in (cli_run / "train.log").read_text()

    model = load_model(cli_run)  # the self-describing final student
    assert model.embed_dim == 64 and model.name == STUDENT
    emb = model.embed_waveform(torch.randn(2, 44100))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    meta = json.loads((cli_run / "student.json").read_text())
    assert meta["kind"] == "student" and meta["teacher"]["embed_dim"] == 64
    assert meta["val_cosine"] == pytest.approx(meta["distill"]["stage2"]["val_cosine"])


def test_distillation_lowers_validation_loss(cli_run: Path, setup: dict) -> None:
    val = CachedDataset(setup["store"], "val")
    logmel = torch.stack([val[i][0] for i in range(len(val))]).float()
    target = torch.stack([val[i][1] for i in range(len(val))])
    torch.manual_seed(1234)  # the run's seed: the same initial student
    initial = create_student(STUDENT, embed_dim=64).eval()
    with torch.no_grad():
        before = distill_loss(initial(logmel), target).item()
        after = distill_loss(load_student(cli_run)(logmel), target).item()
    meta = json.loads((cli_run / "student.json").read_text())
    assert after == pytest.approx(-meta["val_cosine"], abs=1e-5)
    assert after < before - 0.1, (before, after)


def test_stage2_keeps_stage1_base_bit_identical(cli_run: Path) -> None:
    s1, final = read_tensors(cli_run / "stage1" / "best.safetensors"), read_tensors(cli_run / "student.safetensors")
    assert_same_tensors(s1, final, "base.")  # incl. BatchNorm running statistics
    assert not torch.equal(s1["projection.linear2.weight"], final["projection.linear2.weight"])


def test_stage2_alone_from_init_reproduces_the_two_stage_run(
    cli_run: Path, setup: dict, tmp_path: Path
) -> None:
    run = tmp_path / "s2"
    argv = ["distill", "--stages", "2", "--init", str(cli_run / "stage1" / "best.json"), "--out", str(run)]
    argv += ["--cache", str(setup["cache"]), "--epochs2", "1", "--batch-size", "8", "--workers", "0"]
    assert cli_main([*argv, "--no-progress", "--no-tensorboard"]) == 0
    assert not (run / "stage1").exists()
    # each stage seeds itself: stage 2 from stage 1's best gives the same student as the full run
    assert_same_tensors(read_tensors(cli_run / "student.safetensors"), read_tensors(run / "student.safetensors"))


def test_killed_run_resumed_from_cli_matches_uninterrupted(
    cli_run: Path, setup: dict, tmp_path: Path
) -> None:
    run = tmp_path / "run"

    class Killed(Exception):
        pass

    def kill(stage: int, step: int) -> None:
        if stage == 2 and step == 2:  # stage 2, epoch 1, second (last) batch: before its epoch end
            raise Killed

    config = DistillConfig(
        out=str(run), student=STUDENT, cache=str(setup["cache"]), epochs1=1, epochs2=1, batch_size=8,
        workers=0, ckpt_every=1, progress=False,
    )  # fmt: skip
    with pytest.raises(Killed):
        distill(config, step_hook=kill)
    assert not (run / "student.safetensors").exists()
    argv = ["distill", "--student", STUDENT, "--cache", str(setup["cache"]), "--out", str(run)]
    argv += ["--epochs1", "1", "--epochs2", "1", "--batch-size", "8", "--workers", "0", "--no-progress"]
    assert cli_main(argv) == 1  # an existing run is never overwritten silently
    assert cli_main([*argv, "--resume"]) == 0
    assert_same_tensors(read_tensors(cli_run / "student.safetensors"), read_tensors(run / "student.safetensors"))
    assert_same_tensors(
        read_tensors(cli_run / "stage2" / "last.safetensors"),
        read_tensors(run / "stage2" / "last.safetensors"),
        "model.",
    )
    assert cli_main([*argv, "--resume", "--batch-size", "4"]) == 1  # different settings: refused


# ------------------------------------------------------------------------------------------- recipes


def test_plus_recipe_trains_end_to_end_and_logs_its_terms(setup: dict, tmp_path: Path, capsys) -> None:
    """The `plus` recipe with the text KL turned on (`--kl-weight 1`) on the real US8K cache: the text bank added
    afterwards (US8K's class names excluded), every term logged in metrics.csv, the recipe recorded and held fixed
    on resume. Whether plus beats paper is the ablation's question (tests/test_ablation.py), not this test's."""
    from tinyclap.models.teacher import bundled_tokenizer_dir

    cache, run = setup["cache"], tmp_path / "plus"
    argv = ["distill", "--student", STUDENT, "--cache", str(cache), "--out", str(run), "--recipe", "plus"]
    argv += ["--kl-weight", "1", "--epochs1", "1", "--epochs2", "1", "--batch-size", "8", "--workers", "0"]
    argv += ["--no-progress", "--train-crop-seconds", "1"]
    if not (cache / "text_bank.npy").exists():
        assert cli_main(argv) == 1  # no bank yet: one line saying how to add it, and no run folder
        assert "--add-text-bank" in capsys.readouterr().err and not run.exists()
    bank_argv = ["cache", "--add-text-bank", "default", "--out", str(cache), "--teacher", str(setup["teacher"])]
    bank_argv += ["--tokenizer", str(bundled_tokenizer_dir()), "--text-bank-exclude", "us8k", "--device", "cpu"]
    assert cli_main(bank_argv) == 0
    bank_info = json.loads((cache / "text_bank.json").read_text())
    assert "a police siren" in bank_info["excluded"] and bank_info["labels"] == 384 - len(bank_info["excluded"])
    assert cli_main(argv) == 0

    cfg = json.loads((run / "config.json").read_text())
    assert cfg["recipe"] == "plus" and cfg["loss"]["kl_weight"] > 0 and cfg["loss"]["rel_weight"] > 0
    assert cfg["text_bank_sha256"] == bank_info["npy_sha256"]
    import csv

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and list(rows[0]) == list(METRIC_FIELDS)
    w = cfg["loss"]
    for row in rows:
        terms = {k: float(row[f"loss_{k}"]) for k in ("cosine", "text_kl", "relational")}
        assert all(np.isfinite(v) for v in terms.values()) and terms["text_kl"] >= 0 and terms["relational"] >= 0
        weighted = w["cos_weight"] * terms["cosine"] + w["kl_weight"] * terms["text_kl"]
        weighted += w["rel_weight"] * terms["relational"]
        assert float(row["train_loss"]) == pytest.approx(weighted, rel=1e-6, abs=1e-6)
    model = load_model(run)
    assert model.name == STUDENT
    changes = {
        "loss.rel_weight: 1.0 -> 0.0": ["--recipe", "paper"],
        "loss.kl_weight: 1.0 -> 0.5": ["--kl-weight", "0.5"],
        "loss.schedule: 'plateau' -> 'cosine'": ["--schedule", "cosine"],
    }
    for named, change in changes.items():  # the recipe may not change on resume; the error names what changed
        assert cli_main([*argv, *change, "--resume"]) == 1
        err = capsys.readouterr().err
        assert "cannot resume with different settings" in err and named in err


# --------------------------------------------------------------------------------------------- DDP


def test_ddp_two_cpu_processes(setup: dict, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "tinyclap.cli", "distill", "--student", STUDENT, "--cache", str(setup["cache"])]
    cmd += ["--out", str(run), "--epochs1", "1", "--epochs2", "1", "--batch-size", "4", "--workers", "0"]
    cmd += ["--device", "cpu", "--no-progress", "--no-tensorboard"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # rank 0 only: one row per epoch and stage
    state = json.loads((run / "stage1" / "last.json").read_text())
    assert (
        state["rng"]["world_size"] == 2 and state["progress"]["global_step"] == 2
    )  # 11 clips, 2 x 4 per step
    assert state["progress"]["history"][0]["val_cosine"] is not None
    model = load_model(run)
    assert model.embed_dim == 64


# --------------------------------------------------------------------------------------------- on the fly


def test_on_the_fly_targets_match_the_cache(setup: dict) -> None:
    store = setup["store"]
    rows = store.indices("val")[:3]
    paths = [store.items[int(r)]["path"] for r in rows]
    teacher = load_teacher(setup["teacher"])
    fly = TeacherTargets(teacher).to(torch.device("cpu"))
    assert fly.shared_frontend  # the CLAP teacher reuses the student's log-mel
    ds = WaveformDataset(paths, train=False)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    logmel, target = fly(batch, torch.device("cpu"))
    cached_logmel = torch.stack([torch.from_numpy(np.array(store.logmel(int(r)))) for r in rows]).float()
    cached_target = torch.stack([torch.from_numpy(np.array(store.target(int(r)))) for r in rows])
    torch.testing.assert_close(logmel, cached_logmel, atol=0.05, rtol=0)  # fp16 storage
    assert (F.cosine_similarity(target, cached_target, dim=-1) > 0.999).all()


def test_on_the_fly_distillation_run(setup: dict, tmp_path: Path) -> None:
    manifest = tmp_path / "files.txt"
    manifest.write_text("\n".join(str(p) for p in setup["files"][:3]) + "\n")
    run = tmp_path / "fly"
    argv = [
        "distill",
        "--student",
        STUDENT,
        "--teacher",
        str(setup["teacher"]),
        "--data",
        f"manifest:{manifest}",
    ]
    argv += [
        "--val-fraction",
        "0.34",
        "--stages",
        "1",
        "--epochs1",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
    ]
    argv += ["--out", str(run), "--no-progress", "--no-tensorboard"]
    assert cli_main(argv) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["train_clips"], cfg["val_clips"]) == (2, 1)
    assert cfg["teacher_info"]["type"] == "CLAPTeacher"
    assert load_model(run).embed_dim == 64
    assert not (run / "stage2").exists()
