"""Interrupted jobs and write errors (docs/robustness.md, "Interrupted jobs and write errors").

1. SIGKILL: `tinyclap cache` and `tinyclap distill` run as real subprocesses and are killed with SIGKILL at
   seeded random times, scaled to a measured uninterrupted run (so slow machines get later kills), then
   rerun until they finish. The result must equal the uninterrupted run's: the same cache rows, log-mels
   and targets bit for bit, and bit-identical student weights. A kill only counts when it landed while the
   process was still running (its exit status is -SIGKILL); at least 3 must land for each command.
2. Write errors: ENOSPC and EACCES, injected by monkeypatching the OS calls of a write (we may run as
   root, where chmod stops nothing), while writing distill's last/best checkpoints, a student, cache shards
   and a zero-shot class file. The previous file must stay intact and readable, no temp file may be left,
   and the error must name the file.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_same_tensors, one_torch_thread, read_tensors, us8k_clips

import tinyclap.train.loop as loop_mod
from tinyclap.cli import main as cli_main
from tinyclap.models import load_student, save_student
from tinyclap.models.checkpoint import read_model
from tinyclap.models.students import create_student
from tinyclap.train.cache import CacheStore, build_cache
from tinyclap.train.loop import train_stage
from tinyclap.train.metrics import MetricsLogger
from tinyclap.zeroshot import ZeroShotClassifier

STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"  # the smallest registered student
N_CLIPS = 48  # US8K clips in the SIGKILL cache (12 shards of 4)
SHARD = 4
MIN_KILLS = 3  # landed SIGKILLs required per command
TARGET_KILLS = 4  # landed SIGKILLs aimed for per command
SEED = 20240613  # seeds the kill times
WAIT_S = 240  # a hung subprocess fails the test instead of hanging CI
ORPHAN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # an atomic write's temp file


# ------------------------------------------------------------------------------------------- fixtures


# work (a folder for the module) and teacher_ckpt (the tiny random teacher, saved): tests/conftest.py


@pytest.fixture(scope="module")
def clips(us8k_root: Path) -> list[Path]:
    files = us8k_clips(us8k_root, N_CLIPS)
    assert len(files) == N_CLIPS
    return files


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the in-process trainings (tiny convolutions; 2 shared cores)."""
    with one_torch_thread():
        yield


def orphans(root: Path) -> list[str]:
    """Temp files/folders of unfinished writes anywhere under `root` (atomic-write temps, shard temps)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob(".*")
        if ORPHAN.match(p.name) or p.name.startswith(".tmp-")
    )


# ------------------------------------------------------------------------------------- SIGKILL harness


@dataclass
class Attempt:
    """One subprocess run: its exit status, wall time, progress before/after, when it was killed."""

    rc: int
    wall_s: float
    first_progress_s: float | None
    units_before: int
    units_after: int
    kill_at_s: float | None = None  # when the SIGKILL was due (None: none planned, or no progress came)
    planned: bool = False

    @property
    def landed(self) -> bool:
        return self.rc == -signal.SIGKILL


@dataclass
class KillLog:
    command: str
    inputs: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def landed(self) -> int:
        return sum(a.landed for a in self.attempts)

    @property
    def missed(self) -> int:  # SIGKILLs that came after the process had already finished
        return sum(a.planned and not a.landed for a in self.attempts)

    def report(self) -> str:
        kills = ", ".join(
            f"{a.kill_at_s:.1f}s ({a.units_before}->{a.units_after})" for a in self.attempts if a.landed
        )
        return (
            f"[SIGKILL] {self.command}: {self.inputs}; {self.landed} kills landed mid-run and were survived "
            f"(resumed to an identical result), {self.missed} arrived after the run had finished; "
            f"{len(self.attempts)} runs; kills at (progress before->after): {kills}"
        )


def _env() -> dict[str, str]:
    # one thread per process: the kill times are scaled to a run measured under the same setting
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_watched(
    argv: list[str], progress: Callable[[], int], log: Path, kill_after_progress: float | None = None
) -> Attempt:
    """Run `python -m tinyclap.cli ARGV`; SIGKILL it `kill_after_progress` seconds after this run's first
    unit of progress (a new shard or checkpoint) if it is still running then."""
    before = progress()
    with open(log, "ab") as out:
        out.write(f"\n=== {' '.join(argv)} (kill {kill_after_progress} s after progress)\n".encode())
        out.flush()
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tinyclap.cli", *argv], stdout=out, stderr=subprocess.STDOUT, env=_env()
        )
        first = kill_at = None
        try:
            while proc.poll() is None:
                now = time.monotonic() - start
                if first is None and progress() > before:
                    first = now
                    if kill_after_progress is not None:
                        kill_at = first + kill_after_progress
                if kill_at is not None and now >= kill_at:
                    proc.send_signal(signal.SIGKILL)  # a no-op if it exited a moment ago: rc then says so
                    break
                if now > WAIT_S:
                    proc.kill()
                    pytest.fail(f"{argv[0]} ran over {WAIT_S} s; log: {log}")
                time.sleep(0.01)
            rc = proc.wait(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    planned = kill_after_progress is not None
    return Attempt(rc, time.monotonic() - start, first, before, progress(), kill_at, planned)


def kill_and_resume(
    argv: Callable[[bool], list[str]],
    progress: Callable[[], int],
    total_units: int,
    ref: Attempt,
    log: Path,
    kills: KillLog,
    rng: random.Random,
    scale: float = 1.0,
) -> None:
    """Start the job, SIGKILL it at random points until TARGET_KILLS landed, then let it finish.

    Each kill comes a random share (10-35 %, times `scale`) of the work still left after the run's first
    new unit of progress, timed by the reference run: so kills land inside the work, never in the
    interpreter's start-up, on a machine of any speed (start-up kills are covered by unit tests below).
    """
    work = ref.wall_s - ref.first_progress_s  # seconds from the first unit to the end, uninterrupted
    first = True
    for _ in range(3 * TARGET_KILLS):
        if kills.landed >= TARGET_KILLS:
            break
        left = (total_units - progress() - 1) / total_units  # after this run's first unit
        if left <= 0:
            break
        attempt = run_watched(argv(not first), progress, log, scale * rng.uniform(0.1, 0.35) * left * work)
        kills.attempts.append(attempt)
        first = False
        if not attempt.landed:
            assert attempt.rc == 0, f"{argv(True)[0]} failed (exit {attempt.rc}); log: {log}"
            return  # finished before the kill came
    final = run_watched(argv(not first), progress, log)
    kills.attempts.append(final)
    tail = log.read_text()[-3000:]
    assert final.rc == 0, f"resumed {argv(True)[0]} failed (exit {final.rc}); log: {log}\n{tail}"


def assert_same_store(got: Path, ref: Path) -> None:
    a, b = CacheStore(got), CacheStore(ref)
    counts = a.verify()
    assert counts == b.verify() and counts["rows"] == N_CLIPS
    assert a.items == b.items  # same rows, in the same order, same crops and splits
    for i in range(len(b)):
        assert np.array_equal(a.logmel(i), b.logmel(i)), i
        assert np.array_equal(a.target(i), b.target(i)), i
    shards = got / "shards"
    assert not [p.name for p in shards.iterdir() if p.name.startswith(".")], "temp or corrupt shards left"
    assert orphans(got) == []
    report = json.loads((got / "report.json").read_text())
    assert report["files_cached_before"] + report["files_read"] == N_CLIPS and report["store_rows"] == N_CLIPS


# ----------------------------------------------------------------------------------- SIGKILL: cache


def cache_argv(teacher: Path, manifest: Path, out: Path) -> Callable[[bool], list[str]]:
    argv = ["cache", "--teacher", str(teacher), "--data", f"manifest:{manifest}", "--out", str(out)]
    argv += ["--workers", "0", "--batch-size", str(SHARD), "--shard-size", str(SHARD), "--device", "cpu"]
    return lambda resume: [*argv, "--no-progress"]  # a rerun resumes by itself


def shard_count(out: Path) -> Callable[[], int]:
    shards = out / "shards"

    def count() -> int:
        try:
            return sum(1 for n in os.listdir(shards) if re.match(r"^r\d\d-\d{5}$", n))
        except FileNotFoundError:
            return 0

    return count


@pytest.fixture(scope="module")
def cache_ref(work: Path, teacher_ckpt: Path, clips: list[Path]) -> tuple[Path, Path, Attempt]:
    """An uninterrupted `tinyclap cache` run (timed): the reference, and the cache the distill runs use."""
    manifest = work / "clips.txt"
    manifest.write_text("\n".join(map(str, clips)) + "\n")
    out = work / "cache_ref"
    log = work / "cache_ref.log"
    ref = run_watched(cache_argv(teacher_ckpt, manifest, out)(False), shard_count(out), log)
    assert ref.rc == 0 and ref.first_progress_s is not None, log.read_text()[-3000:]
    return out, manifest, ref


@pytest.mark.slow
def test_sigkilled_cache_resumes_to_the_same_store(work: Path, teacher_ckpt: Path, cache_ref) -> None:
    ref_dir, manifest, ref = cache_ref
    kills = KillLog("tinyclap cache", f"{N_CLIPS} clips, {N_CLIPS // SHARD} shards of {SHARD}")
    rng = random.Random(SEED)
    for round_ in range(3):  # a new round (fresh folder, earlier kills) only if a machine outran the plan
        out, log = work / f"cache_killed{round_}", work / f"cache_killed{round_}.log"
        argv = cache_argv(teacher_ckpt, manifest, out)
        kill_and_resume(argv, shard_count(out), N_CLIPS // SHARD, ref, log, kills, rng, scale=0.5**round_)
        assert_same_store(out, ref_dir)
        if kills.landed >= MIN_KILLS:
            break
    print(f"\n{kills.report()} (reference run {ref.wall_s:.1f} s)")
    assert kills.landed >= MIN_KILLS, kills.report()


# --------------------------------------------------------------------------------- SIGKILL: distill


def distill_argv(cache: Path, out: Path) -> Callable[[bool], list[str]]:
    argv = ["distill", "--student", STUDENT, "--cache", str(cache), "--out", str(out), "--device", "cpu"]
    argv += ["--epochs1", "2", "--epochs2", "1", "--batch-size", "8", "--workers", "0", "--ckpt-every", "1"]
    argv += ["--no-progress", "--no-tensorboard"]
    return lambda resume: [*argv, "--resume"] if resume else argv


def steps_done(out: Path) -> Callable[[], int]:
    def count() -> int:
        total = 0
        for stage in (1, 2):
            try:
                progress = json.loads((out / f"stage{stage}" / "last.json").read_text())["progress"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                continue
            total += int(progress["global_step"])
        return total

    return count


def metric_rows(run: Path) -> list[tuple[str, ...]]:
    """metrics.csv without its timing columns (clips_per_s, time_s), which differ between machines/runs."""
    lines = (run / "metrics.csv").read_text().strip().splitlines()
    return [tuple(line.split(",")[:7]) for line in lines]


@pytest.mark.slow
def test_sigkilled_distill_resumes_to_bit_identical_weights(work: Path, cache_ref) -> None:
    cache = cache_ref[0]
    ref_dir = work / "distill_ref"
    ref = run_watched(distill_argv(cache, ref_dir)(False), steps_done(ref_dir), work / "distill_ref.log")
    assert ref.rc == 0 and ref.first_progress_s is not None, (work / "distill_ref.log").read_text()[-3000:]
    total = steps_done(ref_dir)()
    cfg = json.loads((ref_dir / "config.json").read_text())
    kills = KillLog(
        "tinyclap distill --resume",
        f"{cfg['train_clips']} train / {cfg['val_clips']} val clips, {STUDENT}, {total} steps of batch 8 "
        "(stage 1: 2 epochs, stage 2: 1), a checkpoint every step",
    )
    rng = random.Random(SEED + 1)
    for round_ in range(3):
        out, log = work / f"distill_killed{round_}", work / f"distill_killed{round_}.log"
        argv = distill_argv(cache, out)
        kill_and_resume(argv, steps_done(out), total, ref, log, kills, rng, scale=0.5**round_)
        assert_same_tensors(read_tensors(ref_dir / "student.safetensors"), read_tensors(out / "student.safetensors"))
        for stage in (1, 2):
            best_ref = read_tensors(ref_dir / f"stage{stage}" / "best.safetensors")
            assert_same_tensors(best_ref, read_tensors(out / f"stage{stage}" / "best.safetensors"))
            last_ref = read_tensors(ref_dir / f"stage{stage}" / "last.safetensors")
            last = read_tensors(out / f"stage{stage}" / "last.safetensors")
            assert_same_tensors(last_ref, last, "model.")
            assert_same_tensors(last_ref, last, "optim.")
        assert metric_rows(out) == metric_rows(ref_dir)  # no duplicate or lost epoch rows, same losses
        assert load_student(out).name == STUDENT
        assert orphans(out) == []
        if kills.landed >= MIN_KILLS:
            break
    print(f"\n{kills.report()} (reference run {ref.wall_s:.1f} s)")
    assert kills.landed >= MIN_KILLS, kills.report()


# --------------------------------------------------------------------------------------- write errors


class Faults:
    """Make one step of writing a chosen file fail with an OSError, the way a full disk or a read-only or
    permission-restricted folder would: creating it, writing it (half the bytes land first), fsync, or the
    final rename. `match(path)` picks the file, by the temp or final path the OS call sees."""

    STEPS = ("open", "write", "fsync", "replace")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.step: str | None = None
        self.code = 0
        self.match: Callable[[str], bool] = lambda p: False
        self.hits = 0
        real_open, real_os_open, real_fdopen = builtins.open, os.open, os.fdopen
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fail(path: Any) -> None:
            self.hits += 1
            raise OSError(self.code, os.strerror(self.code), str(path))

        def armed(step: str, path: Any) -> bool:
            return self.step == step and isinstance(path, (str, os.PathLike)) and self.match(os.fspath(path))

        def fd_path(fd: int) -> str:
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return ""

        def writing(mode: str) -> bool:
            return any(c in mode for c in "wax+")

        def wrap(f: Any, path: str) -> Any:
            return _FailingWriter(f, lambda: fail(path)) if armed("write", path) else f

        def fake_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
            if writing(mode) and armed("open", file):
                fail(file)
            f = real_open(file, mode, *args, **kw)
            return wrap(f, os.fspath(file)) if writing(mode) and isinstance(file, (str, os.PathLike)) else f

        def fake_os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR) and armed("open", path):
                fail(path)
            return real_os_open(path, flags, *args, **kw)

        def fake_fdopen(fd: int, mode: str = "r", *args: Any, **kw: Any) -> Any:
            f = real_fdopen(fd, mode, *args, **kw)
            return wrap(f, fd_path(fd)) if writing(mode) else f

        def fake_fsync(fd: Any) -> None:
            fd = fd if isinstance(fd, int) else fd.fileno()
            if armed("fsync", fd_path(fd)):
                fail(fd_path(fd))
            real_fsync(fd)

        def fake_replace(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            if armed("replace", dst):
                fail(dst)
            real_replace(src, dst, *args, **kw)

        def fake_rename(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            if armed("replace", dst):
                fail(dst)
            real_rename(src, dst, *args, **kw)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "fdopen", fake_fdopen)
        monkeypatch.setattr(os, "fsync", fake_fsync)
        monkeypatch.setattr(os, "replace", fake_replace)
        monkeypatch.setattr(os, "rename", fake_rename)

    def arm(self, step: str, code: int, match: Callable[[str], bool]) -> None:
        assert step in self.STEPS
        self.step, self.code, self.match, self.hits = step, code, match, 0

    def disarm(self) -> None:
        self.step = None


class _FailingWriter:
    """A file object whose first write puts half the bytes on disk and then fails (a disk filling up)."""

    def __init__(self, f: Any, fail: Callable[[], None]) -> None:
        self._f, self._fail = f, fail

    def write(self, data: Any) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        self._fail()
        return 0  # not reached

    def __enter__(self) -> _FailingWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


# (step, errno) cases: a disk filling up shows as ENOSPC on write or (delayed allocation, NFS) on fsync;
# a read-only or restricted folder as EACCES when the temp file is created or renamed over the target
CASES = [("write", errno.ENOSPC), ("fsync", errno.ENOSPC), ("open", errno.EACCES), ("replace", errno.EACCES)]
CASE_IDS = [f"{step}-{errno.errorcode[code]}" for step, code in CASES]


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to map file descriptors to paths (Linux)")
    return Faults(monkeypatch)


def named(target: Path) -> Callable[[str], bool]:
    """Matches the file `target` and its temp files (`.<name>.<random>.tmp` beside it)."""
    return lambda p: os.path.dirname(p) == str(target.parent) and (
        os.path.basename(p) == target.name or os.path.basename(p).startswith(f".{target.name}.")
    )


def snapshot(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def assert_error_names(err: pytest.ExceptionInfo, code: int, path: Path) -> None:
    e = err.value
    assert isinstance(e, OSError) and e.errno == code, repr(e)
    assert e.filename == str(path) and str(path) in str(e), str(e)
    if code == errno.EACCES:
        assert isinstance(e, PermissionError)


class _Data(torch.utils.data.Dataset):
    """Cache-like items, (log-mel fp16 (32, 64), unit target (64,)): a step costs milliseconds."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = (torch.randn(n, 32, 64, generator=g) * 10 - 40).half()
        self.y = torch.nn.functional.normalize(torch.randn(n, 64, generator=g), dim=-1)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _fresh_student() -> torch.nn.Module:
    torch.manual_seed(5)
    return create_student(STUDENT, embed_dim=64)


TRAIN_KW: dict[str, Any] = dict(stage=1, epochs=2, lr=0.012, batch_size=4, ckpt_every=1, progress=False)


@pytest.mark.parametrize(("step", "code"), CASES, ids=CASE_IDS)
def test_last_checkpoint_write_error_keeps_previous_and_resume_is_exact(
    faults: Faults, one_thread: None, tmp_path: Path, step: str, code: int
) -> None:
    train, val = _Data(8, 0), _Data(4, 1)  # 2 steps per epoch
    ref = _fresh_student()
    train_stage(ref, train, val, out_dir=tmp_path / "ref", **TRAIN_KW)

    out = tmp_path / "run"
    last = out / "last.safetensors"
    saved: dict[Path, bytes] = {}

    def fill_disk(global_step: int) -> None:
        if global_step == 2:  # end of epoch 1: its checkpoint (after validation) is the one that fails
            saved.update(snapshot(last, last.with_suffix(".json")))  # step 1's state
            faults.arm(step, code, lambda p: named(last)(p) or named(last.with_suffix(".json"))(p))

    with pytest.raises(OSError) as err:
        train_stage(_fresh_student(), train, val, out_dir=out, step_hook=fill_disk, **TRAIN_KW)
    faults.disarm()
    assert faults.hits == 1
    assert_error_names(err, code, last)  # the pair's first file: the .json was never staged
    assert snapshot(*saved) == saved  # the step-1 state pair, byte for byte
    state = json.loads(last.with_suffix(".json").read_text())["progress"]
    assert (state["epoch"], state["global_step"]) == (0, 1)
    assert orphans(out) == []
    # space freed: the same run resumes from step 1 and ends exactly where an uninterrupted one does
    resumed = create_student(STUDENT, embed_dim=64)
    train_stage(resumed, train, val, out_dir=out, resume=True, **TRAIN_KW)
    assert_same_tensors(ref.state_dict(), resumed.state_dict())
    assert_same_tensors(read_tensors(tmp_path / "ref" / "last.safetensors"), read_tensors(last), "optim.")


@pytest.mark.parametrize(("step", "code"), CASES, ids=CASE_IDS)
def test_best_checkpoint_write_error_keeps_previous_best(
    faults: Faults, one_thread: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, code: int
) -> None:
    losses = iter([-0.5, -0.7])  # epoch 2 is better: its best checkpoint replaces epoch 1's

    def scripted(*args: Any, **kw: Any) -> tuple[float, float]:
        loss = next(losses)
        return loss, -loss

    monkeypatch.setattr(loop_mod, "_validate", scripted)
    out = tmp_path / "run"
    best = out / "best.safetensors"
    saved: dict[Path, bytes] = {}

    # staging errors on the SECOND file of the pair (the first one's temp is already written); a rename
    # error on the first (a failing rename of the second cannot be undone: see test_save_student_...)
    target = best if step == "replace" else best.with_suffix(".json")

    def fill_disk(global_step: int) -> None:
        if global_step == 3:  # epoch 2, after epoch 1's best was written
            saved.update(snapshot(best, best.with_suffix(".json")))
            faults.arm(step, code, named(target))

    with pytest.raises(OSError) as err:
        train_stage(_fresh_student(), _Data(8, 0), _Data(4, 1), out_dir=out, step_hook=fill_disk, **TRAIN_KW)
    faults.disarm()
    assert faults.hits == 1
    assert_error_names(err, code, target)
    assert snapshot(*saved) == saved  # neither file of epoch 1's best was replaced
    assert json.loads(best.with_suffix(".json").read_text())["epoch"] == 1
    assert load_student(best).name == STUDENT
    assert orphans(out) == []


@pytest.mark.parametrize("which", ["safetensors", "json"])
@pytest.mark.parametrize(("step", "code"), CASES, ids=CASE_IDS)
def test_save_student_write_error_keeps_previous_student(
    faults: Faults, tmp_path: Path, step: str, code: int, which: str
) -> None:
    student = _fresh_student()
    first = save_student(student, tmp_path / "student", val_cosine=0.5)
    saved = snapshot(first, first.with_suffix(".json"))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    target = first.with_suffix(f".{which}")
    faults.arm(step, code, named(target))
    with pytest.raises(OSError) as err:
        save_student(student, tmp_path / "student", val_cosine=0.9)
    faults.disarm()
    assert faults.hits == 1
    assert_error_names(err, code, target)
    assert orphans(tmp_path) == []
    if step == "replace" and which == "json":
        # every byte was on disk and the .safetensors already renamed when the .json's rename failed: the
        # new student is complete (its config is in the safetensors header); only the .json copy is stale
        assert first.read_bytes() != saved[first] and first.with_suffix(".json").read_bytes() == saved[target]
        after = load_student(tmp_path)
        assert_same_tensors(after.state_dict(), {k: v.detach() for k, v in student.state_dict().items()})
        assert read_model(first)[0]["val_cosine"] == 0.9
        return
    assert snapshot(*saved) == saved
    assert_same_tensors(load_student(tmp_path).state_dict(), before)


@pytest.mark.parametrize(("step", "code"), CASES, ids=CASE_IDS)
def test_class_file_write_error_keeps_previous(faults: Faults, tmp_path: Path, step: str, code: int) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 16)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    clf = ZeroShotClassifier(["dog", "car_horn", "siren"], w, 4.6, ["this is the sound of {}"])  # log(100)
    path = clf.save(tmp_path / "classes.npz")
    saved = snapshot(path)
    faults.arm(step, code, named(path))
    with pytest.raises(OSError) as err:
        ZeroShotClassifier(["a", "b", "c"], w[::-1].copy(), 3.9, ["{}"]).save(path)
    faults.disarm()
    assert faults.hits == 1
    assert_error_names(err, code, path)
    assert snapshot(path) == saved and ZeroShotClassifier.load(path).labels == ["dog", "car_horn", "siren"]
    assert orphans(tmp_path) == []


SHARD_CASES = [
    ("write", errno.ENOSPC, "logmel.npy"),
    ("write", errno.ENOSPC, "items.json"),
    ("fsync", errno.ENOSPC, "target.npy"),
    ("open", errno.EACCES, "target.npy"),
    ("replace", errno.EACCES, None),  # the rename of the finished shard folder into place
]


@pytest.mark.parametrize(("step", "code", "fname"), SHARD_CASES, ids=lambda v: str(v))
def test_cache_shard_write_error_keeps_finished_shards(
    faults: Faults, one_thread: None, teacher_ckpt: Path, clips: list[Path], tmp_path: Path,
    step: str, code: int, fname: str | None,
) -> None:  # fmt: skip
    files = clips[:8]
    out = tmp_path / "cache"
    kw: dict[str, Any] = dict(workers=0, batch_size=2, shard_size=2, progress=False, device="cpu")
    second = out / "shards" / "r00-00001"
    in_second = (
        (lambda p: p == str(second))
        if fname is None
        else (lambda p: Path(p).name == fname and Path(p).parent.name.startswith(".tmp-r00-00001-"))
    )

    def after_shard(path: Path) -> None:
        if path.name == "r00-00000":
            faults.arm(step, code, in_second)

    with pytest.raises(OSError) as err:
        build_cache(str(teacher_ckpt), files, out, on_shard=after_shard, **kw)
    faults.disarm()
    assert faults.hits == 1
    assert_error_names(err, code, second)
    if fname is not None:
        assert fname in str(err.value)
    assert [p.name for p in (out / "shards").iterdir()] == ["r00-00000"]  # no temp folder left behind
    assert CacheStore(out).verify()["rows"] == 2
    report = build_cache(str(teacher_ckpt), files, out, **kw)  # space freed: the rerun resumes
    assert report.files_cached_before == 2 and report.files_read == 6
    assert CacheStore(out).verify()["rows"] == 8
    assert orphans(out) == []


def test_cache_cli_write_error_is_one_clear_line(
    faults: Faults, teacher_ckpt: Path, clips: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cache"
    faults.arm("write", errno.ENOSPC, lambda p: Path(p).name == "logmel.npy")
    argv = ["cache", "--teacher", str(teacher_ckpt), "--data", str(clips[0]), "--out", str(out)]
    assert cli_main([*argv, "--workers", "0", "--no-progress", "--device", "cpu"]) == 1
    faults.disarm()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinyclap cache: error: [Errno 28] No space left on device")
    assert str(out / "shards" / "r00-00000") in err[0] and "Traceback" not in err[0]


def test_killed_first_cache_json_write_does_not_block_the_rerun(
    teacher_ckpt: Path, clips: list[Path], tmp_path: Path
) -> None:
    """A run killed while writing cache.json leaves only its temp file: the folder is still ours."""
    out = tmp_path / "cache"
    out.mkdir()
    (out / ".cache.json.k1ll3d_x.tmp").write_text('{"format": "tinyclap-cache/1", "teach')
    report = build_cache(str(teacher_ckpt), clips[:2], out, workers=0, progress=False, device="cpu")
    assert report.files_read == 2 and orphans(out) == []


def test_metrics_row_cut_short_by_a_full_disk_is_dropped_on_resume(tmp_path: Path) -> None:
    m = MetricsLogger(tmp_path, tensorboard=False)
    m.write({"stage": 1, "epoch": 1, "step": 3, "train_loss": -0.5, "val_loss": -0.6, "val_cosine": 0.6})
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("1,2,1")  # the next row (step 12) cut short inside its step: it would read as step 1
    m.truncate_after(1, 5)  # what a resume from step 5 does
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,1,3,")


def test_atomic_writes_respect_the_umask(tmp_path: Path) -> None:
    """Checkpoints get the usual 0o666 & ~umask, not tempfile.mkstemp's private 0o600 (shared machines)."""
    old = os.umask(0o022)
    try:
        path = save_student(_fresh_student(), tmp_path / "student")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644 and path.with_suffix(".json").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------- resume identity, run/cache locks, durable writes


@pytest.fixture(scope="module")
def small_runs(work: Path, teacher_ckpt: Path, clips: list[Path]) -> dict[str, Path]:
    """Two different 4-clip caches (other clips) and a finished 1-epoch stage-1 run on the first."""
    from tinyclap.train.distill import DistillConfig, distill

    root = work / "identity"
    for name, files in (("cache_a", clips[:4]), ("cache_b", clips[4:8])):
        build_cache(str(teacher_ckpt), files, root / name, val_fraction=0.5, workers=0, batch_size=4,
                    progress=False, device="cpu")
    with one_torch_thread():
        distill(DistillConfig(out=str(root / "run"), student=STUDENT, cache=str(root / "cache_a"), stages=(1,),
                              epochs1=1, batch_size=4, workers=0, device="cpu", progress=False,
                              tensorboard=False))
    return {"root": root, "cache_a": root / "cache_a", "cache_b": root / "cache_b", "run": root / "run"}


def _resume(run: Path, cache: str) -> Any:
    from tinyclap.train.distill import DistillConfig, distill

    with one_torch_thread():
        return distill(DistillConfig(out=str(run), student=STUDENT, cache=cache, stages=(1,), epochs1=1, batch_size=4,
                                     workers=0, device="cpu", progress=False, tensorboard=False, resume=True))


def test_resume_compares_the_cache_identity_not_its_path(small_runs: dict[str, Path], monkeypatch) -> None:
    """The same cache by a relative path resumes; a different cache moved to the recorded path is refused
    (naming the cache id), and nothing in the run changes."""
    root, run = small_runs["root"], small_runs["run"]
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["cache_id"] == CacheStore(small_runs["cache_a"]).identity()
    monkeypatch.chdir(root)
    assert _resume(run, "cache_a").run_dir == run  # relative now, absolute when recorded: the same cache
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".log"}
    os.rename(root / "cache_a", root / "cache_a.orig")
    os.rename(root / "cache_b", root / "cache_a")  # a different cache at the recorded path
    try:
        with pytest.raises(ValueError, match=r"cannot resume with different settings \(cache_id: '[0-9a-f]{64}'"):
            _resume(run, str(root / "cache_a"))
    finally:
        os.rename(root / "cache_a", root / "cache_b")
        os.rename(root / "cache_a.orig", root / "cache_a")
    assert {p: p.read_bytes() for p in before} == before


def test_second_distill_on_the_same_out_is_refused_naming_the_holder(
    small_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tinyclap._util import FolderBusy, folder_lock

    run = small_runs["run"]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".log"}
    with folder_lock(run, blocking=False, name=".lock-r00", what="this run folder"):  # a live run holds it
        with pytest.raises(FolderBusy, match=rf"{run}: this run folder is in use .*pid {os.getpid()} on "):
            _resume(run, str(small_runs["cache_a"]))
        argv = ["distill", "--student", STUDENT, "--cache", str(small_runs["cache_a"]), "--out", str(run),
                "--stages", "1", "--epochs1", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                "--resume", "--no-progress", "--no-tensorboard"]
        assert cli_main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tinyclap distill: error:") and f"pid {os.getpid()}" in err[0]
    assert {p: p.read_bytes() for p in before} == before
    # a lock file left by a killed run (its flock died with it) is stale: the next run takes it over
    (run / ".lock-r00").write_text('{"pid": 999999, "host": "gone", "since": "yesterday"}\n')
    assert _resume(run, str(small_runs["cache_a"])).run_dir == run
    assert json.loads((run / ".lock-r00").read_text())["pid"] == os.getpid()


def test_second_cache_build_on_the_same_out_is_refused(
    small_runs: dict[str, Path], teacher_ckpt: Path, clips: list[Path]
) -> None:
    from tinyclap._util import FolderBusy
    from tinyclap.train.cache.write import build_lock

    out = small_runs["cache_a"]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".lock")}
    with build_lock(out, 0):
        with pytest.raises(FolderBusy, match=rf"{out}: this cache \(rank 0\) is in use .*pid {os.getpid()}"):
            build_cache(str(teacher_ckpt), clips[:6], out, val_fraction=0.5, workers=0, batch_size=4,
                        progress=False, device="cpu", overwrite=True)
    assert {p: p.read_bytes() for p in before} == before  # not even --overwrite touched it


def test_atomic_write_fsyncs_the_file_then_the_folder_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    """A power cut after the write cannot roll back: the data is synced before the rename, and the folder
    (which holds the rename) after it."""
    from tinyclap._util import atomic_write_text

    synced: list[tuple[str, bool]] = []
    real = os.fsync

    def record(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, (tmp_path / "a.json").exists()))
        real(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd (Linux)")
    monkeypatch.setattr(os, "fsync", record)
    atomic_write_text(tmp_path / "a.json", "{}")
    assert len(synced) == 2
    (tmp_file, renamed_yet), (folder, renamed) = synced
    assert Path(tmp_file).name.startswith(".a.json.") and not renamed_yet
    assert folder == str(tmp_path) and renamed


BAD_NUMBERS = [
    ["eval", "--model", STUDENT, "--dataset", "esc50:x", "--out", "o", "--batch-size", "0"],
    ["eval", "--model", STUDENT, "--dataset", "esc50:x", "--out", "o", "--limit", "-3"],
    ["prune", "--model", STUDENT, "--dims", "64", "--out", "o", "--finetune-epochs", "-1"],
    ["prune", "--model", STUDENT, "--dims", "64", "--out", "o", "--lr", "nan"],
    ["distill", "--student", STUDENT, "--cache", "c", "--out", "o", "--batch-size", "-8"],
    ["distill", "--student", STUDENT, "--cache", "c", "--out", "o", "--epochs1", "1e9"],
    ["distill", "--student", STUDENT, "--cache", "c", "--out", "o", "--workers", "100000"],
    ["distill", "--student", STUDENT, "--cache", "c", "--out", "o", "--lr1", "0"],
    ["cache", "--teacher", "t", "--data", "d", "--out", "o", "--batch-size", "0"],
    ["cache", "--teacher", "t", "--data", "d", "--out", "o", "--shard-size", "0"],
    ["cache", "--teacher", "t", "--data", "d", "--out", "o", "--val-fraction", "inf"],
    ["download", "dataset", "esc50", "--max-size", "0"],
]


@pytest.mark.parametrize("argv", BAD_NUMBERS, ids=lambda a: f"{a[0]}{a[-2]}={a[-1]}")
def test_zero_negative_or_absurd_numbers_are_a_one_line_usage_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """Refused while parsing (exit 2, before any file is read or folder made): the last line names the option,
    the value and the accepted range; no traceback."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and f"error: argument {argv[-2]}: " in err[-1], err
    assert "out of range" in err[-1] or "is not" in err[-1], err
    assert "Traceback" not in "\n".join(err) and list(tmp_path.iterdir()) == []
