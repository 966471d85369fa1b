"""A quickly distilled microcontroller student for the TFLM tests (parity claims need trained weights).

The tiny random teacher (tests/helpers.tiny_teacher, BatchNorm fitted to real clips) embeds 1 s crops of
real UrbanSound8K clips; an MCU student learns them with the cosine loss for a few hundred steps. Targets are
centred (see below). The class matrix is the mean target of each UrbanSound8K class (real labels). Seconds on one core.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from helpers import calibrate_bn, tiny_teacher

CROP = 138  # log-mel frames of 1 s


def us8k_labels(us8k_root: Path) -> dict[str, str]:
    with open(us8k_root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        return {row["slice_file_name"].rsplit(".", 1)[0]: row["class"] for row in csv.DictReader(f)}


def distil_mcu_student(us8k_root: Path, name: str = "mcu-s", clips: int = 48, steps: int = 200, seed: int = 0):
    """(student in eval mode, ZeroShotClassifier, the clip paths used) — see the module docstring."""
    from tinyclap.audio.frontend import LogMel
    from tinyclap.audio.io import load_audio
    from tinyclap.models.students import create_student
    from tinyclap.zeroshot import ZeroShotClassifier

    # the first clips by name: a few recordings of a few classes, so the class prototypes are far apart (with
    # 48 clips drawn across the fold, prototypes of a random teacher sit within ~0.05 of each other and the
    # top-1 agreement measures those margins more than the int8 graphs)
    paths = sorted((us8k_root / "audio" / "fold1").glob("*.ogg"))[:clips]
    waves = np.stack([np.pad(w, (0, max(0, 176400 - len(w))))[:176400]
                      for w in (load_audio(p, 44100) for p in paths)])
    lm = LogMel()
    with torch.no_grad():
        mels = lm(torch.from_numpy(waves))  # (n, T, 64)
    teacher = tiny_teacher(seed)
    calibrate_bn(teacher.audio_encoder, mels[:, :2 * CROP])
    torch.manual_seed(seed)
    student = create_student(name, embed_dim=teacher.embed_dim)
    calibrate_bn(student, mels[:, :CROP])
    # 1 s crops at fixed hops, the teacher's targets computed once
    starts = range(0, mels.shape[1] - CROP + 1, CROP // 2)
    crops = torch.cat([mels[:, s : s + CROP] for s in starts])  # (n * len(starts), CROP, 64)
    # targets centred on the mean crop: a random teacher's embeddings share one dominant direction (all clips
    # within a hair of each other), a trained CLAP's are spread; centring gives the student a spread space
    with torch.no_grad():
        raw = teacher.encode_audio(crops, normalize=True)
        centre = raw.mean(0)
        targets = F.normalize(raw - centre, dim=-1)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, crops.shape[0], (16,), generator=gen)
        loss = -F.cosine_similarity(student(crops[idx]), targets[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    student.eval()
    labels = us8k_labels(us8k_root)
    with torch.no_grad():
        emb = F.normalize(teacher.encode_audio(mels, normalize=True) - centre, dim=-1).numpy()
    names = sorted({labels[p.stem] for p in paths})
    weights = np.stack([emb[[labels[p.stem] == c for p in paths]].mean(0) for c in names])
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    return student, ZeroShotClassifier(names, weights.astype(np.float32), float(np.log(100.0))), paths
