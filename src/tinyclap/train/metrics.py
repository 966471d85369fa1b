"""What a distillation run reports: metrics.csv and TensorBoard scalars (`MetricsLogger`, rank 0 only)
and the run log (`log`, written to the run's train.log and, when verbose, to stderr by `log_to`).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tinyclap._util import atomic_write_text

__all__ = ["METRIC_FIELDS", "MetricsLogger", "log", "log_to"]

# one logger for the whole run (stage loop and orchestration), so that train.log gets every line
log = logging.getLogger("tinyclap.train.distill")

# loss_<term>: each loss term's unweighted training mean (tinyclap.train.losses; empty when the recipe has none)
METRIC_FIELDS = (
    "stage", "epoch", "step", "train_loss", "val_loss", "val_cosine", "lr", "clips_per_s", "time_s",
    "loss_cosine", "loss_text_kl", "loss_relational",
)  # fmt: skip


class MetricsLogger:
    """metrics.csv (one row per epoch) and TensorBoard scalars (if `tensorboard` is importable); rank 0 only.

    TensorBoard events go to `tensorboard/stage{N}/`. On resume, rows and events written after the
    checkpoint being resumed are dropped (`truncate_after`), so both match an uninterrupted run.
    """

    def __init__(
        self, run_dir: str | os.PathLike | None, *, tensorboard: bool = True, enabled: bool = True
    ) -> None:
        self.enabled = enabled and run_dir is not None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.path = self.run_dir / "metrics.csv" if self.run_dir is not None else None
        self.writers: dict[int, Any] = {}
        self._purge: dict[int, int] = {}
        self.tensorboard = False
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:  # tensorboard is optional
                log.info("tensorboard is not installed: no TensorBoard scalars (metrics.csv is written)")
            else:
                self.tensorboard = True

    def truncate_after(self, stage: int, step: int) -> None:
        """Drop rows (and, for TensorBoard, events) of a later stage, or of `stage` after step `step`."""
        if not self.enabled:
            return
        self._purge[stage] = step + 1
        if not self.path.is_file():
            return
        header, rows = _read_rows(self.path)
        # a row cut short (the disk filled up mid-append) has missing or unparsable fields: drop it too
        keep = [r for r in rows if (key := _row_key(r, header)) is not None and key <= (stage, step)]
        if len(keep) != len(rows) or header != list(METRIC_FIELDS):  # (a file of an older version: new header)
            _rewrite(self.path, keep)

    def _writer(self, stage: int) -> Any:
        if stage not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[stage] = SummaryWriter(
                log_dir=str(self.run_dir / "tensorboard" / f"stage{stage}"), purge_step=self._purge.get(stage)
            )
        return self.writers[stage]

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not new and _read_rows(self.path)[0] != list(METRIC_FIELDS):  # written by an older version
            _rewrite(self.path, _read_rows(self.path)[1])
        try:
            with open(self.path, "a", newline="") as f:
                if new:
                    f.write(",".join(METRIC_FIELDS) + "\n")
                f.write(",".join(_fmt(row.get(k)) for k in METRIC_FIELDS) + "\n")
        except OSError as e:  # ENOSPC/EACCES from write or close: say which file
            text = f"{e.strerror or e}; could not append to metrics.csv"
            raise OSError(e.errno, text, str(self.path)) from e
        if self.tensorboard:
            stage, step = int(row["stage"]), int(row["step"])
            writer = self._writer(stage)
            for k in ("train_loss", "val_loss", "val_cosine", "lr", "clips_per_s", *METRIC_FIELDS[9:]):
                if row.get(k) is not None:
                    writer.add_scalar(k, float(row[k]), step)
            writer.flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers = {}


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(header, rows) of a metrics.csv."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _rewrite(path: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.csv with the current header and `rows` (fields it lacks left empty)."""
    lines = [",".join(METRIC_FIELDS)] + [",".join(r.get(k) or "" for k in METRIC_FIELDS) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _row_key(row: Mapping[str, Any], header: list[str]) -> tuple[int, int] | None:
    """(stage, step) of a metrics.csv row, None for a malformed one (missing fields, not integers)."""
    if any(row.get(k) is None for k in header) or None in row:  # cut short, or extra fields
        return None
    try:
        return int(row["stage"]), int(row["step"])
    except ValueError:
        return None


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


@contextlib.contextmanager
def log_to(run_dir: Path | None, verbose: bool) -> Iterator[None]:
    """Send `log` to run_dir/train.log (timestamped) and, if `verbose`, to stderr; undone on exit."""
    handlers: list[logging.Handler] = []
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(fh)
    if verbose:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        sh.addFilter(lambda record: not getattr(record, "file_only", False))
        handlers.append(sh)
    prev_level, prev_prop = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in handlers:
        log.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(prev_level)
        log.propagate = prev_prop
