"""TensorFlow Lite Micro graphs of a student: int8 conversion (litert-torch PT2E) and TFLM's own kernels.

A clip runs on a microcontroller as two graphs (what `--pool-window` does in torch):

- `backbone.tflite`  one window's log-mel (1, T, 64) -> pooled features (1, F), once per window;
- `head.tflite`      the mean of a clip's window features (1, F) -> embedding (1, k), once per clip.

Both are full int8 (weights symmetric per channel, activations per tensor), calibrated on real recordings.
`TflmGraph` runs a graph in the `tflite-micro` interpreter (TFLM's C++ kernels, as on the device) and
measures its arena with TFLM's recording allocator. The converter and the interpreter come with the `mcu`
extra (`pip install 'tinyclap[mcu]'`); nothing here is imported by the core package.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

MCU_EXTRA = "pip install 'tinyclap[mcu]'"
_ARENA_RE = re.compile(r"Arena allocation total (\d+) bytes")
# TFLite tensor types by schema number (the ones an int8 graph uses)
_TYPES = {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}


class McuExtraMissing(ValueError):
    """The converter or the TFLM interpreter is not installed."""


def require_mcu() -> None:
    """Raise McuExtraMissing (one line naming the install command) unless the `mcu` extra is importable."""
    try:
        import litert_torch  # noqa: F401
        from tflite_micro.python.tflite_micro import runtime  # noqa: F401
    except ImportError as e:
        raise McuExtraMissing(f"the microcontroller export needs the mcu extra ({e.name} is missing): "
                              f"{MCU_EXTRA}") from None


def require_tflm() -> None:
    """Raise McuExtraMissing unless the tflite-micro interpreter (all running an export needs) is importable."""
    try:
        from tflite_micro.python.tflite_micro import runtime  # noqa: F401
    except ImportError as e:
        raise McuExtraMissing(f"running a TFLM export needs the tflite-micro interpreter ({e.name} is missing): "
                              f"{MCU_EXTRA}") from None


def _quiet_converter() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _converter_silent() -> Iterator[None]:
    """No progress lines from the converter on stdout (a `--json` report must stay parseable)."""
    import sys

    from litert_torch import progress

    quiet = progress.console.quiet
    progress.console.quiet = True
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        progress.console.quiet = quiet


def convert_int8(module: Any, sample: Any, calibration: Iterable[Any]) -> bytes:
    """A torch module (eval) -> full-int8 .tflite bytes, activation ranges observed on `calibration` inputs
    (tensors shaped like `sample`)."""
    _quiet_converter()
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with _converter_silent(), torch.no_grad():
        graph = torch.export.export(module.eval(), (sample,)).module()
        graph = prepare_pt2e(graph, quantizer)
        for x in calibration:
            graph(x)
        graph = move_exported_model_to_eval(convert_pt2e(graph, fold_quantize=False))
        edge = litert_torch.convert(graph, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.tflite")
            edge.export(path)
            with open(path, "rb") as f:
                return f.read()


def op_list(data: bytes) -> list[dict[str, Any]]:
    """The graph's operators in order: `{"op": "CONV_2D", "type": "int8"}` (the type of its first input)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        first = next((graph.tensors[i].type for i in op.inputs if i >= 0), None)
        ops.append({"op": name, "type": _TYPES.get(first, str(first))})
    return ops


def op_summary(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per op and the ops whose input is float (kept float: TFLM or the converter lacks the int8 op)."""
    counts = Counter(o["op"] for o in ops)
    float_ops = sorted({o["op"] for o in ops if o["type"] == "float32" and o["op"] not in ("QUANTIZE",)})
    return {"counts": dict(sorted(counts.items())), "float_ops": float_ops}


@contextlib.contextmanager
def _stderr_to(tmp: Any) -> Iterator[None]:
    """The process's fd 2 (where TFLM's C++ prints) into `tmp` for the duration."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(tmp.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TflmGraph:
    """One .tflite graph in the tflite-micro interpreter (TFLM's reference kernels).

    `run(x)` takes and returns float32 (quantising the input and dequantising the output with the graph's
    scales when they are int8); `arena_bytes` is the tensor arena TFLM allocated (its recording allocator).
    """

    def __init__(self, data: bytes, arena_size: int = 8 << 20) -> None:
        require_tflm()
        from tflite_micro.python.tflite_micro import runtime

        self.data = bytes(data)
        self._ip = runtime.Interpreter.from_bytes(self.data, arena_size=arena_size)
        self.input = self._ip.get_input_details(0)
        self.output = self._ip.get_output_details(0)
        self.arena_bytes: int | None = None

    @staticmethod
    def _qparams(details: dict[str, Any]) -> tuple[float, int] | None:
        q = details.get("quantization_parameters") or {}
        scales, zps = q.get("scales"), q.get("zero_points")
        if details["dtype"] == np.float32 or scales is None or len(scales) != 1:
            return None
        return float(scales[0]), int(zps[0])

    def quantisation(self) -> dict[str, Any]:
        """Input and output dtype, shape and (scale, zero point) for the firmware."""
        def one(d: dict[str, Any]) -> dict[str, Any]:
            q = self._qparams(d)
            return {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                    "scale": None if q is None else q[0], "zero_point": None if q is None else q[1]}
        return {"input": one(self.input), "output": one(self.output)}

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(self.input["shape"])
        q = self._qparams(self.input)
        if q is not None:
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / q[0]) + q[1], info.min, info.max).astype(self.input["dtype"])
        self._ip.set_input(x, 0)
        self._ip.invoke()
        if self.arena_bytes is None:
            self.arena_bytes = self._measure_arena()
        y = np.array(self._ip.get_output(0))
        q = self._qparams(self.output)
        return (y.astype(np.float32) if q is None else (y.astype(np.float32) - q[1]) * q[0]).reshape(-1)

    def _measure_arena(self) -> int:
        with tempfile.TemporaryFile() as tmp:
            with _stderr_to(tmp):
                self._ip.print_allocations()
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
        m = _ARENA_RE.search(text)
        if m is None:
            raise RuntimeError(f"tflite-micro printed no arena total: {text[:200]!r}")
        return int(m.group(1))


def measure_arena(data: bytes, n_input: int | None = None) -> int:
    """The tensor arena (bytes) TFLM allocates for `data`, measured by running it once on zeros."""
    graph = TflmGraph(data)
    graph.run(np.zeros(int(np.prod(graph.input["shape"])) if n_input is None else n_input, np.float32))
    assert graph.arena_bytes is not None
    return graph.arena_bytes
