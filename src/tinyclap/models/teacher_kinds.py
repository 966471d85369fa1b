"""The teacher kinds tinyclap loads, with their audio format, sizes and provenance (`tinyclap info --teachers`).

Parameter counts are of the real architectures, built on the meta device (no memory, no weights needed):
msclap's config_2022.yml / config_2023.yml layouts and transformers' `ClapConfig()` defaults (LAION-CLAP's
HTSAT-tiny + RoBERTa-base layout, as in laion/clap-htsat-unfused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

TEACHER_KINDS: list[dict[str, Any]] = [
    {"kind": "msclap-2022", "spec": "CLAP_weights_2022.pth (tinyclap download teacher msclap-2022)",
     "towers": "Cnn14 + BERT-base", "sample_rate": 44100, "window_s": 5.0, "template": "this is the sound of {}",
     "licence": "MIT (microsoft/CLAP)", "source": "huggingface.co/microsoft/msclap"},
    {"kind": "msclap-2023", "spec": "CLAP_weights_2023.pth (tinyclap download teacher msclap-2023)",
     "towers": "HTS-AT + GPT-2", "sample_rate": 44100, "window_s": 7.0, "template": "this is the sound of {}",
     "licence": "MIT (microsoft/CLAP)", "source": "huggingface.co/microsoft/msclap"},
    {"kind": "hf-clap", "spec": "hf:REPO[@REVISION] or a save_pretrained folder (e.g. hf:laion/clap-htsat-unfused)",
     "towers": "HTSAT + RoBERTa (LAION-CLAP)", "sample_rate": 48000, "window_s": 10.0,
     "template": "This is a sound of {}.", "licence": "Apache-2.0 (laion/clap-htsat-*)",
     "source": "huggingface.co/laion"},
]


def _msclap2022() -> nn.Module:
    from tinyclap.models.teacher import CLAPTeacher

    return CLAPTeacher()


def _msclap2023() -> nn.Module:
    from tinyclap.models.msclap2023 import CLAP2023Teacher

    return CLAP2023Teacher()


def _hf_clap() -> nn.Module:
    from transformers import ClapConfig, ClapModel

    return ClapModel(ClapConfig())


_BUILD: dict[str, Callable[[], nn.Module]] = {"msclap-2022": _msclap2022, "msclap-2023": _msclap2023,
                                              "hf-clap": _hf_clap}
_AUDIO = ("audio_encoder.", "audio_model.", "audio_projection.")


def teacher_sizes(kind: str) -> dict[str, int]:
    """Audio-side, text-side and total parameter counts of a kind's real architecture (meta-device build)."""
    with torch.device("meta"):
        model = _BUILD[kind]()
    audio = sum(p.numel() for n, p in model.named_parameters() if n.startswith(_AUDIO))
    total = sum(p.numel() for p in model.parameters())
    return {"audio_params": audio, "text_params": total - audio, "params": total}


def list_teacher_kinds() -> list[dict[str, Any]]:
    """Every kind with its sizes and the fp32 weight megabytes."""
    rows = []
    for row in TEACHER_KINDS:
        sizes = teacher_sizes(row["kind"])
        rows.append({**row, **sizes, "fp32_mb": round(sizes["params"] * 4 / 2**20, 1)})
    return rows
