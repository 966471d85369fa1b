"""How faithfully a student copies its teacher on the same clips: accuracy retention, top-1 agreement and the
mean cosine between the two embeddings of each clip (`tinyclap eval --against-teacher`).

Both models are scored with the same protocol and their own class matrix (a pruned student's is the teacher's,
sliced to the entries it keeps), on the clips both could read. The cosine compares the student's embedding with
the teacher's in the student's space: the whole teacher embedding, or the entries a pruned student keeps,
renormalised. A student whose space is not the teacher's (other size, no recorded entries) gets no cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tinyclap._util import l2_normalize
from tinyclap.evaluation.metrics import evaluate

__all__ = ["Agreement", "compare_to_teacher"]


@dataclass
class Agreement:
    """A student against its teacher on `n_clips` clips both models embedded."""

    teacher: str
    n_clips: int
    teacher_accuracy: float
    student_accuracy: float
    retention: float  # student / teacher accuracy (NaN when the teacher scores 0)
    top1_agreement: float  # fraction of clips where both predict the same class
    mean_cosine: float | None  # mean over clips of cos(student, teacher), None when the spaces differ

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        cos = "n/a (different spaces)" if self.mean_cosine is None else f"{self.mean_cosine:.4f}"
        return (
            f"against teacher {self.teacher} on {self.n_clips} clips: teacher {100 * self.teacher_accuracy:.2f} %, "
            f"retention {100 * self.retention:.1f} %, top-1 agreement {100 * self.top1_agreement:.1f} %, "
            f"mean cosine {cos}"
        )


def _rows(emb: Any, kept: Sequence[int], common: Sequence[int]) -> np.ndarray:
    pos = {item: row for row, item in enumerate(kept)}
    x = emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
    return np.asarray(x[[pos[i] for i in common]], dtype=np.float64)


def compare_to_teacher(
    student: tuple[Any, Sequence[int], Any],
    teacher: tuple[Any, Sequence[int], Any],
    labels: Sequence[int],
    class_names: Sequence[str],
    *,
    teacher_name: str,
    dims: Sequence[int] | None = None,
) -> Agreement:
    """`student` and `teacher` are (embeddings (n_kept, D), kept item indices, class matrix); `labels[i]` is
    item i's class index. `dims`: the teacher entries a pruned student keeps (None: the same space)."""
    (emb_s, kept_s, clf_s), (emb_t, kept_t, clf_t) = student, teacher
    common = sorted(set(kept_s) & set(kept_t))
    if not common:
        raise ValueError("the student and the teacher have no clip in common to compare")
    s, t = _rows(emb_s, kept_s, common), _rows(emb_t, kept_t, common)
    y = [labels[i] for i in common]
    rep_s, rep_t = evaluate(s, y, clf_s, class_names=class_names), evaluate(t, y, clf_t, class_names=class_names)
    if dims is not None and len(dims) == s.shape[1] and t.shape[1] != s.shape[1]:
        t = l2_normalize(t[:, list(dims)])
    cosine = float(np.mean(np.sum(l2_normalize(s) * l2_normalize(t), axis=1))) if t.shape == s.shape else None
    agree = float(np.mean(np.asarray(rep_s.predictions) == np.asarray(rep_t.predictions)))
    acc_t, acc_s = float(rep_t.accuracy), float(rep_s.accuracy)
    return Agreement(teacher_name, len(common), acc_t, acc_s, acc_s / acc_t if acc_t else float("nan"), agree, cosine)
