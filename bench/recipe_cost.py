"""Time per training step of the `paper` and `plus` distillation recipes (tinyclap.train.recipes) on CPU, and of
`plus` with the text-anchored KL turned on (`--kl-weight 1`, "plus+kl").

The same student, batch and random cached-style inputs (log-mel crops, unit teacher targets, a text bank of
K unit rows) through `tinyclap.train.loop.train_step`; prints ms/step per recipe and the plus/paper ratio
(the issue's target: plus <= 1.3x paper per epoch on CPU).

    python bench/recipe_cost.py --student phinet_alpha_0.75_beta_0.75_t0_4_N_4 --batch-size 16 --steps 5
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from tinyclap.models import create_student
from tinyclap.train.loop import train_step
from tinyclap.train.losses import DistillLoss
from tinyclap.train.recipes import resolve_recipe


def time_recipe(args: argparse.Namespace, recipe: str, **overrides: float) -> float:
    torch.manual_seed(0)
    student = create_student(args.student).train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    logmel = torch.randn(args.batch_size, args.frames, 64)
    target = F.normalize(torch.randn(args.batch_size, student.embed_dim), dim=-1)
    bank = F.normalize(torch.randn(args.bank, student.embed_dim), dim=-1)
    loss = DistillLoss(resolve_recipe(recipe, **overrides), bank)
    for _ in range(args.warmup):
        train_step(student, opt, logmel, target, loss_fn=loss)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(student, opt, logmel, target, loss_fn=loss)
    return (time.perf_counter() - t0) / args.steps * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="phinet_alpha_0.75_beta_0.75_t0_4_N_4")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--frames", type=int, default=345, help="log-mel frames per crop (345 = 2.5 s)")
    p.add_argument("--bank", type=int, default=2384, help="text bank rows (384 labels + 2000 captions)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ms = {r: time_recipe(args, r) for r in ("paper", "plus")}
    ms["plus+kl"] = time_recipe(args, "plus", kl_weight=1.0)
    print(f"{args.student}, batch {args.batch_size}, {args.frames} frames, bank {args.bank}, {args.threads} thread(s)")
    for r, v in ms.items():
        print(f"  {r:7s} {v:8.1f} ms/step")
    print(f"  plus / paper: {ms['plus'] / ms['paper']:.3f}x; plus+kl / paper: {ms['plus+kl'] / ms['paper']:.3f}x")


if __name__ == "__main__":
    main()
