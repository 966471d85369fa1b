"""The released tinyCLAP students by name (`tinyclap zoo`), fetched from the Hugging Face Hub.

The paper's students are on the Hub repo `fpaissan/tinyCLAP` as pickled SpeechBrain checkpoints: the
state dict of the student's `AudioEncoder` (`base.*`, `projection.*`, the key layout tinyclap's students
keep). They are fetched with `huggingface_hub.hf_hub_download` (its cache, resumed downloads, offline mode
with `HF_HUB_OFFLINE=1`), read with `torch.load(weights_only=True)` (torch's allow-list: tensors and plain
containers, never code), checked finite and loaded strictly into the named architecture, names and shapes
compared before anything is built. They were distilled from MS CLAP 2022, whose text tower encodes their
class prompts (`tinyclap download teacher msclap-2022` and `tokenizer bert-base-uncased`).

`HUB_REVISION` is the Hub revision every file is fetched at. No commit hash of fpaissan/tinyCLAP could be
found offline, so it is the branch name "main" until someone pins it: set it to the commit hash (40 hex
digits) once known, and every name resolves to those exact bytes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HUB_REPO = "fpaissan/tinyCLAP"
HUB_REVISION = "main"  # NOT a commit hash (none found offline): replace with the hash to pin the bytes
LICENCE = "Apache-2.0 (the fpaissan/tinyCLAP code repository's; the Hub repo's own not verified)"
PAPER = "Paissan & Farella, tinyCLAP, Interspeech 2024 (arXiv 2311.14517)"


@dataclass(frozen=True)
class Pretrained:
    """A released student: its Hub file, the tinyclap architecture it loads into, and what its sources say."""

    name: str
    filename: str
    student: str  # a tinyclap student name (create_student)
    size: str  # as the Hub lists it
    licence: str
    teacher: str  # the teacher kind it was distilled from (its text tower encodes the prompts)
    reported: str  # what the card / paper reports, cited


PRETRAINED: dict[str, Pretrained] = {p.name: p for p in (
    Pretrained("tinyclap-phinet-1.50", "phinet_alpha_1.50_beta_0.75_t0_6_N_7.ckpt",
               "phinet_alpha_1.50_beta_0.75_t0_6_N_7", "17.8 MB", LICENCE, "msclap-2022",
               f"4.4 M parameters; the paper's abstract: about 6 % of MS CLAP's parameters with less than 5 % lower "
               f"zero-shot accuracy on ESC-50, UrbanSound8K and TUT17 ({PAPER}); no card numbers found offline"),
    Pretrained("tinyclap-cnn14", "Cnn14.ckpt", "cnn14", "336 MB", LICENCE, "msclap-2022",
               f"MS CLAP 2022's own audio tower (Cnn14) self-distilled, the paper's reference ({PAPER}); no card "
               "numbers found offline"),
)}


def is_pretrained(spec: Any) -> bool:
    return isinstance(spec, str) and spec in PRETRAINED


def pretrained_file(name: str, revision: str | None = None) -> Path:
    """The local path of a released student's checkpoint, from the Hub cache (downloaded when online)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from tinyclap.models.checkpoint import CheckpointError

    entry = PRETRAINED[name]
    rev = revision or HUB_REVISION
    try:
        return Path(hf_hub_download(HUB_REPO, entry.filename, revision=rev))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{name}: {HUB_REPO}/{entry.filename}@{rev} is not in the Hugging Face cache and the Hub cannot be "
            "reached (offline); fetch it once online, or pass the downloaded .ckpt file"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"{name}: cannot fetch {HUB_REPO}/{entry.filename}@{rev} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_released_student(path: str | os.PathLike, student: str) -> Any:
    """A released tinyCLAP `.ckpt` (a pickled state dict) as the student `student`, weights-only and strict."""
    import torch

    from tinyclap.models.checkpoint import CheckpointError, build_checked, check_finite, safe_torch_load
    from tinyclap.models.students import create_student

    payload = safe_torch_load(path)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: expected a tinyCLAP student checkpoint (a state dict of tensors)")
    check_finite(state, path)
    return build_checked(lambda: create_student(student), state, source=str(path)).eval()


def load_pretrained(name: str, revision: str | None = None) -> Any:
    """A released student by name, behind the embedder interface (`embed_waveform`, 44.1 kHz, 5 s)."""
    from tinyclap.models.embedder import StudentEmbedder

    entry = PRETRAINED[name]
    model = StudentEmbedder(load_released_student(pretrained_file(name, revision), entry.student)).eval()
    model.pretrained = name  # the text side: see `pretrained_teacher`
    return model


def pretrained_teacher(name: str) -> tuple[str, str | None]:
    """(teacher weights, tokenizer folder) for a released student's class prompts: MS CLAP 2022 where
    `tinyclap download` puts it; a ValueError saying what to fetch or pass when it is not there."""
    from tinyclap.download.registry import REGISTRY, result_path, root_dir

    teacher = result_path(REGISTRY["teacher/msclap-2022"], root_dir(None), True)
    tokenizer = result_path(REGISTRY["tokenizer/bert-base-uncased"], root_dir(None), True)
    if not teacher.is_file():
        raise ValueError(f"{name} was distilled from MS CLAP 2022, whose text tower encodes the class prompts: "
                         f"run `tinyclap download teacher msclap-2022` and `tinyclap download tokenizer bert` "
                         f"(expected {teacher}), or pass --teacher CKPT --tokenizer DIR, or --classes FILE.npz")
    return str(teacher), (str(tokenizer) if tokenizer.is_dir() else None)


def list_pretrained() -> list[dict[str, Any]]:
    return [{**asdict(p), "source": f"huggingface.co/{HUB_REPO}/{p.filename}@{HUB_REVISION}"}
            for p in PRETRAINED.values()]
