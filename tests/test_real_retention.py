"""The real-recording proof (bench/real_retention.py) in its CI size: a proxy teacher on a few UrbanSound8K
clips per class, its cache, a short two-stage distillation on 2 s crops, and fold-3 evaluation. The
distilled student must sit closer to the teacher than an untrained one of the same architecture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import load_bench


def _bench():
    return load_bench("real_retention")


def test_knn_accuracy_on_separated_clusters() -> None:
    rr = _bench()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    ref_y = np.repeat(np.arange(3), 5)
    ref = centres[ref_y] + 0.05 * rng.normal(size=(15, 16))
    q_y = np.array([0, 1, 2, 2])
    query = centres[q_y] + 0.05 * rng.normal(size=(4, 16))
    assert rr.knn_accuracy(ref, ref_y, query, q_y, 1) == 1.0
    assert rr.knn_accuracy(ref, ref_y, query, q_y, 5) == 1.0
    assert rr.knn_accuracy(ref, ref_y, query, np.array([1, 1, 2, 2]), 3) == 0.75


def test_random_crop_stays_inside_the_audio() -> None:
    from tinyclap.train.cache import random_crop_start

    mel = np.full((690, 64), -100.0, dtype=np.float16)  # the log floor: zero padding
    mel[:552] = np.random.default_rng(0).normal(size=(552, 64))  # a 4 s clip padded to 5 s
    starts = {random_crop_start(mel, 216) for _ in range(200)}
    assert min(starts) >= 0 and max(starts) <= 552 - 216 and len(starts) > 20
    assert random_crop_start(mel[:100], 216) == 0  # shorter than the crop: from the start


def test_quick_run_student_beats_untrained(us8k_root: Path, tmp_path: Path) -> None:
    rr = _bench()
    opt = rr.quick_options(str(tmp_path / "run"))
    opt.us8k = str(us8k_root)
    summary = rr.run(opt, log=lambda msg: None)

    assert summary["teacher_reuse_check"]["reused_cache_targets"], summary["teacher_reuse_check"]
    rows = {r["kind"]: r for r in summary["rows"]}
    teacher, untrained, student = rows["teacher"], rows["untrained (random init)"], rows["distilled"]
    assert teacher["retention"] == pytest.approx(1.0) and teacher["cosine_to_teacher"] == pytest.approx(1.0)
    assert student["cosine_to_teacher"] > untrained["cosine_to_teacher"] + 0.2, (student, untrained)
    assert student["top1_agreement"] > untrained["top1_agreement"], (student, untrained)
    assert summary["eval_clips"] == 20 and summary["reference_clips"] == 20
    assert "| model |" in rr.format_table(summary)
    # a rerun reuses every stage
    again = rr.run(opt, log=lambda msg: None)
    assert again["rows"][-1]["cosine_to_teacher"] == pytest.approx(student["cosine_to_teacher"])
