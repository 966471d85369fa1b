"""int8: static QDQ quantisation of the exported graphs with ONNX Runtime, and how it compares with fp32.

What does not quantise well, and why (measured on UrbanSound8K, calibration on fold 1, held-out fold 2,
phinet_alpha_1.50_beta_0.75_t0_6_N_7 with random weights whose BatchNorm statistics were re-estimated on
real audio; every export records its own numbers in manifest.json under "quantization"):

- The front end. Its tensors span a huge dynamic range: the power spectrum covers ~100 dB (amin 1e-10)
  and the log turns *relative* error in small values into large absolute errors in dB. One per-tensor
  8-bit scale (256 levels, ~48 dB) set by the loudest bin rounds every quiet bin to 0, which the log maps
  to -100 dB; the 8-bit waveform itself has only ~48 dB SNR. Quantising it too drops the held-out mean
  cosine to int8 from 0.998 to ~0.3 and zero-shot top-1 agreement to ~10 % ("frontend_int8" in the
  manifest). It stays fp32 in model.int8.onnx (its nodes are excluded); it costs ~4 ms anyway.
- The student's first blocks. The stem sees the log-mel itself (its 3x3 depthwise conv has ONE channel),
  so 8 bits there (~0.5 dB steps over a ~120 dB range) perturb everything downstream: all-int8 student
  0.83 mean cosine; stem fp32 0.963; + block 1 0.968; + block 2 0.992; + block 3 0.995; + block 4 0.998.
  `quant_plan` therefore keeps the first `fp32_blocks` blocks fp32, cutting on block outputs (the narrow
  residual stream, so the fp32->int8 boundary is cheap), and `search_fp32_blocks` picks the fewest that
  reach a target cosine on the calibration clips. Those full-resolution blocks have few, odd channel
  counts (18-72) where ONNX Runtime's int8 kernels are no faster than its fp32 NCHWc ones anyway.
- The graph optimisation of `quant_pre_process` fuses the projection head's residual add into a Gemm with
  a non-constant bias, which the quantiser cannot convert: its int8 weight would be dequantised on every
  run (~4 ms). The pre-processing therefore does shape inference only.
- Everything else (pointwise and depthwise convolutions of the later blocks, the projection head)
  quantises well: per-channel int8 weights, uint8 activations (percentile calibration is slightly better
  than min/max: 0.9979 vs 0.9976 mean cosine here).

ONNX Runtime's quantiser talks a lot (per-tensor warnings on the root logger, "Collecting tensor data and
making histogram ..." on stdout, Python warnings); none of it means anything to a user, so it is silenced
while it runs (`_quiet_quantiser`) and the export says in its own words what is being done.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap.audio.frontend import LogMel
from tinyclap.deploy.clips import Clips, load_clips
from tinyclap.deploy.onnx import FRONTEND_SCOPE, cosines, ort_embed, torch_run
from tinyclap.deploy.runtime import MODEL_FILE, MODEL_INT8_FILE, STUDENT_FILE, STUDENT_INT8_FILE, ort_session
from tinyclap.zeroshot import ZeroShotClassifier

INT8_TARGET_COSINE = 0.99
INT8_TARGET_TOP1 = 0.98
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class Int8Options:
    """How to quantise: calibration method (percentile: ranges at the 0.001/99.999 % percentiles of each
    tensor's histogram, a little better than min/max, ~3x slower), and how many leading student blocks
    stay fp32 ("auto": the fewest that reach `search_target` mean cosine on the calibration clips, found
    with the faster, slightly pessimistic MinMax calibration)."""

    method: str = "percentile"
    fp32_blocks: int | str = "auto"
    search_target: float = 0.995
    max_fp32_blocks: int = 5
    measure_frontend: bool = True


# ------------------------------------------------------------------------------------------ the quantiser


@contextlib.contextmanager
def _quiet_quantiser() -> Iterator[None]:
    """Silence onnxruntime.quantization while it runs: its root-logger warnings, Python warnings, and the
    histogram calibrators' progress prints on stdout (which would also corrupt `--json` output)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _calibration_reader(inputs: np.ndarray, name: str, batch_size: int = 4) -> Any:
    """An onnxruntime CalibrationDataReader over `inputs` (K, ...) in small batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(())
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(
                [
                    {name: np.ascontiguousarray(inputs[i : i + batch_size])}
                    for i in range(0, len(inputs), batch_size)
                ]
            )

    return _Reader()


def _preprocess(src: Path, dst: Path) -> Path:
    """Prepare a graph for the quantiser: symbolic shape inference, and constant Identity nodes inlined.

    ORT's own graph optimisation step of `quant_pre_process` is skipped: it fuses the projection head's
    residual add into a Gemm with a non-constant bias, which the quantiser cannot convert, leaving an int8
    weight to be dequantised on every run (~4 ms). ONNX Runtime optimises the quantised graph at load
    anyway.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet_quantiser():
        quant_pre_process(str(src), str(dst), skip_optimization=True)
    _inline_constant_identities(dst)
    return dst


def _inline_constant_identities(path: Path) -> None:
    """Replace Identity nodes over initialisers by copies of the initialiser, in place.

    The exporter deduplicates identical initialisers (e.g. the all-zero biases that BatchNorm folding
    gives freshly initialised layers) behind Identity nodes; a convolution whose bias is not an
    initialiser is not turned into an int8 QLinearConv (it runs in float on dequantised weights).
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
        onnx.save(model, str(path))


def _base_units(nodes: Sequence[Any]) -> list[tuple[str, int]]:
    """The student encoder's top-level modules that hold convolutions, in graph order, with the index (in
    `nodes`) of their last node: PhiNet's stem and blocks (`_layers.1`, `_layers.2`, ..., `pn_block`) or
    Cnn14's `conv_block1..6`, read from the ONNX node scopes /student/base/<unit>/..."""
    last: dict[str, int] = {}
    with_conv: list[str] = []
    for i, n in enumerate(nodes):
        parts = n.name.split("/")
        if len(parts) > 4 and parts[1] == "student" and parts[2] == "base":
            last[parts[3]] = i
            if n.op_type == "Conv" and parts[3] not in with_conv:
                with_conv.append(parts[3])
    return [(u, last[u]) for u in with_conv]


def _graph_nodes(path: str | os.PathLike) -> list[Any]:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


def quant_plan(path: str | os.PathLike, fp32_blocks: int = 0) -> tuple[list[str], list[str]]:
    """(nodes to quantise, nodes kept fp32) for an exported graph.

    Quantised: the student's nodes (ONNX scope /student/) after its first `fp32_blocks` convolutional
    blocks (PhiNet: the stem, then block 1, 2, ...; Cnn14: conv_block1, ...). Kept fp32: the front end
    (see the module docstring), those leading blocks and what precedes them (bn0), and the final L2
    normalisation (the embedding stays float). Cutting at block outputs puts the fp32/int8 boundary on
    the narrow residual stream rather than on a block's expanded (widest) tensor, which is cheaper.
    """
    nodes = _graph_nodes(path)
    units = _base_units(nodes)
    if not 0 <= fp32_blocks <= len(units):
        raise ValueError(f"fp32_blocks must be in [0, {len(units)}] for this model, got {fp32_blocks}")
    cut = units[fp32_blocks - 1][1] + 1 if fp32_blocks else 0
    quantised = [n.name for n in nodes[cut:] if n.name.startswith("/student/")]
    chosen = set(quantised)
    return quantised, [n.name for n in nodes if n.name not in chosen]


def _quantize_static(pre: Path, dst: Path, calibration: np.ndarray, input_name: str, nodes: list[str],
                     method: str) -> None:
    """One onnxruntime quantize_static call: QDQ, per-channel int8 weights, uint8 activations."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with _quiet_quantiser():
        quantize_static(
            str(pre),
            str(dst),
            _calibration_reader(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_quantize=nodes,
        )


def quantize_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: np.ndarray,
    input_name: str,
    *,
    fp32_blocks: int = 0,
    keep_frontend_fp32: bool = True,
    method: str = "percentile",
) -> dict[str, Any]:
    """Static QDQ int8 quantisation (per-channel int8 weights, uint8 activations) calibrated on `calibration`.

    Which nodes are quantised: `quant_plan`. `keep_frontend_fp32=False` quantises the front end too (used
    only to measure how badly that goes).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {sorted(CALIBRATION_METHODS)}, got {method!r}")
    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one clip of real audio")
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="tinyclap-q-") as tmp:
        pre = _preprocess(src, Path(tmp) / "pre.onnx")
        quantised, kept = quant_plan(pre, fp32_blocks)
        if not keep_frontend_fp32:
            quantised += [n for n in kept if n.startswith(FRONTEND_SCOPE)]
        used = method
        try:
            _quantize_static(pre, dst, calibration, input_name, quantised, method)
        except ValueError as e:
            # onnxruntime's histogram calibrators fail on a tensor whose calibration values are (nearly)
            # constant ("Too many bins for data range"); min/max ranges are always defined
            if method == "minmax":
                raise
            used = f"minmax (fallback: {method} calibration failed: {e})"
            _quantize_static(pre, dst, calibration, input_name, quantised, "minmax")
    return {"fp32_blocks": fp32_blocks, "quantised_nodes": len(quantised), "method": used}


# ------------------------------------------------------------------------------- comparing int8 with fp32


def agreement(fp32: np.ndarray, int8: np.ndarray, classifier: ZeroShotClassifier | None) -> dict[str, Any]:
    """int8 vs fp32 embeddings (B, D) of the same clips: cosines and zero-shot top-1 agreement.

    Besides the plain cosine, `centred_cosine` compares the embeddings after removing the fp32 mean over
    the clips: when all clips share a large common direction (typical of random weights) the plain cosine
    is near 1 whatever int8 does, the centred one is not. `clip_spread` (mean pairwise cosine between
    different clips' fp32 embeddings) and `distinct_top1` show whether the numbers are meaningful at all.
    """
    fp32, int8 = fp32.astype(np.float64), int8.astype(np.float64)
    cos = cosines(fp32, int8)
    mu = fp32.mean(0)
    n = len(fp32)
    gram = cosines(fp32[:, None, :], fp32[None, :, :]) if n > 1 else np.ones((1, 1))
    res: dict[str, Any] = {
        "clips": int(n),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "centred_cosine": float(cosines(fp32 - mu, int8 - mu).mean()) if n > 1 else float("nan"),
        "clip_spread": float(gram[~np.eye(n, dtype=bool)].mean()) if n > 1 else float("nan"),
    }
    if classifier is not None:
        a = np.argmax(classifier.logits(fp32.astype(np.float32)), axis=-1)
        b = np.argmax(classifier.logits(int8.astype(np.float32)), axis=-1)
        res["top1_agreement"] = float((a == b).mean())
        res["distinct_top1"] = int(len(set(a.tolist())))
    return res


def compare_models(fp32_path: Path, int8_path: Path, x: np.ndarray, classifier: ZeroShotClassifier | None
                   ) -> dict[str, Any]:
    """`agreement` of two ONNX files run on the same inputs `x`."""
    return agreement(ort_embed(ort_session(fp32_path), x), ort_embed(ort_session(int8_path), x), classifier)


def search_fp32_blocks(
    student_path: str | os.PathLike,
    calibration_logmel: np.ndarray,
    *,
    target: float = 0.995,
    max_blocks: int = 5,
    method: str = "minmax",
    classifier: ZeroShotClassifier | None = None,
    top1_target: float = INT8_TARGET_TOP1,
) -> tuple[int, list[dict[str, float]]]:
    """Smallest number of leading student blocks (`quant_plan`) to keep fp32 so that int8 reaches `target`.

    Mean cosine int8 vs fp32 is measured on the calibration clips themselves (never on held-out audio,
    which stays for the final report), by bisection over k in [0, max_blocks] (error falls as k grows).
    With a `classifier`, zero-shot top-1 agreement on those clips must also reach `top1_target`: a trained
    student's class margins can be small enough that a 0.999 cosine still flips a few decisions.
    Returns (k, [{"fp32_blocks": k, "calibration_cosine": c[, "calibration_top1_agreement": a]}, ...]).
    """
    fp32 = ort_embed(ort_session(student_path), calibration_logmel)
    hi = min(max_blocks, len(_base_units(_graph_nodes(student_path))))
    history: list[dict[str, float]] = []
    passed: dict[int, bool] = {}

    def ok(k: int) -> bool:
        if k not in passed:
            with tempfile.TemporaryDirectory(prefix="tinyclap-qs-") as tmp:
                q = Path(tmp) / "q.onnx"
                quantize_int8(student_path, q, calibration_logmel, "logmel", fp32_blocks=k, method=method)
                int8 = ort_embed(ort_session(q), calibration_logmel)
            entry = {"fp32_blocks": k, "calibration_cosine": float(cosines(fp32, int8).mean())}
            good = entry["calibration_cosine"] >= target
            if classifier is not None:
                entry["calibration_top1_agreement"] = agreement(fp32, int8, classifier)["top1_agreement"]
                good = good and entry["calibration_top1_agreement"] >= top1_target
            history.append(entry)
            passed[k] = good
        return passed[k]

    if ok(0):
        return 0, history
    if not ok(hi):
        return hi, history
    lo = 0  # fails at lo, passes at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi, history


# -------------------------------------------------------------------------------- the int8 stage of export


@dataclass
class _Int8Data:
    """Calibration and held-out clips, as waveforms (model.onnx) and log-mels (student.onnx)."""

    cal: Clips
    held: Clips
    cal_mel: np.ndarray
    held_mel: np.ndarray


def _int8_data(lm: LogMel, calibration_audio: Sequence[str | os.PathLike],
               heldout_audio: Sequence[str | os.PathLike], show_progress: bool) -> _Int8Data:
    """Decode the two disjoint sets of recordings (refusing overlap or an empty set) and their log-mels."""
    cal_set = {os.path.realpath(p) for p in calibration_audio}
    overlap = [p for p in heldout_audio if os.path.realpath(p) in cal_set]
    if overlap:
        raise ValueError(
            f"held-out audio must not contain calibration files ({len(overlap)} do, e.g. {overlap[0]})"
        )
    cal = load_clips(calibration_audio, desc="int8 calibration audio", show_progress=show_progress)
    held = load_clips(heldout_audio, desc="int8 held-out audio", show_progress=show_progress)
    if len(cal.waves) == 0:
        raise ValueError("int8 calibration needs real recordings (--calibration DIR); none could be decoded")
    if len(held.waves) == 0:
        raise ValueError("int8 evaluation needs held-out recordings not used for calibration; none available")
    return _Int8Data(cal, held, torch_run(lm, cal.waves), torch_run(lm, held.waves))


def _choose_fp32_blocks(out: Path, data: _Int8Data, classifier: ZeroShotClassifier, opts: Int8Options,
                        res: dict[str, Any], say: Callable[[str], None]) -> int:
    """`opts.fp32_blocks`, or with "auto" the result of `search_fp32_blocks` (recorded in `res`)."""
    if opts.fp32_blocks != "auto":
        return int(opts.fp32_blocks)
    say(f"int8: searching how many leading blocks to keep fp32 ({len(data.cal.waves)} calibration clips)")
    k, history = search_fp32_blocks(
        out / STUDENT_FILE,
        data.cal_mel,
        target=opts.search_target,
        max_blocks=opts.max_fp32_blocks,
        method="minmax",
        classifier=classifier,
    )
    res["fp32_blocks_search"] = {
        "target_calibration_cosine": opts.search_target,
        "target_calibration_top1_agreement": INT8_TARGET_TOP1,
        "tried": history,
    }
    return k


def _frontend_int8(out: Path, data: _Int8Data, k: int, method: str, classifier: ZeroShotClassifier
                   ) -> dict[str, Any]:
    """The experiment behind "keep the front end fp32": quantise it too and measure the damage."""
    with tempfile.TemporaryDirectory(prefix="tinyclap-qfe-") as tmp:
        full = Path(tmp) / "model.all-int8.onnx"
        quantize_int8(out / MODEL_FILE, full, data.cal.waves, "waveform", fp32_blocks=k,
                      keep_frontend_fp32=False, method=method)
        return {
            "note": "model.onnx with the front end quantised too (not written; for comparison only)",
            **compare_models(out / MODEL_FILE, full, data.held.waves, classifier),
        }


def _targets_met(res: dict[str, Any]) -> bool:
    """Whether model.int8.onnx reaches the target cosine and top-1 agreement; warns on stderr if not."""
    m = res[MODEL_INT8_FILE]
    met = bool(m["mean_cosine"] >= INT8_TARGET_COSINE and m.get("top1_agreement", 1.0) >= INT8_TARGET_TOP1)
    if not met:
        print(
            f"warning: int8 misses its targets: mean cosine {m['mean_cosine']:.4f} "
            f"(>= {INT8_TARGET_COSINE}), "
            f"top-1 agreement {m.get('top1_agreement', float('nan')):.3f} (>= {INT8_TARGET_TOP1})",
            file=sys.stderr,
        )
    return met


def quantize_export(
    out: Path,
    lm: LogMel,
    classifier: ZeroShotClassifier,
    calibration_audio: Sequence[str | os.PathLike],
    heldout_audio: Sequence[str | os.PathLike],
    opts: Int8Options | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write model.int8.onnx and student.int8.onnx beside the fp32 files in `out`; returns the manifest's
    "quantization" entry: the plan, and int8 vs fp32 on `heldout_audio` (disjoint from the calibration)."""
    show_progress = say is not None  # a caller that logs also wants to see the decoding advance
    opts, say = opts or Int8Options(), say or (lambda msg: None)
    data = _int8_data(lm, calibration_audio, heldout_audio, show_progress)
    res: dict[str, Any] = {
        "format": "QDQ",
        "tool": "onnxruntime.quantization.quantize_static (after quant_pre_process)",
        "weights": "int8, per channel, symmetric",
        "activations": "uint8, per tensor, asymmetric",
        "calibration_method": opts.method,
        "calibration_files": [os.path.basename(p) for p in data.cal.paths],
        "heldout_clips": len(data.held.paths),
        "kept_fp32": "front end, the student's first fp32_blocks blocks (stem, block 1, ...; and bn0), "
        "final L2 normalisation",
        "targets": {"mean_cosine": INT8_TARGET_COSINE, "top1_agreement": INT8_TARGET_TOP1},
    }
    k = res["fp32_blocks"] = _choose_fp32_blocks(out, data, classifier, opts, res, say)
    say(f"int8: quantising ({k} leading blocks fp32), evaluating on {len(data.held.waves)} held-out clips")
    for src, dst, name, x_cal, x_held in (
        (MODEL_FILE, MODEL_INT8_FILE, "waveform", data.cal.waves, data.held.waves),
        (STUDENT_FILE, STUDENT_INT8_FILE, "logmel", data.cal_mel, data.held_mel),
    ):
        info = quantize_int8(out / src, out / dst, x_cal, name, fp32_blocks=k, method=opts.method)
        res[dst] = {**info, **compare_models(out / src, out / dst, x_held, classifier)}
    if opts.measure_frontend:
        res["frontend_int8"] = _frontend_int8(out, data, k, opts.method, classifier)
    res["targets_met"] = _targets_met(res)
    return res
