"""Distillation of a student into the teacher's audio embedding space (tinyCLAP, Eq. 7): the whole run.

The loss is minus the cosine similarity between the student's embedding and the teacher's L2-normalised
embedding of the same clip; `val_cosine` is its negative on the validation split. Two stages, as in the
paper and its recipe (fpaissan/tinyCLAP: `tinyclap.py` `tinyCLAP_loss`, `hparams/distill_clap.yaml`,
`projection_only`; followed for the recipe, no code copied): stage 1 trains the whole student (Adam,
lr 0.012, batch 64, 100 epochs, ReduceLROnPlateau(0.1, 10) on the validation loss); stage 2 starts from
stage 1's best checkpoint and trains only the projection head (lr 0.004, 10 epochs).

`distill(config)` reads top to bottom: join the process group, check the run folder, the targets (a cache
or a teacher on the fly, `tinyclap.train.targets`), the student, config.json, each stage
(`tinyclap.train.loop.train_stage`, skipped when a resumed run already finished it), the final student.
The pieces: `config` (settings), `targets` (data and loss), `loop` (one stage), `state` (checkpoints),
`metrics` (metrics.csv, TensorBoard, train.log), `dist` (data parallel).

Nothing here changes global state at import. Inside a run, the RNGs are seeded and cuDNN benchmarking is
enabled on CUDA; both are restored when the run ends.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from tinyclap._util import atomic_write_text, folder_lock, read_json, remove_stale_temps, resolve_device, versions
from tinyclap.models.checkpoint import load_state_dict_checked
from tinyclap.train.config import DistillConfig, StageOptions
from tinyclap.train.dist import Dist, init_process_group
from tinyclap.train.loop import train_stage
from tinyclap.train.losses import DistillLoss
from tinyclap.train.metrics import MetricsLogger, log, log_to
from tinyclap.train.recipes import RECIPES
from tinyclap.train.state import StageResult, read_stage_result, read_tensors, run_scope
from tinyclap.train.targets import BatchFn, TeacherTargets, WaveformDataset, cached_batch, split_paths

__all__ = ["DistillConfig", "RunResult", "distill"]

# settings that must not change between a run and its resumption (else the resume is not exact)
# (the cache by what it holds, `cache_id`, not by the path string: see `_resume_diffs`)
_RESUME_KEYS = (
    "student", "cache_id", "teacher", "data", "init", "batch_size", "seed", "lr1", "lr2", "world_size",
    "train_crop_seconds", "pool_window", "recipe", "loss", "text_bank_sha256",
)  # fmt: skip
# what a config.json written before recipes existed ran with (so such a run still resumes)
_OLD_RUN_DEFAULTS = {"recipe": "paper", "loss": RECIPES["paper"].to_dict(), "text_bank_sha256": None,
                     "pool_window": None}

# files of a run folder (and its stage folders) written atomically, whose orphan temp files a resume removes
_RUN_FILES = (
    "config.json", "metrics.csv", "student.safetensors", "student.json",
    "last.safetensors", "last.json", "best.safetensors", "best.json",
)  # fmt: skip


@dataclass
class RunResult:
    """A finished run: its folder, per-stage results, the final student's path and validation cosine."""

    run_dir: Path
    stages: dict[int, StageResult]
    student_path: Path | None
    val_cosine: float
    elapsed_s: float
    student: str = "student"

    def summary(self) -> str:
        """Val cosine and best epoch per stage, times, and the final student's path."""
        lines = [f"distilled {self.student} into {self.run_dir} in {self.elapsed_s:.1f} s"]
        for s, r in self.stages.items():
            lines.append(
                f"  stage {s}: best val_cosine {r.best_val_cosine:.4f} (val_loss {r.best_val_loss:.4f}) "
                f"at epoch {r.best_epoch}, {r.steps} steps, {r.elapsed_s:.1f} s"
            )
        lines.append(f"  final student: {self.student_path}")
        return "\n".join(lines)


def _compact(obj: Any, limit: int = 50) -> Any:
    """JSON-able copy of a config with long lists (file lists) replaced by their length."""
    if isinstance(obj, Mapping):
        return {str(k): _compact(v, limit) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_compact(v, limit) for v in obj] if len(obj) <= limit else f"<{len(obj)} items>"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)



# ------------------------------------------------------------------------------------------- targets


@dataclass
class _Targets:
    """Where a run's targets come from: the two splits, how a batch becomes (logmel, target), and provenance."""

    train_ds: Dataset
    val_ds: Dataset
    embed_dim: int
    teacher_info: dict[str, Any]
    cache_info: dict[str, Any] | None = None
    batch_fn: BatchFn = cached_batch
    tag_epoch: bool = False
    text_bank: torch.Tensor | None = None  # (K, D) the cache's text bank, when the recipe needs it
    text_bank_sha256: str | None = None
    views: bool = False  # training on the cache's augmented views


def _views(config: DistillConfig, store: Any) -> bool:
    """Train on the cache's augmented views? Views asked for on a cache without them is an error naming it."""
    if not config.resolved_recipe().views:
        return False
    if store.views == 0:
        raise ValueError(f"--views: the cache {config.cache} has no augmented views; build them with "
                         "tinyclap cache --views K, or drop --views")  # fmt: skip
    return True


def _cache_targets(config: DistillConfig) -> _Targets:
    """Targets from a cache written by `tinyclap cache` (optionally trained on random crops)."""
    from tinyclap.train.cache import CachedDataset, CacheStore

    store = CacheStore(config.cache)
    crop_frames = None
    if config.train_crop_seconds is not None:
        clip_seconds = float(store.config.get("clip_seconds", 5.0))
        crop_frames = int(round(config.train_crop_seconds * store.n_frames / clip_seconds))
    cache_cfg = _compact(store.config)
    teacher_info = cache_cfg.get("teacher", {}) if isinstance(cache_cfg, dict) else {}
    if not isinstance(teacher_info, dict):
        teacher_info = {"teacher": teacher_info}
    views = _views(config, store)
    bank = bank_sha = None
    if config.resolved_recipe().needs_text_bank:
        from tinyclap.train.cache.textbank import read_text_bank

        array, bank_info = read_text_bank(config.cache)
        bank, bank_sha = torch.from_numpy(array), bank_info["npy_sha256"]
    return _Targets(
        text_bank=bank, text_bank_sha256=bank_sha, views=views,
        train_ds=CachedDataset(store, split="train", crop_frames=crop_frames, views=views),
        val_ds=CachedDataset(store, split="val"),
        embed_dim=int(store.embed_dim),
        teacher_info=teacher_info,
        cache_info={"dir": str(Path(config.cache).resolve()), "config": cache_cfg, "clips": len(store),
                    "id": store.identity()},
    )


def _teacher_targets(config: DistillConfig, dev: torch.device) -> _Targets:
    """Targets computed on the fly by the teacher from the --data files (a seeded train/val split)."""
    from tinyclap.data import parse_data_spec
    from tinyclap.models import load_model

    paths: list[Path] = []
    for spec in config.data:
        paths += parse_data_spec(spec)
    train_paths, val_paths = split_paths(paths, config.val_fraction, config.seed)
    teacher = load_model(config.teacher)
    rate, embed_dim = int(teacher.sample_rate), int(teacher.embed_dim)
    return _Targets(
        train_ds=WaveformDataset(train_paths, train=True, seed=config.seed, teacher_rate=rate),
        val_ds=WaveformDataset(val_paths, train=False, seed=config.seed, teacher_rate=rate),
        embed_dim=embed_dim,
        teacher_info={
            "checkpoint": str(Path(config.teacher).resolve()), "type": type(teacher).__name__,
            "sample_rate": rate, "embed_dim": embed_dim,
        },  # fmt: skip
        batch_fn=TeacherTargets(teacher).to(dev),
        tag_epoch=True,
    )


# ---------------------------------------------------------------------------------------- run steps


def _check_run_dir(config: DistillConfig) -> Path:
    """The run folder: refuse one that already holds a run unless `resume` (nothing is created yet)."""
    run = Path(config.out)
    if run.is_dir() and any(run.glob("stage*/last.safetensors")) and not config.resume:
        raise ValueError(f"{run}: already holds a run; pass --resume to continue it or choose another --out")
    if run.exists() and not run.is_dir():
        raise ValueError(f"{run}: --out exists and is not a folder")
    return run


def _open_run_dir(run: Path, d: Dist) -> None:
    """Create the run folder (rank 0), once its inputs are known to be good."""
    d.barrier()  # every rank has checked the folder and its inputs before rank 0 writes to it
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
    d.barrier()


def _clear_temps(run: Path, d: Dist) -> None:
    """Orphan temp files of a killed run's atomic writes (never read; only rank 0 writes here). Only under
    the run's lock: a live run's temp files are not orphans."""
    if d.main:
        for folder in (run, run / "stage1", run / "stage2"):
            remove_stale_temps(folder, _RUN_FILES)


def _make_student(config: DistillConfig, dev: torch.device, embed_dim: int) -> nn.Module:
    """The starting student: --init's weights or a seeded fresh one (DDP broadcasts rank 0's anyway)."""
    from tinyclap.models import create_student, load_student
    from tinyclap.models.mcu import is_mcu_name, min_frames

    with run_scope(config.seed, dev, False):
        if config.init:
            student = load_student(config.init)
            if config.student and config.student != student.name:
                raise ValueError(f"--init {config.init} holds {student.name!r}, not --model {config.student!r}")
        else:
            student = create_student(config.student, embed_dim=embed_dim)
    if student.embed_dim != embed_dim:
        raise ValueError(f"student embed_dim {student.embed_dim} differs from the targets' {embed_dim}")
    if config.pool_window is not None and not hasattr(student, "features"):
        raise ValueError(f"--pool-window needs a student with a backbone and a head; {student.name!r} has none")
    if config.pool_window is not None and is_mcu_name(getattr(student, "name", None)):
        need, frames = min_frames(student), _pool_frames(config)
        if frames is not None and frames < need:
            raise ValueError(f"--pool-window {config.pool_window:g} s gives {frames} log-mel frames; {student.name} "
                             f"needs at least {need}")
    return student


def _pool_frames(config: DistillConfig) -> int | None:
    """Log-mel frames of one --pool-window window (the CLAP front end's hop), None without one."""
    if config.pool_window is None:
        return None
    from tinyclap.audio.frontend import LogMel

    lm = LogMel()
    return lm.n_frames(int(round(config.pool_window * lm.sample_rate)))


def _resume_diffs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The `_RESUME_KEYS` that differ between a run's config.json and a resume's. A cache is compared by its
    identity (a different cache at the same path is refused; the same one by another path is accepted);
    a run written before identities were recorded falls back to the cache's absolute path."""
    keys = list(_RESUME_KEYS)
    old = {**_OLD_RUN_DEFAULTS, **old}
    if isinstance(old.get("loss"), Mapping):  # written before the recipes had augmentations: none was used
        old["loss"] = {"views": False, "spec_augment": False, "schedule": "plateau", **old["loss"]}
    if "cache_id" not in old:
        keys[keys.index("cache_id")] = "cache_dir"
        old = {**old, "cache_dir": (old.get("cache_info") or {}).get("dir")}
        new = {**new, "cache_dir": (new.get("cache_info") or {}).get("dir")}
    diffs = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):  # name the entries that changed, e.g. loss.schedule
            diffs += [f"{k}.{s}: {a.get(s)!r} -> {b.get(s)!r}" for s in sorted({*a, *b}) if a.get(s) != b.get(s)]
        elif a != b:
            diffs.append(f"{k}: {a!r} -> {b!r}")
    return diffs


def _write_config(config: DistillConfig, run: Path, facts: Mapping[str, Any], d: Dist) -> None:
    """config.json: the settings and what they resolved to; a resume must not change `_RESUME_KEYS`."""
    import platform

    resolved = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        **facts,
        "versions": {**versions("torch", "safetensors"), "platform": platform.platform()},
    }
    cfg_path = run / "config.json"
    if config.resume and cfg_path.is_file():
        diffs = _resume_diffs(read_json(cfg_path, finite=False), resolved)
        if diffs:
            raise ValueError(f"{run}: cannot resume with different settings ({', '.join(diffs)})")
    if d.main:
        atomic_write_text(cfg_path, json.dumps(resolved, indent=2, sort_keys=True) + "\n")


def _run_stages(
    config: DistillConfig, student: nn.Module, targets: _Targets, dev: torch.device,
    step_hook: Callable[[int, int], None] | None,
) -> dict[int, StageResult]:
    """Each stage in turn; a stage a resumed run already finished is skipped (the student takes its best)."""
    run, d = Path(config.out), Dist.current()
    results: dict[int, StageResult] = {}
    metrics = MetricsLogger(run, tensorboard=config.tensorboard, enabled=d.main)
    try:
        for stage in config.stages:
            stage_dir = run / f"stage{stage}"
            done = read_stage_result(stage_dir) if config.resume else None
            if done is not None:
                log.info("stage %d: already finished (best epoch %d), skipped", stage, done.best_epoch)
                results[stage] = done
                if (stage_dir / "best.safetensors").is_file():
                    best = stage_dir / "best"
                    load_state_dict_checked(student, read_tensors(best), source=str(best))
                continue
            hook = (lambda step, s=stage: step_hook(s, step)) if step_hook is not None else None
            opts = StageOptions.for_run(
                config, stage, device=dev, out_dir=stage_dir, batch_fn=targets.batch_fn, tag_epoch=targets.tag_epoch,
                metrics=metrics, save_extra={"teacher": targets.teacher_info}, step_hook=hook,
                loss=DistillLoss(config.resolved_recipe(), targets.text_bank),
                spec_augment=config.resolved_recipe().spec_augment, schedule=config.resolved_recipe().schedule,
                pool_frames=_pool_frames(config),
            )  # fmt: skip
            results[stage] = train_stage(student, targets.train_ds, targets.val_ds, opts)
    finally:
        metrics.close()
    return results


def _save_final(student: nn.Module, run: Path, targets: _Targets, results: Mapping[int, StageResult],
                final: StageResult) -> Path:
    """The final student (student.safetensors + student.json, loadable with `load_model(run)`)."""
    from tinyclap.models import save_student

    student.cpu()
    return save_student(
        student.to(memory_format=torch.contiguous_format), run / "student", teacher=targets.teacher_info,
        val_cosine=final.best_val_cosine, cache=targets.cache_info,
        distill={
            f"stage{s}": {"val_cosine": r.best_val_cosine, "val_loss": r.best_val_loss, "best_epoch": r.best_epoch}
            for s, r in results.items()
        },
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ whole run


def distill(config: DistillConfig, *, step_hook: Callable[[int, int], None] | None = None) -> RunResult:
    """Run a whole distillation (stages 1 and/or 2) into `config.out`; see the module doc.

    Writes config.json, metrics.csv, train.log, tensorboard/ (if available), stage{1,2}/{best,last}.* and the
    final student (student.safetensors + student.json, loadable with `tinyclap.models.load_model(out)`).
    `step_hook(stage, global_step)` is for tests (e.g. to interrupt a run).
    """
    config.validate()
    dev = resolve_device(config.device)
    created = init_process_group(dev)
    try:
        result = _distill(config, dev, step_hook)
        if created:
            dist.barrier()  # only on success: after an error the other ranks may never get here
        return result
    finally:
        if created:
            dist.destroy_process_group()


def _distill(config: DistillConfig, dev: torch.device, step_hook: Callable[[int, int], None] | None) -> RunResult:
    t0 = time.perf_counter()
    d = Dist.current()
    run = _check_run_dir(config)
    targets = _cache_targets(config) if config.cache is not None else _teacher_targets(config, dev)
    embed_dim = len(config.target_dims) if config.target_dims is not None else targets.embed_dim
    student = _make_student(config, dev, embed_dim)
    _open_run_dir(run, d)  # only now: a failed check above leaves no empty folder behind
    facts = {
        "student": student.name, "embed_dim": embed_dim, "device": str(dev), "world_size": d.world,
        "train_clips": len(targets.train_ds), "val_clips": len(targets.val_ds), "cache_info": targets.cache_info,
        "teacher_info": targets.teacher_info, "cache_id": (targets.cache_info or {}).get("id"),
        "text_bank_sha256": targets.text_bank_sha256,
        # what the run actually uses: `views` is false when the recipe asked for views the cache does not have
        "loss": {**config.resolved_recipe().to_dict(), "views": targets.views},
    }  # fmt: skip
    with folder_lock(run, blocking=False, name=f".lock-r{d.rank:02d}", what="this run folder"):
        return _locked_run(config, run, facts, student, targets, dev, step_hook, t0)


def _locked_run(config: DistillConfig, run: Path, facts: Mapping[str, Any], student: nn.Module, targets: _Targets,
                dev: torch.device, step_hook: Callable[[int, int], None] | None, t0: float) -> RunResult:
    """The rest of `_distill` once this process holds the run folder's lock (a second run on the same --out
    fails at once, naming this one): config.json, the stages, the final student."""
    d = Dist.current()
    _clear_temps(run, d)
    _write_config(config, run, facts, d)
    with log_to(run if d.main else None, verbose=d.main and config.progress):
        log.info(
            "distilling %s (%d params) on %s x%d: %d train / %d val clips, embed_dim %d", student.name,
            sum(p.numel() for p in student.parameters()), dev, d.world, len(targets.train_ds),
            len(targets.val_ds), facts["embed_dim"],
        )  # fmt: skip
        results = _run_stages(config, student, targets, dev, step_hook)
        final = results[config.stages[-1]]
        student_path = _save_final(student, run, targets, results, final) if d.main else None
        result = RunResult(run, results, student_path, final.best_val_cosine, time.perf_counter() - t0, student.name)
        if d.main:
            log.info(result.summary(), extra={"file_only": True})  # the CLI prints it
    return result
