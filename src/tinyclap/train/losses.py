"""Composable distillation loss terms and `DistillLoss`, their weighted sum for a recipe
(`tinyclap.train.recipes`).

Every term takes the student's raw output `s` (B, D) (normalised here) and the teacher's unit-norm target
`t` (B, D), and is computed in float32:

- **cosine** (tinyCLAP Eq. 7): `-mean_b cos(s_b, t_b)` (`tinyclap.train.targets.distill_loss`);
- **text-anchored KL**: with a bank `B` (K, D) of the teacher's unit-norm text embeddings and a temperature
  `tau`, `mean_b KL(softmax(t_b B^T / tau) || softmax(ŝ_b B^T / tau))`: the student keeps the teacher's
  distribution over text queries, i.e. its zero-shot decisions, not only the direction of its embedding.
  No `tau^2` factor (Hinton's): the weight carries the scale;
- **relational**: the student's in-batch cosine-similarity matrix `ŝŝ^T` matches the teacher's `tt^T`, by
  the mean squared error over the B(B-1) off-diagonal pairs (the diagonal is 1 on both sides). MSE rather
  than a KL over rows: it needs no temperature (the text KL has one already), it is defined for any batch
  of 2 or more, it is bounded (entries in [-1, 1]) and it weighs every pair, not only each row's nearest
  neighbours, which is the geometry a zero-shot classifier reads. A batch of 1 gives 0. Under DDP it is
  per process (per-rank batch).

`DistillLoss(weights, bank)(s, t) -> (total, {term: value})`; with the `paper` weights the total is
`distill_loss(s, t)` itself, the same operations as before the terms existed (bit-identical runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinyclap.train.recipes import Recipe
from tinyclap.train.targets import distill_loss, select_targets

__all__ = ["TERMS", "DistillLoss", "cosine_term", "relational_term", "text_kl_term"]

# metrics.csv reports each term as loss_<name> (unweighted mean per clip over the epoch)
TERMS = ("cosine", "text_kl", "relational")


def cosine_term(student_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 7: -mean_b cos(student_b, teacher_b); (B, D) inputs, float32."""
    return distill_loss(student_out, target)


def text_kl_term(
    student_out: torch.Tensor, target: torch.Tensor, bank: torch.Tensor, temperature: float
) -> torch.Tensor:
    """mean_b KL(softmax(t_b B^T / tau) || softmax(ŝ_b B^T / tau)) for student (B, D), target (B, D), bank (K, D)."""
    s = F.normalize(student_out.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    bank = bank.float()
    log_p_t = F.log_softmax(t @ bank.T / temperature, dim=-1)  # (B, K)
    log_p_s = F.log_softmax(s @ bank.T / temperature, dim=-1)  # (B, K)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def relational_term(student_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the off-diagonal pairs of (cos(ŝ_i, ŝ_j) - cos(t_i, t_j))^2; 0 for a batch of one."""
    s = F.normalize(student_out.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    n = s.shape[0]
    if n < 2:
        return s.sum() * 0.0  # keeps the graph (and a zero gradient)
    diff = s @ s.T - t @ t.T  # (B, B), zero-ish diagonal
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    return diff[off].square().mean()


class DistillLoss:
    """The weighted sum of the terms a recipe switches on; `bank` (K, D) is the teacher's text bank (unit rows),
    needed when the text-KL weight is positive.

    `to(device, dims)` gives the loss a stage uses: the bank on the device and, for a pruned student
    (`dims`), restricted to those entries and renormalised as the targets are (`select_targets`).
    """

    def __init__(self, weights: Recipe | None = None, bank: torch.Tensor | None = None) -> None:
        self.weights = weights or Recipe()
        self.weights.check()
        if self.weights.needs_text_bank and bank is None:
            raise ValueError("the text-KL term (kl_weight > 0) needs a text bank")
        if bank is not None and (bank.ndim != 2 or bank.shape[0] < 2 or not torch.isfinite(bank).all()):
            raise ValueError(f"the text bank must be a finite (K >= 2, D) matrix, got shape {tuple(bank.shape)}")
        self.bank = bank.float() if bank is not None and self.weights.needs_text_bank else None

    @property
    def is_paper(self) -> bool:
        return self.weights.paper_loss

    @property
    def active_terms(self) -> tuple[str, ...]:
        """The names of the terms this loss computes (the cosine always, as a diagnostic at weight 0)."""
        w = self.weights
        return tuple(n for n, on in zip(TERMS, (True, w.kl_weight > 0.0, w.rel_weight > 0.0)) if on)

    def to(self, device: torch.device | str, dims: torch.Tensor | None = None) -> DistillLoss:
        """A copy with the bank on `device` (and restricted to `dims`, renormalised)."""
        bank = self.bank
        if bank is not None:
            bank = bank.to(device)
            if dims is not None:
                bank = select_targets(bank, dims.to(device))
        out = DistillLoss.__new__(DistillLoss)
        out.weights, out.bank = self.weights, bank
        return out

    def check_dim(self, dim: int) -> None:
        """Raise ValueError unless the bank's width is the targets' `dim`."""
        if self.bank is not None and self.bank.shape[1] != dim:
            raise ValueError(f"the text bank has {self.bank.shape[1]}-d rows, the targets are {dim}-d")

    def __call__(self, student_out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, {term name: its unweighted value}) for student (B, D) and target (B, D)."""
        w = self.weights
        cos = distill_loss(student_out, target)
        if w.paper_loss:
            return cos, {"cosine": cos}
        parts = {"cosine": cos}
        total = w.cos_weight * cos
        if w.kl_weight > 0.0:
            parts["text_kl"] = text_kl_term(student_out, target, self.bank, w.kl_temperature)
            total = total + w.kl_weight * parts["text_kl"]
        if w.rel_weight > 0.0:
            parts["relational"] = relational_term(student_out, target)
            total = total + w.rel_weight * parts["relational"]
        return total, parts
