"""bench/mcu_real.py's device-window protocol and metrics, on made-up audio (the real run needs the shared
UrbanSound8K and a distilled pair; see bench/REPORT.md)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile as sf
from helpers import load_bench


def test_device_window_embeddings_match_the_export_graphs(tmp_path: Path) -> None:
    """Batched windows in the bench = the TFLM export's torch reference (backbone per window, mean, head)."""
    from tinyclap.audio import load_audio
    from tinyclap.data.labelled import Item
    from tinyclap.deploy.mcu import graphs
    from tinyclap.models.fingerprint import load_model_for_eval

    mr = load_bench("mcu_real")
    rng = np.random.default_rng(0)
    items = []
    for i, seconds in enumerate((2.5, 0.6)):  # 3 windows (the last aligned to the end); one zero-padded window
        path = tmp_path / f"c{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * 44100))).astype(np.float32), 44100)
        items.append(Item(path, i))
    ds = SimpleNamespace(items=items)
    emb = mr.device_window_embeddings("mcu-s", ds, 1.0, tmp_path / "emb")
    assert emb.shape == (2, 1024) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert len(list((tmp_path / "emb").glob("*.npy"))) == 1
    assert np.array_equal(mr.device_window_embeddings("mcu-s", ds, 1.0, tmp_path / "emb"), emb)  # reused

    model, _ = load_model_for_eval("mcu-s")
    student = model.student.eval()
    samples, _ = graphs.window_frames(student, model.frontend, 1.0)
    norm = graphs.input_norm(student)
    fns = graphs.torch_fns(student)
    for it, got in zip(items, emb):
        wins = graphs.window_logmels(load_audio(it.path, 44100), samples, model.frontend, norm)
        assert np.allclose(graphs.clip_embedding(wins, *fns), got, atol=1e-5)


def test_row_scores_against_the_teacher() -> None:
    mr = load_bench("mcu_real")
    weights = np.eye(3, dtype=np.float32)
    emb = np.eye(3, dtype=np.float32)[[0, 1, 1, 2]]
    y = np.array([0, 1, 2, 2])
    teacher_pred = np.array([0, 1, 1, 0])
    r = mr.row("m", emb, weights, y, teacher_pred, 0.5, emb)
    assert r["accuracy"] == 0.75 and r["retention"] == 1.5 and r["top1_agreement"] == 0.75
    assert r["cosine_to_teacher"] == 1.0 and r["clips"] == 4
    table = mr.format_table({"rows": [r], "target": {"agreement_ratio": 0.95, "needed": 0.9, "met": True},
                             "clips": 4, "folds": "3"})
    assert "| m |" in table and "met" in table
