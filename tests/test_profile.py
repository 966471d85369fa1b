"""`tinyclap profile`: the measurement helpers and the command's JSON (small --runs, no teacher)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tinyclap.cli import main
from tinyclap.deploy.profile import compare, markdown_table, peak_activation_bytes, timing, torch_threads


def test_peak_activation_liveness(tmp_path: Path) -> None:
    """x -> Relu -> a -> Relu -> b; c = a + b; d = Relu(c): the peak is {a, b, c} while the Add runs."""
    n = 1000
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r1"),
        helper.make_node("Relu", ["a"], ["b"], name="r2"),
        helper.make_node("Add", ["a", "b"], ["c"], name="add"),
        helper.make_node("Relu", ["c"], ["d"], name="r3"),
    ]
    vi = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n])  # noqa: E731
    graph = helper.make_graph(nodes, "g", [vi("x")], [vi("d")])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = {"x": np.ones((1, n), np.float32)}
    res = peak_activation_bytes(path, x)
    # steps: r1 {x, a}, r2 {a, b}, add {a, b, c}, r3 {c, d}; x is dead after r1
    assert res["bytes"] == 3 * 4 * n and res["at_node"] == "add"
    assert peak_activation_bytes(path, x, lambda node, arr: 1.0)["bytes"] == 3 * n


def test_timing_and_threads() -> None:
    calls = []
    t = timing(lambda: calls.append(1), runs=5, warmup=2)
    assert len(calls) == 7 and t["runs"] == 5
    assert 0 <= t["min_ms"] <= t["q1_ms"] <= t["median_ms"] <= t["q3_ms"] <= t["max_ms"]
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        timing(lambda: None, runs=0)


def test_profile_json(capsys: pytest.CaptureFixture[str]) -> None:
    name = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
    assert main(["profile", "--model", name, "--json", "--runs", "2", "--warmup", "1", "--no-teacher"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1  # one JSON object per model
    r = json.loads(lines[0])
    assert r["model"] == name and r["params"] == 3_244_529 and r["threads"] == 1
    m = r["macs"]
    assert m["frontend_conv_stft"] == 690 * 1026 * 1024 and m["frontend_mel"] == 690 * 513 * 64
    assert 60e6 < m["student"] < 70e6 and m["frontend_onnx_factorised"] < m["frontend_torch"] / 5
    p = r["peak_activation_bytes"]
    assert p["student_int8"] == p["student_fp32"] // 4 and 0 < p["student_fp32"] <= p["model_fp32"]
    assert p["model_int8"] <= p["model_fp32"] and p["frontend_fp32"] <= p["model_fp32"]
    sizes = r["file_bytes"]
    assert sizes["model.int8.onnx"] < sizes["model.onnx"] / 2 and "student.int8.onnx" in sizes
    for backend in ("torch_fp32", "ort_fp32", "ort_int8"):
        for part in ("frontend", "student", "model"):
            t = r["latency"][backend][part]
            assert t["runs"] == 2 and t["median_ms"] > 0 and t["iqr_ms"] >= 0
        assert 0 < r["time_split"][backend]["frontend_share"] < 1
    table = markdown_table([r])
    assert table.splitlines()[0].startswith("| model | params (M)") and f"`{name}`" in table
    # and the human-readable form
    assert (
        main(["profile", "--model", name, "--runs", "1", "--warmup", "0", "--no-teacher", "--no-int8"]) == 0
    )
    out = capsys.readouterr().out
    assert "torch_fp32" in out and "ort_fp32" in out and "ort_int8" not in out


def test_compare_speedups() -> None:
    def fake(model_ms: dict[str, float]) -> dict:
        return {"latency": {b: {"model": {"median_ms": v}} for b, v in model_ms.items()}}

    c = compare(fake({"ort_fp32": 20.0, "ort_int8": 10.0}), fake({"torch_fp32": 800.0, "ort_int8": 300.0}))
    assert c["student_backend"] == "ort_int8"
    assert c["speedup_vs_teacher_torch_fp32"] == 80.0 and c["speedup_vs_teacher_ort_int8"] == 30.0
