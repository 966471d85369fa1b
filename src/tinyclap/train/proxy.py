"""Training a proxy CLAP teacher (`tinyclap teacher build-proxy`): the projections of frozen towers.

The towers and `ProxyTeacher` live in `tinyclap.models.proxy`; this module trains a teacher's small head
(both projections and the logit scale) contrastively on labelled clips, usually UrbanSound8K folds, with
captions built from the class names. The frozen tower embeddings are computed once (the aiSFX pass
dominates), then the head trains in seconds. The command is
`tinyclap teacher build-proxy --us8k UrbanSound8K --out runs/proxy` (`build_and_report`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tinyclap._util import progress as progress_display
from tinyclap.models.proxy import AisfxAudioTower, MiniLMTextTower, ProxyTeacher, load_aisfx

# Caption templates for training the projections; the first is tinyclap.zeroshot.DEFAULT_TEMPLATE.
TEMPLATES = (
    "this is the sound of {}",
    "a recording of {}",
    "{} can be heard",
    "the sound of {}",
    "an audio clip of {}",
    "{}",
    "a sound recording with {}",
    "you can hear {} in this recording",
)


# ----------------------------------------------------------------------------------------------- data
def us8k_clips(root: str | os.PathLike, folds: Sequence[int]) -> list[tuple[Path, str]]:
    """(path, class name) of the clips of `folds` listed in UrbanSound8K's metadata CSV, in CSV order.

    Read with `tinyclap.data.load_us8k`; unlike an evaluation set, a teacher's training folds must be
    complete, so a listed clip missing on disk is an error here.
    """
    from tinyclap.data import DatasetWarning, load_us8k

    with warnings.catch_warnings():  # the missing files are raised below, with the same list
        warnings.simplefilter("ignore", DatasetWarning)
        ds = load_us8k(root, folds=folds)
    meta = ds.root / "metadata" / "UrbanSound8K.csv"
    if ds.missing:
        raise FileNotFoundError(f"{meta}: {len(ds.missing)} listed clips are missing, e.g. {ds.missing[0]}")
    if not ds.items:
        raise ValueError(f"{meta}: no clips in folds {list(folds)}")
    return [(it.path, ds.classes[it.label]) for it in ds.items]


def per_class_limit(clips: Sequence[tuple[Path, str]], limit: int | None) -> list[tuple[Path, str]]:
    """The first `limit` clips of each class, in order (all of them when `limit` is None)."""
    if limit is None:
        return list(clips)
    seen: dict[str, int] = {}
    kept = []
    for p, c in clips:
        seen[c] = seen.get(c, 0) + 1
        if seen[c] <= limit:
            kept.append((p, c))
    return kept


# ------------------------------------------------------------------------------------ tower embeddings
def tower_embeddings(
    tower: AisfxAudioTower,
    paths: Sequence[Path],
    batch_size: int = 16,
    fit: str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Frozen aiSFX tower embeddings (unnormalised, before any projection) of audio files -> (len(paths), 512).

    Every file must decode (a teacher is trained on complete data). Same-length clips are batched.
    fit=None embeds each whole file; "zero"/"repeat" first fit it to tinyclap's 5 s clip
    (`tinyclap.audio.fit_clip`, eval policy, that padding), as the distillation pipeline feeds a teacher.
    (`tinyclap.evaluation.embedding.embed_files` is the other job: a model's normalised shared-space
    embeddings of whatever files decode.)
    """
    from tinyclap.audio import fit_clip, load_audio

    waves = [load_audio(p, tower.sample_rate) for p in progress_display(paths, desc="decode", unit="clip",
                                                                        enabled=progress)]  # fmt: skip
    if fit is not None:
        waves = [fit_clip(w, policy="eval", pad=fit) for w in waves]  # type: ignore[arg-type]
    out = torch.empty(len(waves), tower.embed_dim)
    dev = tower.window.device
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        by_len.setdefault(len(w), []).append(i)
    bar = progress_display(total=len(waves), desc="aisfx embeddings", unit="clip", enabled=progress)
    with torch.no_grad(), bar:
        for idx in by_len.values():
            for s in range(0, len(idx), batch_size):
                part = idx[s : s + batch_size]
                batch = torch.from_numpy(np.stack([waves[i] for i in part])).to(dev)  # (b, N)
                out[part] = tower.embed(batch).cpu()
                bar.update(len(part))
    return out


def caption_embeddings(
    tower: MiniLMTextTower, classes: Sequence[str], templates: Sequence[str] = TEMPLATES
) -> torch.Tensor:
    """Frozen MiniLM embeddings of every (class, template) caption -> (C, T, 384)."""
    from tinyclap.zeroshot import class_prompt

    texts = [class_prompt(c, t) for c in classes for t in templates]
    with torch.no_grad():
        emb = tower.encode(texts)  # (C*T, 384)
    return emb.view(len(classes), len(templates), -1)


# ------------------------------------------------------------------------------------ loss and metric
def clap_loss(
    audio: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLAP's symmetric cross-entropy for a batch whose items may share a class.

    audio, text: (B, D) unit vectors, text[i] a caption of item i's class; labels: (B,). Item i's positive
    is text i (and audio i for the text side); other items of the same class are neither positives nor
    negatives — they are masked out, because their caption describes the clip just as well, and treating
    them as negatives (plain CLAP) would push apart embeddings that should coincide.
    """
    logits = logit_scale.exp() * audio @ text.T  # (B, B)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(labels), device=labels.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def zero_shot_accuracy(
    teacher: ProxyTeacher,
    audio_emb: torch.Tensor,
    labels: torch.Tensor,
    class_emb: torch.Tensor,
) -> float:
    """Accuracy of argmax cos(audio, class) from frozen tower embeddings.

    audio_emb (N, 512), labels (N,), class_emb (C, T, 384): templates are ensembled as
    `ZeroShotClassifier.from_teacher` does (mean of unit vectors, renormalised).
    """
    with torch.no_grad():
        c, t, _ = class_emb.shape
        w = teacher.project_text(class_emb.reshape(c * t, -1)).view(c, t, -1).mean(dim=1)  # (C, D)
        sims = teacher.project_audio(audio_emb) @ F.normalize(w, dim=-1).T  # (N, C)
    return float((sims.argmax(dim=1) == labels).float().mean())


# --------------------------------------------------------------------------------------- head training
def _reset_head(teacher: ProxyTeacher, gen: torch.Generator) -> None:
    """Re-initialise the head deterministically from `gen`, independent of what ran before."""
    with torch.no_grad():
        for p in teacher.head.parameters():
            if p.dim() == 2:
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=gen))
        teacher.head.logit_scale.fill_(math.log(1 / 0.07))


def train_head(
    teacher: ProxyTeacher,
    audio_emb: torch.Tensor,
    labels: torch.Tensor,
    caption_emb: torch.Tensor,
    *,
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    progress: bool = False,
) -> list[float]:
    """Train the teacher's projections + logit scale on precomputed tower embeddings; returns epoch losses.

    audio_emb (N, 512), labels (N,) class indices, caption_emb (C, T, 384). Each step draws one random
    template per item for its caption (text augmentation). Seeded: the same inputs give the same head.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # Projection's dropout draws from the global generator
    _reset_head(teacher, gen)
    head = teacher.head
    dev = head.logit_scale.device
    audio_emb, labels, caption_emb = audio_emb.to(dev), labels.to(dev), caption_emb.to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(labels)
    steps = epochs * max(1, math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    head.requires_grad_(True)
    teacher.train()
    losses = []
    bar = progress_display(range(epochs), desc="proxy head", unit="epoch", enabled=progress)
    for _ in bar:
        perm = torch.randperm(n, generator=gen)
        tpl = torch.randint(caption_emb.shape[1], (n,), generator=gen)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size].to(dev)
            if len(idx) < 2:
                continue
            y = labels[idx]
            a = teacher.project_audio(audio_emb[idx])  # (b, D)
            t = teacher.project_text(caption_emb[y, tpl[idx.cpu()].to(dev)])  # (b, D)
            loss = clap_loss(a, t, y, head.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                head.logit_scale.clamp_(0.0, math.log(100.0))  # CLIP's cap on the scale
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
        scale = float(head.logit_scale.detach().exp())  # detached: a float of a grad tensor makes torch warn
        bar.set_postfix_str(f"loss {losses[-1]:.4f}, scale {scale:.1f}")
    teacher.eval()
    head.requires_grad_(False)  # a teacher is frozen once trained
    return losses


# ------------------------------------------------------------------------------------------- building
def build_proxy(
    us8k_root: str | os.PathLike,
    folds: Sequence[int] = (1, 2),
    *,
    max_clips_per_class: int | None = None,
    **train_kw: Any,
) -> ProxyTeacher:
    """Train a proxy teacher's projections contrastively on UrbanSound8K `folds`; save it to `out`.

    Captions are the class names (underscores -> spaces) in each of `templates`. The frozen tower
    embeddings are computed once (the aiSFX pass dominates: ~1-2 min for folds 1-2 on 2 CPU cores), then
    the heads train in seconds. `max_clips_per_class` keeps the first clips of each class (quick runs).
    `train_kw` are `train_proxy`'s keywords (seed, epochs, out, embed_dim, batch_size, lr, templates,
    audio_tower, text_tower, progress).
    """
    clips = per_class_limit(us8k_clips(us8k_root, folds), max_clips_per_class)
    return train_proxy(clips, source=_us8k_source(folds), **train_kw)


def _us8k_source(folds: Sequence[int]) -> dict[str, Any]:
    return {"dataset": "UrbanSound8K", "folds": list(folds)}


def train_proxy(
    clips: Sequence[tuple[Path, str]],
    *,
    seed: int = 0,
    epochs: int = 20,
    out: str | os.PathLike | None = None,
    embed_dim: int = 1024,
    batch_size: int = 128,
    lr: float = 1e-3,
    templates: Sequence[str] = TEMPLATES,
    audio_tower: AisfxAudioTower | None = None,
    text_tower: MiniLMTextTower | None = None,
    progress: bool = False,
    source: dict[str, Any] | None = None,
) -> ProxyTeacher:
    """Train a proxy teacher's projections contrastively on labelled clips `(path, class name)`.

    The frozen tower embeddings are computed once, then the heads train in seconds. `out` is a path stem
    or folder: a folder gets `proxy_teacher.safetensors` + `.json` inside. `source` describes the data.
    """
    classes = sorted({c for _, c in clips})
    audio_tower = load_aisfx() if audio_tower is None else audio_tower
    text_tower = MiniLMTextTower() if text_tower is None else text_tower
    teacher = ProxyTeacher(audio_tower, text_tower, embed_dim=embed_dim)
    t0 = time.time()
    audio_emb = tower_embeddings(audio_tower, [p for p, _ in clips], progress=progress)  # (N, 512)
    labels = torch.tensor([classes.index(c) for _, c in clips])  # (N,)
    caption_emb = caption_embeddings(text_tower, classes, templates)  # (C, T, 384)
    t_embed = time.time() - t0
    losses = train_head(teacher, audio_emb, labels, caption_emb, seed=seed, epochs=epochs,
                        batch_size=batch_size, lr=lr, progress=progress)  # fmt: skip
    acc = zero_shot_accuracy(teacher, audio_emb, labels, caption_emb)
    teacher.config = {
        "training": {
            **(source or {}), "clips": len(clips), "classes": classes,
            "templates": list(templates), "seed": seed, "epochs": epochs, "batch_size": batch_size,
            "lr": lr, "final_loss": losses[-1] if losses else None, "train_zero_shot_acc": acc,
            "embed_seconds": round(t_embed, 1),
        }
    }  # fmt: skip
    if out is not None:
        out = Path(out)
        teacher.save(out / "proxy_teacher" if out.is_dir() or not out.suffix else out)
    return teacher


# ----------------------------------------------------------------------------------------------- main
def held_out_report(teacher: ProxyTeacher, us8k_root: str | os.PathLike, folds: Sequence[int],
                    progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Zero-shot accuracy of a trained proxy teacher on held-out US8K `folds`: all templates ensembled, the
    default template alone, and on clips fitted to 5 s (zero and repeat padding) as distillation sees them."""
    train = teacher.config["training"]
    classes = train["classes"]
    held = us8k_clips(us8k_root, folds)
    paths = [p for p, _ in held]
    labels = torch.tensor([classes.index(c) for _, c in held])
    capt_all = caption_embeddings(teacher.text_tower, classes, train["templates"])
    capt_one = caption_embeddings(teacher.text_tower, classes, train["templates"][:1])
    audio = tower_embeddings(teacher.audio_tower, paths, progress=progress)
    fitted = {pad: tower_embeddings(teacher.audio_tower, paths, fit=pad, progress=progress)
              for pad in ("zero", "repeat")}  # fmt: skip
    return {
        "eval_folds": list(folds), "eval_clips": len(held),
        "eval_acc_ensemble": zero_shot_accuracy(teacher, audio, labels, capt_all),
        "eval_acc_default_template": zero_shot_accuracy(teacher, audio, labels, capt_one),
        **{f"eval_acc_ensemble_5s_{pad}_pad": zero_shot_accuracy(teacher, a, labels, capt_all)
           for pad, a in fitted.items()},
    }  # fmt: skip


def build_and_report(us8k_root: str | os.PathLike, out: str | os.PathLike, train_folds: Sequence[int] = (1, 2),
                     eval_folds: Sequence[int] = (3,), *, max_clips_per_class: int | None = None,
                     **train_kw: Any) -> dict[str, Any]:  # fmt: skip
    """Build a proxy teacher into the folder `out` and report its zero-shot accuracy on its training folds
    and on `eval_folds` (none: no held-out report). `max_clips_per_class` keeps the first clips of each class
    of the training folds (quick runs); `train_kw` go to `train_proxy` (seed, epochs, ...)."""
    t0 = time.time()
    # checked before the output folder is created
    clips = per_class_limit(us8k_clips(us8k_root, train_folds), max_clips_per_class)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = train_proxy(clips, out=out, source=_us8k_source(train_folds), **train_kw)
    progress = bool(train_kw.get("progress", False))
    return {
        "train_folds": list(train_folds),
        "train_acc_ensemble": teacher.config["training"]["train_zero_shot_acc"],
        **(held_out_report(teacher, us8k_root, eval_folds, progress) if eval_folds else {}),
        "logit_scale_exp": float(teacher.logit_scale.exp()),
        "seconds": round(time.time() - t0, 1),
    }
