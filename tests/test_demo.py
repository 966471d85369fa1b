"""`tinyclap demo` runs the whole pipeline end to end, offline, on its built-in default."""

from __future__ import annotations

import json

import pytest

from tinyclap.cli import main
from tinyclap.demo import DEMO_CLASSES


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    chance = 1 / len(DEMO_CLASSES)
    # the teacher separates the generated classes, and the distilled student keeps most of it on held-out clips
    assert summary["teacher_accuracy"] > 0.8
    assert summary["student_accuracy"] > 2 * chance
    assert summary["top1_agreement"] > 2 * chance
    assert summary["heldout_cosine"] > 0.5
    assert summary["student_params"] == 3_244_529
    # every stage left its product
    for path in ("cache/cache.json", "student/student.safetensors", "eval-student/report.json",
                 "eval-student/confusion.png", "prune/prune.json", "export/model.onnx", "export/manifest.json"):
        assert (out / path).is_file(), path
    assert summary["export"]["top3"][0][0] in DEMO_CLASSES
    assert "student zero-shot accuracy" in printed and "top-1 agreement" in printed
    # the run records its teacher, so the quickstart's student takes free-text labels as it is
    clip = next((out / "data").rglob("*.wav"))
    assert main(["classify", "--model", str(out / "student"), "--labels", "a siren,a hum", str(clip)]) == 0
    # a rerun reuses every finished stage
    assert main(["demo", "--out", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["student_accuracy"] == summary["student_accuracy"]

    # the "real pipeline" path: a given teacher checkpoint and dataset instead of the built-in default
    real = tmp_path / "real"
    args = ["demo", "--out", str(real), "--teacher", str(out / "teacher" / "proxy_teacher.safetensors"),
            "--dataset", "csv", "--root", str(out / "data" / "labels.csv"), "--no-export", "--epochs1", "2"]
    assert main(args) == 0
    given = json.loads((real / "summary.json").read_text())
    assert given["teacher"].endswith("proxy_teacher.safetensors") and given["eval_clips"] == 72
    assert given["teacher_accuracy"] > 0.8 and given["export"] is None
