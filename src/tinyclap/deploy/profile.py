"""Cost of a student (and of the teacher's audio tower) for one 5 s clip: size, MACs, memory, CPU latency.

What is measured, and how:

- parameters: `tinyclap.models.students.count_params`; MACs: `count_macs` (conv/linear hooks) for the student,
  `tinyclap.audio.frontend.frontend_macs` (counted by hand) for the front end: LogMel's conv1d STFT + mel matmul,
  and the factorised DFT that the ONNX export runs instead.
- peak activation memory: a liveness analysis over the exported ONNX graph. Every intermediate tensor's
  size is taken from one real run (all intermediates exposed as outputs, optimisations off); executing
  the nodes in graph order, a tensor is live from the node that produces it to its last consumer (graph
  inputs from the start, graph outputs to the end); the peak is the largest total of live tensors over
  all steps. Weights (initialisers, Constant nodes) are not activations and are not counted. This is
  what an executor that frees each tensor after its last use needs, without ONNX Runtime's arena slack
  or in-place reuse. int8: the student's tensors at 1 byte per element (= fp32 / 4); the front end,
  which stays fp32 in model.int8.onnx, at 4.
- file sizes: fp32 and int8 ONNX files written by `tinyclap.deploy.onnx` / `quantize` into a temporary folder.
- latency: wall time of one forward pass on a (1, 220500) clip, `threads` intra-op threads (PyTorch:
  `torch.set_num_threads` inside the call, restored after; ONNX Runtime: `intra_op_num_threads`, graph
  optimisation ORT_ENABLE_ALL), after `warmup` untimed runs; median, quartiles and min/max of `runs`.
  Front end, student and the whole model are timed separately, for torch fp32, ORT fp32 and ORT int8
  (whose front end is the fp32 one). Weights are random: latency and size do not depend on them.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyclap.audio import CLIP_SAMPLES
from tinyclap.audio.frontend import FactorisedLogMel, LogMel, frontend_macs
from tinyclap.deploy.onnx import FRONTEND_SCOPE, embedder, export_onnx_models, onnx_export, student_of, torch_run
from tinyclap.deploy.quantize import quantize_int8
from tinyclap.deploy.runtime import MODEL_FILE, MODEL_INT8_FILE, STUDENT_FILE, STUDENT_INT8_FILE, ort_session
from tinyclap.models.students import count_macs, count_params

TEACHER_NAME = "cnn14"  # create_student("cnn14") = MS CLAP 2022's audio tower (Cnn14 + projection)
FRONTEND_FILE = "frontend.onnx"  # the factorised front end alone, for its own latency and memory


def timing(fn: Callable[[], Any], runs: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median / quartiles / min / max in milliseconds of `runs` calls after `warmup` untimed ones."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(ts)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {
        "median_ms": float(med),
        "q1_ms": float(q1),
        "q3_ms": float(q3),
        "iqr_ms": float(q3 - q1),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "runs": int(runs),
    }


class torch_threads:
    """Context manager: torch.set_num_threads(n) inside, the previous value restored after."""

    def __init__(self, n: int | None) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(int(self.n))

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def peak_activation_bytes(
    path: str | os.PathLike,
    inputs: dict[str, np.ndarray],
    bytes_per_element: Callable[[str, np.ndarray], float] | None = None,
) -> dict[str, Any]:
    """Liveness analysis over an ONNX graph (see the module docstring) -> {"bytes", "at_node", "tensors"}.

    `bytes_per_element(node_name, array)` overrides a tensor's element size (default: its dtype's).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph = model.graph
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    weights = {i.name for i in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    outputs = {o.name for o in graph.output}
    for n in nodes:
        for o in n.output:
            if o and o not in outputs:
                graph.output.append(onnx.ValueInfoProto(name=o))  # untyped: ORT infers the type
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as exported
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, inputs)))
    values.update(inputs)

    producer = {name: -1 for name in inputs}
    owner: dict[str, str] = {name: "" for name in inputs}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o], owner[o] = i, n.name
    last_use = dict(producer)
    for i, n in enumerate(nodes):
        for x in n.input:
            if x in producer and x not in weights:
                last_use[x] = max(last_use[x], i)
    for o in outputs:
        if o in last_use:
            last_use[o] = len(nodes)
    size = {}
    for name in producer:
        arr = np.asarray(values[name])
        per = bytes_per_element(owner[name], arr) if bytes_per_element else arr.itemsize
        size[name] = int(arr.size * per)
    # sweep over steps -1 (inputs only) .. n-1 at index step + 1: +size when produced, -size after last use
    delta = np.zeros(len(nodes) + 3)
    for name, p in producer.items():
        delta[p + 1] += size[name]
        delta[last_use[name] + 2] -= size[name]
    live = np.cumsum(delta)[: len(nodes) + 1]  # (n + 1,) live bytes at each step
    step = int(np.argmax(live))
    return {
        "bytes": int(live[step]),
        "at_node": nodes[step - 1].name if step >= 1 else "(inputs)",
        "tensors": len(producer),
    }


def _sizes(folder: Path) -> dict[str, int]:
    return {
        name: (folder / name).stat().st_size
        for name in (MODEL_FILE, STUDENT_FILE, MODEL_INT8_FILE, STUDENT_INT8_FILE, FRONTEND_FILE)
        if (folder / name).is_file()
    }


def synthetic_clips(n: int, seed: int = 0) -> np.ndarray:
    """(n, 220500) deterministic signals (tone bursts over noise) for timing and fallback calibration."""
    rng = np.random.default_rng(seed)
    t = np.arange(CLIP_SAMPLES) / 44100.0
    out = []
    for i in range(n):
        tone = np.sin(2 * np.pi * (200 + 300 * i) * t) * 0.3
        env = (np.sin(2 * np.pi * (0.5 + i) * t) > 0).astype(np.float64)
        out.append(tone * env + rng.standard_normal(CLIP_SAMPLES) * 0.05 * (1 + i % 3))
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class _Timer:
    """How every latency is measured: `runs` timed calls after `warmup`, on `threads` intra-op threads."""

    runs: int
    warmup: int
    threads: int | None

    def __call__(self, fn: Callable[[], Any]) -> dict[str, float]:
        return timing(fn, self.runs, self.warmup)


def _costs(student: nn.Module, lm: LogMel, spec: str, threads: int | None) -> dict[str, Any]:
    """What does not need a clock: parameters and MACs (student, front end as torch and ONNX run it)."""
    n_frames = lm.n_frames(CLIP_SAMPLES)
    fe_macs = frontend_macs(lm)
    student_macs = count_macs(student, n_frames)
    return {
        "model": student.name,
        "source": str(spec),
        "params": count_params(student),
        "macs": {
            "student": student_macs,
            "frontend_conv_stft": fe_macs["conv_stft"],
            "frontend_mel": fe_macs["mel"],
            "frontend_torch": fe_macs["total"],
            "frontend_onnx_factorised": fe_macs["factorised"],
            "total_torch": student_macs + fe_macs["total"],
            "total_onnx": student_macs + fe_macs["factorised"],
        },
        "clip": {"samples": CLIP_SAMPLES, "seconds": 5.0, "frames": n_frames},
        "threads": threads,
    }


def _torch_latency(student: nn.Module, lm: LogMel, x: torch.Tensor, mel: torch.Tensor, timer: _Timer
                   ) -> dict[str, Any]:
    """PyTorch fp32: front end, student and the whole model (front end + student + normalisation)."""
    model = embedder(student, lm)
    with torch.no_grad(), torch_threads(timer.threads):
        return {
            "frontend": timer(lambda: lm(x)),
            "student": timer(lambda: student(mel)),
            "model": timer(lambda: model(x)),
        }


def _write_onnx(student: nn.Module, lm: LogMel, d: Path, x: torch.Tensor, int8_fp32_blocks: int | None,
                calibration: np.ndarray | None) -> dict[str, tuple[str, str]]:
    """Export model/student (+ front end alone) into `d`, and int8 copies unless `int8_fp32_blocks` is None;
    returns {backend: (model file, student file)}."""
    export_onnx_models(student, d)
    onnx_export(FactorisedLogMel(lm).eval(), x, d / FRONTEND_FILE, "waveform", {0: "batch"})
    backends = {"ort_fp32": (MODEL_FILE, STUDENT_FILE)}
    if int8_fp32_blocks is not None:
        cal = synthetic_clips(4) if calibration is None else calibration
        cal_mel = torch_run(lm, cal)
        quantize_int8(d / MODEL_FILE, d / MODEL_INT8_FILE, cal, "waveform", fp32_blocks=int8_fp32_blocks)
        quantize_int8(d / STUDENT_FILE, d / STUDENT_INT8_FILE, cal_mel, "logmel", fp32_blocks=int8_fp32_blocks)
        backends["ort_int8"] = (MODEL_INT8_FILE, STUDENT_INT8_FILE)
    return backends


def _ort_latency(d: Path, backends: dict[str, tuple[str, str]], wave: np.ndarray, mel: np.ndarray, timer: _Timer,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """ONNX Runtime per backend: the (fp32) front end alone, the student and the whole model."""
    fe_sess = ort_session(d / FRONTEND_FILE, timer.threads)
    fe_time = timer(lambda: fe_sess.run(None, {"waveform": wave}))
    lat = {}
    for backend, (mfile, sfile) in backends.items():
        say(f"{backend} latency")
        ms, ss = ort_session(d / mfile, timer.threads), ort_session(d / sfile, timer.threads)
        lat[backend] = {
            "frontend": fe_time,
            "student": timer(lambda ss=ss: ss.run(None, {"logmel": mel})),
            "model": timer(lambda ms=ms: ms.run(None, {"waveform": wave})),
        }
    return lat


def _peak_memory(d: Path, wave: np.ndarray, mel: np.ndarray) -> dict[str, Any]:
    """Peak activation memory of the exported graphs (see the module docstring); int8: the student's
    tensors at a quarter of their fp32 size, the front end's (kept fp32) at full size."""
    student_peak = peak_activation_bytes(d / STUDENT_FILE, {"logmel": mel})
    model_peak = peak_activation_bytes(d / MODEL_FILE, {"waveform": wave})
    model_peak_int8 = peak_activation_bytes(
        d / MODEL_FILE,
        {"waveform": wave},
        lambda node, arr: arr.itemsize if node.startswith(FRONTEND_SCOPE) or node == "" else arr.itemsize / 4,
    )
    frontend_peak = peak_activation_bytes(d / FRONTEND_FILE, {"waveform": wave})
    return {
        "method": "liveness over the exported ONNX graph (tensor sizes from one run; weights excluded)",
        "student_fp32": student_peak["bytes"],
        "student_int8": student_peak["bytes"] // 4,
        "frontend_fp32": frontend_peak["bytes"],
        "model_fp32": model_peak["bytes"],
        "model_int8": int(model_peak_int8["bytes"]),
        "model_fp32_peak_at": model_peak["at_node"],
        "student_fp32_peak_at": student_peak["at_node"],
    }


def profile_model(
    spec: str,
    *,
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = 1,
    int8: bool = True,
    int8_fp32_blocks: int = 4,
    calibration: np.ndarray | None = None,
    workdir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Profile a student (name, checkpoint or run folder) for one 5 s clip; returns a JSON-able dict.

    `calibration` (K, 220500) real clips for the int8 model (default: synthetic signals; latency does not
    depend on the calibration). `int8_fp32_blocks`: leading student blocks kept fp32 (see
    `tinyclap.deploy.quantize.quant_plan`).
    """
    from tinyclap.models import load_model

    student = student_of(load_model(spec)).eval()
    say = (lambda msg: log(f"{student.name}: {msg}")) if log else (lambda msg: None)
    lm = LogMel().eval()
    timer = _Timer(runs, warmup, threads)
    res = _costs(student, lm, spec, threads)
    wave = synthetic_clips(1)  # (1, N)
    x = torch.from_numpy(wave)
    with torch.no_grad():
        mel = lm(x)  # (1, T, 64)
    say("torch fp32")
    lat = {"torch_fp32": _torch_latency(student, lm, x, mel, timer)}
    with tempfile.TemporaryDirectory(prefix="tinyclap-profile-", dir=workdir) as tmp:
        d = Path(tmp)
        say("ONNX export" + (" and int8 quantisation" if int8 else ""))
        backends = _write_onnx(student, lm, d, x, int8_fp32_blocks if int8 else None, calibration)
        if int8:
            res["int8"] = {
                "fp32_blocks": int8_fp32_blocks,
                "calibration": "synthetic" if calibration is None else f"{len(calibration)} real clips",
            }
        lat.update(_ort_latency(d, backends, wave, mel.numpy(), timer, say))
        res["file_bytes"] = _sizes(d)
        say("peak activation memory")
        res["peak_activation_bytes"] = _peak_memory(d, wave, mel.numpy())
    res["latency"] = lat
    res["time_split"] = {backend: _split(v) for backend, v in lat.items()}
    return res


def _split(lat: dict[str, Any]) -> dict[str, float]:
    """Where the time goes: front end vs student, from their separate medians."""
    fe, st = lat["frontend"]["median_ms"], lat["student"]["median_ms"]
    return {"frontend_ms": fe, "student_ms": st, "frontend_share": fe / max(fe + st, 1e-9)}


def compare(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    """Speed-ups of the student's int8 (or fp32) ONNX model over the teacher tower, per teacher backend."""
    s_backend = "ort_int8" if "ort_int8" in student["latency"] else "ort_fp32"
    s = student["latency"][s_backend]["model"]["median_ms"]
    out: dict[str, Any] = {"student_backend": s_backend, "student_model_ms": s}
    for backend, v in teacher["latency"].items():
        out[f"speedup_vs_teacher_{backend}"] = v["model"]["median_ms"] / s
    return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """README table: name, params, MACs, peak memory, model latency (median +- IQR/2) per backend."""
    backends = [b for b in ("torch_fp32", "ort_fp32", "ort_int8") if any(b in r["latency"] for r in rows)]
    head = [
        "model",
        "params (M)",
        "MMACs student",
        "MMACs front end (torch / ONNX)",
        "peak act. fp32 / int8 (MB)",
    ]
    head += [f"{b.replace('_', ' ')} (ms)" for b in backends] + ["front end share (ORT fp32)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m, p = r["macs"], r["peak_activation_bytes"]
        cells = [
            f"`{r['model']}`",
            f"{r['params'] / 1e6:.2f}",
            f"{m['student'] / 1e6:.0f}",
            f"{m['frontend_torch'] / 1e6:.0f} / {m['frontend_onnx_factorised'] / 1e6:.0f}",
            f"{p['model_fp32'] / 1e6:.1f} / {p['model_int8'] / 1e6:.1f}",
        ]
        for b in backends:
            t = r["latency"].get(b)
            cells.append(f"{t['model']['median_ms']:.1f} ± {t['model']['iqr_ms'] / 2:.1f}" if t else "–")
        share = r.get("time_split", {}).get("ort_fp32", {}).get("frontend_share")
        cells.append(f"{100 * share:.0f} %" if share is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
