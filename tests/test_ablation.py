"""The distillation ablation (bench/ablation.py) in its CI size: a proxy teacher on a few UrbanSound8K clips per
class, one cache of folds 1-2 with augmented views and a text bank (the full ablation's inputs), the 0.75 student
distilled with the paper recipe and with `plus` (Eq. 7 + the relational term; the same epochs: the same number of
student forward passes), 2 seeds each, evaluated on fold-3 clips whose audio is not in the cache.

What it does not assert: that `plus` beats `paper`. At the budgets this machine affords, no recipe beat `paper`'s
top-1 agreement beyond its seed-to-seed spread (bench/REPORT.md), and on 60 clips the two differ by a few clips
either way; a test asserting it would be a coin flip. It checks the experiment itself: the held-out split, the
same clips for every row, the recipes actually used, the intervals and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_bench


def _bench():
    return load_bench("ablation")


def test_mean_and_95_percent_interval() -> None:
    ab = _bench()
    assert ab.mean_ci([0.5]) == (0.5, 0.0)
    mean, half = ab.mean_ci([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303
    assert mean == pytest.approx(2.0) and half == pytest.approx(4.303 / 3**0.5)


def test_summary_table_and_plot(tmp_path: Path) -> None:
    ab = _bench()
    recs = [{"student": "s", "row": row, "seed": seed, "accuracy": acc, "teacher_accuracy": 0.5,
             "retention": acc / 0.5, "agreement": acc, "cosine": 0.7, "train_s": 10.0}
            for row, seed, acc in [("paper", 1, 0.3), ("paper", 2, 0.4), ("plus", 1, 0.45), ("+kl", 1, 0.35)]]
    lines = ab.summarise(recs)
    assert [ln["row"] for ln in lines] == ["paper", "+kl", "plus"]  # the table's row order, not the records'
    assert lines[0]["seeds"] == 2 and lines[0]["agreement"][0] == pytest.approx(0.35)
    table = ab.format_table(lines)
    assert "| s | paper | 2 | 35.0 ± " in table and "| s | plus | 1 | 45.0 |" in table
    paired = ab.paired_differences(recs + [dict(recs[2], seed=2, agreement=0.6)])  # plus: seeds 1, 2
    assert paired == ["s: plus - paper, agreement paired by seed (2 seeds): +17.5 ± 31.8 points"]  # +15, +20
    png = ab.plot_agreement(recs, tmp_path / "ablation.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == [png.name]


def test_unknown_row_is_refused(tmp_path: Path) -> None:
    ab = _bench()
    opt = ab.Options(out=str(tmp_path / "a"), rows=["paper", "nope"])
    with pytest.raises(ValueError, match="unknown rows"):
        ab.run(opt, log=lambda msg: None)


@pytest.mark.slow
def test_quick_ablation_runs_paper_and_plus_on_held_out_clips(us8k_root: Path, tmp_path: Path) -> None:
    ab = _bench()
    opt = ab.quick_options(str(tmp_path / "abl"))
    opt.us8k = str(us8k_root)
    summary = ab.run(opt, log=lambda msg: None)

    # the cache holds folds 1-2 only, with views; the evaluation reads fold 3
    cache = json.loads((tmp_path / "abl" / "cache" / "cache.json").read_text())
    assert cache["sources"] == [f"us8k:{us8k_root}#folds=1,2&limit={opt.cache_limit}"] and cache["views"] == 2
    assert all(r["clips"] == opt.eval_limit for r in summary["records"])
    assert len({r["teacher_accuracy"] for r in summary["records"]}) == 1  # one teacher score: the same clips
    lines = {ln["row"]: ln for ln in summary["summary"]}
    assert lines["paper"]["seeds"] == lines["plus"]["seeds"] == 2
    for ln in lines.values():
        assert all(0.0 <= ln[k][0] <= 1.0 for k in ("accuracy", "agreement")) and 0.0 < ln["cosine"][0] <= 1.0
        assert ln["agreement"][1] >= 0.0  # a 95 % half-width over the 2 seeds
    run = tmp_path / "abl" / opt.students[0]
    loss = {row: json.loads((run / f"{row}-s1" / "config.json").read_text())["loss"] for row in ("paper", "plus")}
    assert loss["paper"]["rel_weight"] == 0.0 and loss["plus"]["rel_weight"] > 0.0
    table = (tmp_path / "abl" / "table.md").read_text()
    assert table.startswith("| student | row |") and "| plus | 2 |" in table
    assert (tmp_path / "abl" / "ablation.png").stat().st_size > 1000
