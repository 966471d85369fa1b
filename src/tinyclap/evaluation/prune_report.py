"""The tables and the plot of a pruning sweep: one `PruneRow` per latent size k, written as prune.csv,
prune.md and prune.png by `run_prune`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyclap._util import atomic_write_text

__all__ = ["PruneRow", "format_pct", "save_prune_plot", "write_prune_tables"]


@dataclass
class PruneRow:
    """One size of the sweep: masked and (optionally) small-student accuracy per evaluation dataset."""

    k: int
    params: int | None  # of the k-dim student (None when the pruned model is not a student)
    macs: int | None
    masked: dict[str, float] = field(default_factory=dict)
    masked_fold_mean: dict[str, float | None] = field(default_factory=dict)
    small: dict[str, float] | None = None
    small_checkpoint: str | None = None
    finetuned: bool = False
    full: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def format_pct(x: float | None) -> str:
    """An accuracy fraction as a percentage with 2 decimals; empty for None or NaN."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def save_prune_plot(
    rows: Sequence[PruneRow], datasets: Sequence[str], path: str | os.PathLike, title: str
) -> Path:
    """Accuracy against parameters (of the k-dim student), one line per dataset and product."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    use_params = all(r.params is not None for r in rows)
    xs = [(r.params / 1e6 if use_params else r.k) for r in rows]  # type: ignore[operator]
    for j, ds in enumerate(datasets):
        colour = f"C{j}"
        ax.plot(xs, [100 * r.masked[ds] for r in rows], "o--", color=colour, label=f"{ds} masked")
        if any(r.small is not None for r in rows):
            pts = [(x, 100 * r.small[ds]) for x, r in zip(xs, rows) if r.small is not None]
            ax.plot(*zip(*pts), "s-", color=colour, label=f"{ds} small student")
    for x, r in zip(xs, rows):
        ax.annotate(
            str(r.k),
            (x, 100 * r.masked[datasets[0]]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    ax.set_xlabel("parameters of the k-dim model (M)" if use_params else "latent entries kept (k)")
    ax.set_ylabel("zero-shot accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_prune_tables(out: Path, rows: Sequence[PruneRow], labels: Sequence[str]) -> dict[str, Path]:
    """prune.csv (machine-readable: fractions) and prune.md (a table in %) in `out`; returns their paths."""
    any_small = any(r.small is not None for r in rows)
    head = ["k", "params", "macs"] + [f"masked_acc_{d}" for d in labels]
    if any_small:
        head += [f"small_acc_{d}" for d in labels] + ["finetuned"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    md = [
        "| "
        + " | ".join(
            ["k", "params", "MACs"]
            + [f"{d} masked %" for d in labels]
            + ([f"{d} small %" for d in labels] if any_small else [])
        )
        + " |"
    ]
    md.append("|" + "---|" * (3 + len(labels) * (2 if any_small else 1)))
    for r in rows:
        vals = [r.k, "" if r.params is None else r.params, "" if r.macs is None else r.macs]
        vals += [f"{r.masked[d]:.6f}" for d in labels]
        cells = [
            str(r.k) + (" (full)" if r.full else ""),
            "" if r.params is None else f"{r.params:,}",
            "" if r.macs is None else f"{r.macs / 1e6:.1f} M",
        ]
        cells += [format_pct(r.masked[d]) for d in labels]
        if any_small:
            vals += [("" if r.small is None else f"{r.small[d]:.6f}") for d in labels] + [int(r.finetuned)]
            cells += [("" if r.small is None else format_pct(r.small[d])) for d in labels]
        w.writerow(vals)
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    md.append(
        "params / MACs: the physically pruned k-dim model (its projection cut to k outputs; for a teacher, "
        "its audio side). The masked model runs the full model and keeps k entries of its output."
    )
    files = {"csv": out / "prune.csv", "md": out / "prune.md"}
    atomic_write_text(files["csv"], buf.getvalue())
    atomic_write_text(files["md"], "\n".join(md) + "\n")
    return files
