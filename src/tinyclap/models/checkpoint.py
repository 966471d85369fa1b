"""Self-describing checkpoints (safetensors + JSON) and safe loading of foreign ones.

Our own files are never pickles: `<stem>.safetensors` holds the tensors and, in its header metadata, the
same JSON config that is written beside it as `<stem>.json`, so either file alone describes the model.
Foreign `.pth`/`.pt`/`.ckpt` files are read with `torch.load(weights_only=True)`, which refuses to run code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from tinyclap._util import (
    JSONFileError,
    atomic_write_bytes,
    atomic_write_files,
    atomic_write_text,
    loads_json,
    read_json,
)

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "check_finite",
    "atomic_write_text",
    "safe_torch_load",
    "load_state_dict_checked",
    "check_state_dict",
    "build_checked",
    "save_model",
    "resolve_checkpoint",
    "read_model",
    "read_config",
]

FORMAT = "tinyclap/1"
M = TypeVar("M", bound=nn.Module)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, or not matching the model."""


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Load a foreign torch checkpoint without unpickling code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for hostile pickles, RuntimeError for corrupt zips
        raise CheckpointError(
            f"{path}: refused or unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "tinyclap only loads plain tensors (torch.load weights_only=True) and never runs pickled code."
        ) from e


def _kept(
    state: Mapping[str, torch.Tensor], ignore_prefixes: tuple[str, ...], ignore_suffixes: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """`state` without the known extras (keys with one of the prefixes or suffixes)."""
    return {
        k: v
        for k, v in state.items()
        if not (ignore_prefixes and k.startswith(ignore_prefixes))
        and not (ignore_suffixes and k.endswith(ignore_suffixes))
    }


def _fmt(title: str, items: list[str]) -> str:
    shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
    return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(shown) if items else ""


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise `CheckpointError` naming every missing, unexpected or wrongly shaped tensor of `state` for
    `module` (which may live on the meta device: only names and shapes are compared)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} does not match {type(module).__name__}:"
            + _fmt("missing keys", missing)
            + _fmt("unexpected keys", unexpected)
            + _fmt("wrong shapes", wrong)
        )


def load_state_dict_checked(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    ignore_prefixes: Iterable[str] = (),
    ignore_suffixes: Iterable[str] = (),
) -> None:
    """Load `state` into `module` strictly, with one clear error naming every problem.

    Keys starting with one of `ignore_prefixes` or ending with one of `ignore_suffixes` are known extras
    (e.g. saved STFT buffers) and are dropped; anything else missing, unexpected or of the wrong shape
    raises `CheckpointError` listing the offending tensors.
    """
    state = _kept(state, tuple(ignore_prefixes), tuple(ignore_suffixes))
    check_state_dict(module, state, source)
    module.load_state_dict(state, strict=True)


def build_checked(
    build: Callable[[], M],
    state: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    ignore_prefixes: Iterable[str] = (),
    ignore_suffixes: Iterable[str] = (),
) -> M:
    """`build()` a module and load `state` into it strictly, checking the config against the tensors first.

    The model is first built on the meta device (no memory, no initialisation) and its names and shapes are
    compared with `state`: a config that does not describe these tensors (a typo, an absurd size) is
    refused, naming every difference, before anything real is allocated.
    """
    state = _kept(state, tuple(ignore_prefixes), tuple(ignore_suffixes))
    with torch.device("meta"):
        check_state_dict(build(), state, source)
    module = build()
    module.load_state_dict(state, strict=True)
    return module


def save_model(module: nn.Module, path: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Save `module`'s weights to `<stem>.safetensors` and its `config` to `<stem>.json`, atomically.

    Returns the path of the safetensors file.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    config = {"format": FORMAT, **config}
    text = json.dumps(config, indent=2, sort_keys=True)
    # contiguous copies: safetensors refuses shared or strided storage
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    st_path = path.with_suffix(".safetensors")
    # both files staged before either is replaced: a full disk leaves the previous pair intact
    st_bytes = save(tensors, metadata={"tinyclap": text})
    atomic_write_files({st_path: st_bytes, path.with_suffix(".json"): (text + "\n").encode()})
    return st_path


def resolve_checkpoint(path: str | os.PathLike, default_stem: str = "student") -> Path:
    """Map a run folder, a `.json` or a `.safetensors` path to the safetensors file."""
    path = Path(path)
    if path.is_dir():
        cands = [path / f"{default_stem}.safetensors", path / "final" / f"{default_stem}.safetensors"]
        cands += sorted(path.glob("*.safetensors"))
        for c in cands:
            if c.is_file():
                return c
        raise CheckpointError(f"{path}: no {default_stem}.safetensors in this folder")
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def _config_text(st_path: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    """The JSON config of a checkpoint: from its header metadata, else from the `.json` beside it. Parsed
    strictly (bounded size and depth, an object at the top): a malformed config is one line naming the file."""
    text: str | bytes | None = meta.get("tinyclap")
    beside = st_path.with_suffix(".json")
    try:
        if text is None and beside.is_file():
            # NaN/Infinity allowed: Python's json writes them (a scheduler's initial best loss); users check numbers
            return read_json(beside, finite=False)
        if text is None:
            raise CheckpointError(f"{st_path}: no tinyclap config (neither header metadata nor a .json beside it)")
        return loads_json(text, f"{st_path}: config", finite=False)
    except JSONFileError as e:
        raise CheckpointError(str(e)) from None


def check_finite(tensors: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """CheckpointError naming the file and the first tensor holding NaN or infinity (weights that would turn
    every score into NaN). One pass over the floating-point tensors: about a second per GB."""
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{source}: tensor {name!r} holds {bad} NaN or infinite values; refusing to load")


def read_config(path: str | os.PathLike, default_stem: str = "student") -> Any:
    """The config of one of our checkpoints, from the safetensors header only (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    st_path = resolve_checkpoint(path, default_stem)
    try:
        with safe_open(str(st_path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{st_path}: not a readable safetensors file ({e})") from e
    return _config_text(st_path, meta)


def read_model(
    path: str | os.PathLike, default_stem: str = "student"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read one of our checkpoints: (config, tensors). Refuses anything that is not safetensors."""
    from safetensors import SafetensorError, safe_open

    st_path = resolve_checkpoint(path, default_stem)
    try:
        with safe_open(str(st_path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{st_path}: not a readable safetensors file ({e})") from e
    config = _config_text(st_path, meta)
    check_finite(tensors, st_path)
    return config, tensors
