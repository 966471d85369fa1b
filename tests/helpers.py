"""Set-up shared by the tests: synthetic signals, WAV files, the tiny random teacher, small dataset layouts,
checkpoint comparisons and subprocess runners. Plain functions (the fixtures built on them are in
conftest.py); every parameter that a test's numbers depend on (seed, rate, length, file name) is an argument.
torch and tinyclap's model modules are imported inside the functions that need them, so that the audio tests
importing this module stay light."""

from __future__ import annotations

import contextlib
import csv
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

if TYPE_CHECKING:
    import torch

    from tinyclap.models.teacher import CLAPTeacher

SR = 44100  # the teacher's and the students' sample rate (tinyclap.audio.SAMPLE_RATE)
ESC50_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]

# ------------------------------------------------------------------------------------------------ signals


def _sine(seconds: float, rate: int, freq: float, amp: float) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def tone(seconds: float, rate: int = SR, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    """(n,) float32 sine: recognisable after resampling and lossy codecs."""
    return _sine(seconds, rate, freq, amp).astype(np.float32)


def noisy_tone(seconds: float, rate: int, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A 0.3 tone plus a little noise (0.01 std): non-trivial content that survives int16 and resampling."""
    x = _sine(seconds, rate, freq, 0.3)
    noise = np.random.default_rng(seed).standard_normal(x.shape[0]) * 0.01
    return (x + noise).astype(np.float32)


def chirp(seconds: float, rate: int, f0: float = 200.0, sweep: float = 300.0, seed: int = 0) -> np.ndarray:
    """(n,) float32 0.3 sine rising from f0 Hz (phase 2 pi (f0 + sweep t) t) plus noise of 0.01 std."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (f0 + sweep * t) * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return x.astype(np.float32)


def distinct_sound(i: int, seconds: float, sr: int = SR, kinds: int = 5) -> np.ndarray:
    """Clearly different test sounds, picked by i % kinds: tones, noise, square waves, click trains, gated
    tones (seeded by i)."""
    rng = np.random.default_rng(i)
    t = np.arange(int(seconds * sr)) / sr
    kind = i % kinds
    if kind == 0:
        x = 0.5 * np.sin(2 * np.pi * (150 + 97 * i) * t)
    elif kind == 1:
        x = 0.3 * rng.standard_normal(t.size)
    elif kind == 2:
        x = 0.4 * np.sign(np.sin(2 * np.pi * (2 + i) * t))
    elif kind == 3:
        x = np.zeros(t.size)
        x[:: int(sr / (4 + i))] = 0.9
    else:
        x = 0.5 * np.sin(2 * np.pi * (800 + 50 * i) * t) * (rng.random(t.size) > 0.5)
    return x.astype(np.float32)


# -------------------------------------------------------------------------------------------------- files


def write_wav(
    path: Path | bytes, data: np.ndarray, rate: int = SR, subtype: str = "PCM_16", fmt: str | None = None
) -> Path | bytes:
    """sf.write(path, ...) returning `path` (any format soundfile writes; `fmt` None: by the name)."""
    sf.write(path, data, rate, subtype=subtype, format=fmt)
    return path


def us8k_clips(us8k_root: Path, n: int, fold: int = 1) -> list[Path]:
    """The first `n` UrbanSound8K clips of a fold, by name."""
    return sorted((us8k_root / "audio" / f"fold{fold}").glob("*.ogg"))[:n]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A UTF-8 CSV file of `header` and `rows`, its folder created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_esc50_meta(root: Path, rows: Sequence[Sequence[Any]]) -> Path:
    """root/meta/esc50.csv: the ESC-50 header and `rows` (filename, fold, target, category, esc10, src_file,
    take)."""
    return write_csv(root / "meta" / "esc50.csv", ESC50_HEADER, rows)


# ------------------------------------------------------------------------------------------------- models


def tiny_teacher(seed: int = 0, tokenizer: Path | None = None, **config: Any) -> CLAPTeacher:
    """`CLAPTeacher(TeacherConfig.tiny(**config))` built after torch.manual_seed(seed) (64-d by default)."""
    import torch

    from tinyclap.models.teacher import CLAPTeacher, TeacherConfig

    torch.manual_seed(seed)
    return CLAPTeacher(TeacherConfig.tiny(**config), tokenizer)


def save_tiny_teacher(path: Path, seed: int = 0) -> Path:
    """The tiny random teacher (seed `seed`) saved at `path` (`<path>.safetensors` + `.json`)."""
    from tinyclap.models.teacher import save_teacher

    return save_teacher(tiny_teacher(seed), path)


def calibrate_bn(module: torch.nn.Module, logmel: torch.Tensor) -> None:
    """Random models with untouched BatchNorm statistics map every clip to nearly the same embedding;
    fitting the statistics to a few clips makes the embeddings (and predictions) differ between clips."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
    module.train()
    with torch.no_grad():
        module(logmel)
    module.eval()


def calibrated_models(
    waves: torch.Tensor, student: str, teacher_path: Path
) -> tuple[CLAPTeacher, torch.nn.Module, torch.Tensor]:
    """The tiny random teacher (seed 0, saved at `teacher_path`) and a random `student` of its embedding size,
    both with BatchNorm statistics fitted to the log-mels of `waves` (B, samples at 44.1 kHz). Returns
    (teacher, student, logmel), the models in eval mode."""
    from tinyclap.audio.frontend import LogMel
    from tinyclap.models.students import create_student
    from tinyclap.models.teacher import save_teacher

    logmel = LogMel()(waves)
    teacher = tiny_teacher()
    calibrate_bn(teacher.audio_encoder, logmel)
    save_teacher(teacher, teacher_path)
    model = create_student(student, embed_dim=teacher.embed_dim)
    calibrate_bn(model, logmel)
    return teacher, model, logmel


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread inside the block: on a small shared CPU, two spinning OpenMP threads per process
    make tiny convolutions many times slower. The previous count is restored."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors checkpoint (student, teacher or training state)."""
    from tinyclap.models.checkpoint import read_model

    return read_model(path)[1]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> None:
    """The same non-empty set of keys under `prefix`, each with the same dtype and bit-identical values."""
    import torch

    keys = sorted(k for k in a if k.startswith(prefix))
    assert keys and keys == sorted(k for k in b if k.startswith(prefix))
    for k in keys:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------- processes


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -c code` in a fresh interpreter (e.g. to see which modules an import pulls in), output
    captured."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


MEMORY_CAP = 1536 << 20  # 1.5 GiB of address space: far above a tiny model, far below a hostile allocation


def run_capped(argv: Sequence[str] | str, *, memory: int = MEMORY_CAP, timeout: float = 120,
               cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (an argv list, or Python code when a str) in a child process whose address space is
    capped at `memory` bytes (RLIMIT_AS) and that is killed after `timeout` s (TimeoutExpired is raised).
    One thread per library, so the cap is not spent on thread stacks. Output captured as text."""
    import os
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    cmd = [sys.executable, "-c", argv] if isinstance(argv, str) else list(argv)
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    full_env = {**os.environ, **threads, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full_env,
                          preexec_fn=cap)


def tinyclap_argv(*args: str) -> list[str]:
    """argv running the tinyclap CLI in a fresh interpreter (`python -m tinyclap.cli ARGS`)."""
    return [sys.executable, "-m", "tinyclap.cli", *args]


def python_argv(code: str, *args: str) -> list[str]:
    """argv running `code` in a fresh interpreter with `args` as sys.argv[1:]."""
    return [sys.executable, "-c", code, *args]


def small_export(folder: Path, us8k_root: Path, student_name: str, labels: list[str], dim: int) -> Path:
    """A random-weight `student_name` (`dim`-d, seed 0) exported fp32 to `folder` with a random class matrix
    of `labels` (seed 0) and a 1-clip parity check on US8K fold 1: the export the runtime/serve tests use."""
    import torch

    from tinyclap.deploy.clips import find_audio, pick
    from tinyclap.deploy.export import export
    from tinyclap.models.students import create_student
    from tinyclap.zeroshot import ZeroShotClassifier

    torch.manual_seed(0)
    student = create_student(student_name, embed_dim=dim).eval()
    matrix = np.random.default_rng(0).standard_normal((len(labels), dim))
    clf = ZeroShotClassifier(list(labels), matrix, float(np.log(50)))
    export(student, folder, clf, parity_audio=pick(find_audio(us8k_root / "audio" / "fold1"), 1))
    return folder


def load_bench(name: str) -> Any:
    """The script bench/NAME.py as a module (loaded once; registered in sys.modules, where dataclasses look their
    module up by name)."""
    import importlib.util

    key = f"tinyclap_bench_{name}"
    if key not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(key, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def index_three_clips(work: Path, model: Path) -> Path:
    """work/source with three distinct 2 s WAVs (clip0-2.wav), indexed by `tinyclap embed` with `model` into
    work/index (returned)."""
    from tinyclap.cli import main

    src = work / "source"
    src.mkdir()
    for i in range(3):
        write_wav(src / f"clip{i}.wav", distinct_sound(i, 2.0, 22050), 22050)
    assert main(["embed", str(src), "--model", str(model), "--out", str(work / "index"), "--no-progress",
                 "--workers", "0"]) == 0
    return work / "index"


def load_msclap_modules(monkeypatch: Any, package: str, names: Sequence[str],
                        stubs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """msclap/models/NAME.py files by path, in order, under a throwaway package name (the msclap package's
    __init__ imports torchaudio and the hub); `stubs` are modules set first (name -> attributes)."""
    import importlib.metadata
    import importlib.util
    import types

    models = Path(str(importlib.metadata.distribution("msclap").locate_file("msclap/models")))
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(models)]
    monkeypatch.setitem(sys.modules, package, pkg)
    for name, attrs in (stubs or {}).items():
        stub = types.ModuleType(f"{package}.{name}")
        stub.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, stub.__name__, stub)
    mods = {}
    for name in names:
        spec = importlib.util.spec_from_file_location(f"{package}.{name}", models / f"{name}.py")
        mods[name] = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, mods[name])
        spec.loader.exec_module(mods[name])
    return mods


def randomise_norms(model: torch.nn.Module, gen: torch.Generator, *, mean_std: float = 0.1,
                    var_range: tuple[float, float] = (0.5, 1.5)) -> None:
    """Non-trivial BatchNorm/LayerNorm statistics and affines (and HTS-AT's relative position biases), so that a
    parity test covers them too: running means ~ N(0, mean_std), running variances uniform in `var_range`."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * mean_std)
                lo, hi = var_range
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * (hi - lo) + lo)
            if hasattr(m, "relative_position_bias_table"):
                m.relative_position_bias_table.normal_(0, 0.5, generator=gen)


def write_bpe_tokenizer(folder: Path, first: Sequence[str] = (), last: Sequence[str] = ()) -> Path:
    """vocab.json + merges.txt of a small byte-level BPE vocabulary in `folder`: the special tokens `first`, the
    256 byte symbols (in GPT-2's order), a few merges ("dog", "bark", ...), then `last`."""
    import json

    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {t: i for i, t in enumerate(first)}
    for c in sorted(ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    merges = ["Ġ d", "Ġd o", "Ġdo g", "Ġ b", "Ġb a", "Ġba r", "Ġbar k", "a r", "i n"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    for t in last:
        vocab[t] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder
