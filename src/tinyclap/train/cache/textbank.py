"""The cache's text bank: the teacher's text embeddings of a vocabulary, computed once, for the text-anchored
KL term of a distillation recipe (`tinyclap.train.losses`).

Files beside `cache.json` (written by `add_text_bank`; CLI: `tinyclap cache --text-bank default|FILE|none`,
or `tinyclap cache --add-text-bank ... --out DIR` on an existing cache, without touching its audio):

- `text_bank.npy`: (K, D) float32, the teacher's L2-normalised `encode_text` of each text;
- `text_bank.json`: the K texts, where they came from (vocabulary, captions), what was excluded and why, the
  teacher's identity, the sha256 of the .npy and of the cache.json it was made for.

The provenance lives in its own file, not in `cache.json`: `cache.json` is the build's contract (a rerun
must match it, and it is hashed into the cache identity that a distillation's resume checks), and a bank
is added afterwards. `read_text_bank` refuses a bank made for another teacher or another build of the cache.

Texts: the vocabulary (`default`: tinyclap's generic sound vocabulary, 384 everyday sound labels shipped in
`tinyclap/data/sound_vocabulary.txt`; or a UTF-8 FILE, one label a line, `#` comments), each put into the
prompt template ("this is the sound of {}", as zero-shot classification does), plus up to `max_captions`
captions of the cached audio where its source has them (AudioCaps `caption`, Clotho `caption_1..5`, MACS
`annotations[*].sentence`), taken as written; a seeded subset when there are more. `exclude` drops every
text in which an excluded class name (lower case, `_` as a space) occurs as a whole-word phrase, e.g.
`us8k` drops "Vehicle horn, car horn, honking" (car horn) and "Civil defense siren" (siren): an evaluation on
those classes can then show it never trained against its own label names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import JSONFileError, atomic_write_files, read_json, read_regular_file, sha256_file
from tinyclap.train.cache.store import CacheError, PathLike, read_config

__all__ = [
    "CLASS_SETS",
    "add_text_bank",
    "build_text_bank",
    "default_vocabulary",
    "exclusion_names",
    "read_text_bank",
]

BANK_FILE, INFO_FILE = "text_bank.npy", "text_bank.json"
BANK_FORMAT = "tinyclap-text-bank/1"
MAX_LABEL_FILE = 8 << 20
MAX_TEXTS = 200_000

US8K_CLASSES = (
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling", "gun_shot",
    "jackhammer", "siren", "street_music",
)  # fmt: skip
ESC50_CLASSES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow", "rain", "sea_waves",
    "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water", "toilet_flush",
    "thunderstorm", "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing",
    "brushing_teeth", "snoring", "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing",
    "door_wood_creaks", "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells",
    "airplane", "fireworks", "hand_saw",
)  # fmt: skip
ESC10_CLASSES = (
    "dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing", "clock_tick",
    "helicopter", "chainsaw",
)  # fmt: skip


def _class_sets() -> dict[str, tuple[str, ...]]:
    from tinyclap.data.labelled import TUT17_CLASSES

    return {"us8k": US8K_CLASSES, "esc50": ESC50_CLASSES, "esc10": ESC10_CLASSES, "tut17": tuple(TUT17_CLASSES)}


CLASS_SETS = ("us8k", "esc50", "esc10", "tut17")  # names `exclusion_names` knows without the dataset


# ------------------------------------------------------------------------------------------------ texts


def _labels_from_text(text: str, source: str) -> list[str]:
    labels = [s.strip() for s in text.splitlines()]
    labels = list(dict.fromkeys(s for s in labels if s and not s.startswith("#")))
    if len(labels) > MAX_TEXTS:
        raise CacheError(f"{source}: {len(labels)} labels, more than the {MAX_TEXTS} a text bank may hold")
    return labels


def default_vocabulary() -> list[str]:
    """tinyclap's generic sound vocabulary (384 everyday sound labels written for the package), in file order."""
    text = resources.files("tinyclap.data").joinpath("sound_vocabulary.txt").read_text(encoding="utf-8")
    return _labels_from_text(text, "tinyclap/data/sound_vocabulary.txt")


def read_label_file(path: PathLike) -> list[str]:
    """Labels of a UTF-8 text file, one a line (blank lines and `#` comments skipped, duplicates dropped)."""
    try:
        data = read_regular_file(path, MAX_LABEL_FILE)
        text = data.decode("utf-8-sig")
    except OSError as e:
        raise CacheError(f"{path}: unreadable ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise CacheError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except ValueError as e:  # too large, not a regular file
        raise CacheError(str(e)) from None
    labels = _labels_from_text(text, str(path))
    if not labels:
        raise CacheError(f"{path}: no labels (expected one label a line)")
    return labels


def exclusion_names(specs: Iterable[str]) -> list[str]:
    """Class names to exclude from each entry: a known set (us8k, esc50, esc10, tut17), a dataset spec
    (`KIND:PATH`, its class names read from its metadata) or a comma-separated list of names."""
    sets = _class_sets()
    names: list[str] = []
    for spec in specs:
        spec = str(spec).strip()
        if spec.lower() in sets:
            names += sets[spec.lower()]
        elif ":" in spec and Path(spec.partition(":")[2].partition("#")[0]).exists():
            from tinyclap.data import load_eval_dataset, parse_dataset_spec

            s = parse_dataset_spec(spec)
            names += load_eval_dataset(s.name, s.root, folds=s.folds, subset=s.subset).classes
        else:
            names += [n.strip() for n in spec.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[_\W]+", " ", text.lower()).split())


def apply_exclusion(texts: Sequence[str], names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(kept, dropped): a text is dropped when an excluded name occurs in it as a whole-word phrase."""
    patterns = [re.compile(rf"(?:^| ){re.escape(n)}(?: |$)") for n in map(_norm, names) if n]
    kept, dropped = [], []
    for t in texts:
        (dropped if any(p.search(_norm(t)) for p in patterns) else kept).append(t)
    return kept, dropped


def _csv_captions(path: Path, key: str, columns: Sequence[str], wanted: set[str], stem: bool) -> list[str]:
    from tinyclap.data.files import DatasetError, read_csv

    try:
        rows = read_csv(path, [key, *columns[:1]])
    except DatasetError as e:
        raise CacheError(str(e)) from None
    out = []
    for _, row in rows:
        name = row.get(key) or ""
        ids = {name, f"Y{name}"} if stem else {name}
        if ids & wanted:
            out += [row[c] for c in columns if row.get(c)]
    return out


def _macs_captions(path: Path, wanted: set[str]) -> list[str]:
    import yaml

    yaml_path = path if path.is_file() else path / "MACS.yaml"
    try:
        data = yaml.safe_load(read_regular_file(yaml_path, 64 << 20).decode("utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise CacheError(f"{yaml_path}: unreadable MACS metadata ({e})") from None
    files = data.get("files") if isinstance(data, dict) else None
    out = []
    for entry in files if isinstance(files, list) else []:
        if isinstance(entry, dict) and os.path.basename(str(entry.get("filename", ""))) in wanted:
            out += [str(a["sentence"]) for a in entry.get("annotations") or [] if isinstance(a, dict)
                    and a.get("sentence")]  # fmt: skip
    return out


def source_captions(sources: Sequence[str], cached_paths: Iterable[str]) -> list[str]:
    """Captions of the cached audio, from the sources that have them (AudioCaps, Clotho, MACS), unique, sorted."""
    stems = {Path(p).stem for p in cached_paths}
    names = {Path(p).name for p in cached_paths}
    caps: list[str] = []
    for spec in sources:
        kind, _, rest = str(spec).partition(":")
        root = Path(rest.partition("#")[0])
        if kind == "audiocaps":
            for split in ("train", "val", "test"):
                if (root / f"{split}.csv").is_file():
                    caps += _csv_captions(root / f"{split}.csv", "youtube_id", ["caption"], stems, True)
        elif kind == "clotho":
            for meta in sorted(root.glob("clotho_captions_*.csv")):
                caps += _csv_captions(meta, "file_name", [f"caption_{i}" for i in range(1, 6)], names, False)
        elif kind == "macs":
            caps += _macs_captions(root, names)
    return sorted({" ".join(c.split()) for c in caps if c.strip()})


# ------------------------------------------------------------------------------------------------ bank


def _encode(teacher: Any, texts: Sequence[str], batch_size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if not callable(getattr(teacher, "encode_text", None)):
        raise CacheError(
            f"the teacher ({type(teacher).__name__}) has no text tower (encode_text): it cannot make a text bank"
        )
    if getattr(teacher, "tokenizer", "n/a") is None:
        raise CacheError("the teacher has no tokenizer, so it cannot encode the text bank: pass --tokenizer DIR "
                         "(a folder with BERT's uncased vocab.txt)")  # fmt: skip
    rows = []
    with torch.no_grad():
        for a in range(0, len(texts), batch_size):
            rows.append(F.normalize(teacher.encode_text(list(texts[a : a + batch_size])).float(), dim=-1).cpu())
    bank = torch.cat(rows).numpy().astype(np.float32)
    if not np.isfinite(bank).all() or np.any(np.abs(np.linalg.norm(bank, axis=1) - 1.0) > 1e-3):
        raise CacheError("the teacher's text embeddings of the bank are not finite unit vectors")
    return bank


def build_text_bank(
    teacher: Any, bank: str = "default", *, exclude: Sequence[str] = (), captions: Sequence[str] = (),
    max_captions: int = 2000, template: str = "this is the sound of {}", seed: int = 1234, batch_size: int = 64,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(K, D) unit text embeddings of the vocabulary (`default` or a label FILE, templated) and up to
    `max_captions` captions, less the `exclude`d names; and its provenance (texts, counts, exclusions)."""
    if "{}" not in template:
        raise CacheError(f"text bank template {template!r} has no {{}} for the label")
    labels = default_vocabulary() if bank == "default" else read_label_file(bank)
    caps = sorted(set(captions))
    if len(caps) > max_captions:
        order = np.random.default_rng(seed).permutation(len(caps))[:max_captions]
        caps = [caps[i] for i in sorted(order)]
    names = exclusion_names(exclude)
    labels, dropped_labels = apply_exclusion(labels, names)
    caps, dropped_caps = apply_exclusion(caps, names)
    texts = list(dict.fromkeys([template.replace("{}", lab) for lab in labels] + caps))
    if len(texts) < 2:
        raise CacheError(f"the text bank would hold {len(texts)} text(s) after exclusion; it needs at least 2")
    info = {
        "format": BANK_FORMAT, "vocabulary": "tinyclap-sounds-384" if bank == "default" else os.path.abspath(bank),
        "template": template, "labels": len(labels), "captions": len(caps), "max_captions": max_captions,
        "exclude": list(exclude), "excluded_names": names, "excluded": dropped_labels + dropped_caps,
        "texts": texts,
    }  # fmt: skip
    return _encode(teacher, texts, batch_size), info


def _cache_config_sha256(config: dict[str, Any]) -> str:
    """What the bank was made for: cache.json less the teacher's path (which may move)."""
    config = dict(config)
    if isinstance(config.get("teacher"), dict):
        config["teacher"] = {k: v for k, v in config["teacher"].items() if k != "path"}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _load_teacher(cache_dir: Path, config: dict[str, Any], teacher: Any, tokenizer: PathLike | None) -> Any:
    """The teacher object: `teacher` (a model or a spec), else the one cache.json records; it must be the
    cache's teacher (same weights identity)."""
    from tinyclap._util import state_sha256
    from tinyclap.models import load_model

    spec = teacher if teacher is not None else (config.get("teacher") or {}).get("path")
    if spec is None:
        raise CacheError(f"{cache_dir}/cache.json records no teacher path: pass --teacher CKPT")
    model = load_model(spec, tokenizer_dir=tokenizer) if isinstance(spec, (str, os.PathLike)) else spec
    want, got = (config.get("teacher") or {}).get("sha256"), state_sha256(model)
    if want and got and want != got:
        raise CacheError(f"{spec}: not the teacher this cache was built with (weights sha256 {got[:12]}..., "
                         f"cache.json says {want[:12]}...)")  # fmt: skip
    return model


def add_text_bank(
    cache_dir: PathLike, teacher: Any = None, bank: str = "default", *, tokenizer: PathLike | None = None,
    exclude: Sequence[str] = (), max_captions: int = 2000, template: str = "this is the sound of {}",
    device: str = "cpu",
) -> dict[str, Any]:
    """Compute the text bank of an existing cache and write text_bank.npy + text_bank.json (atomically; the
    audio is not touched). `teacher`: a model or checkpoint, by default the one cache.json records."""
    from tinyclap._util import resolve_device
    from tinyclap.train.cache.store import CacheStore

    cache_dir = Path(cache_dir)
    store = CacheStore(cache_dir)  # a usable cache: cache.json and shards check out
    config = store.config
    model = _load_teacher(cache_dir, config, teacher, tokenizer)
    if hasattr(model, "to"):
        model = model.to(resolve_device(device))
    captions = source_captions(config.get("sources") or [], {str(it.get("path")) for it in store.items})
    seed = int(config.get("seed", 1234))
    emb, info = build_text_bank(model, bank, exclude=exclude, captions=captions, max_captions=max_captions,
                                template=template, seed=seed)  # fmt: skip
    if emb.shape[1] != store.embed_dim:
        raise CacheError(f"the teacher's text embeddings are {emb.shape[1]}-d, the cache's targets {store.embed_dim}-d")
    import io

    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    info.update(
        teacher_sha256=(config.get("teacher") or {}).get("sha256"), cache_config_sha256=_cache_config_sha256(config),
        shape=list(emb.shape), npy_sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
    )  # fmt: skip
    atomic_write_files({cache_dir / BANK_FILE: buf.getvalue(),
                        cache_dir / INFO_FILE: (json.dumps(info, indent=1) + "\n").encode()})  # fmt: skip
    return info


def read_text_bank(cache_dir: PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """The cache's (K, D) text bank and its provenance; CacheError (saying how to add one) when it is missing,
    damaged, or made for another teacher or another build of this cache."""
    cache_dir = Path(cache_dir)
    config = read_config(cache_dir)
    how = (f"add one with `tinyclap cache --add-text-bank default --out {cache_dir}` (the audio is not "
           "recomputed; --tokenizer DIR for a BERT teacher)")  # fmt: skip
    info_path, npy = cache_dir / INFO_FILE, cache_dir / BANK_FILE
    if not info_path.is_file() or not npy.is_file():
        raise CacheError(f"{cache_dir}: this cache has no text bank ({BANK_FILE}); {how}")
    try:
        info = read_json(info_path)
    except JSONFileError as e:
        raise CacheError(f"{e}; {how}") from None
    if info.get("format") != BANK_FORMAT:
        raise CacheError(f"{info_path}: format {info.get('format')!r}, expected {BANK_FORMAT!r}; {how}")
    if info.get("cache_config_sha256") != _cache_config_sha256(config):
        raise CacheError(f"{info_path}: made for another teacher or build of this cache; {how}")
    if sha256_file(npy) != info.get("npy_sha256"):
        raise CacheError(f"{npy}: does not match {INFO_FILE} (sha256); {how}")
    try:
        bank = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CacheError(f"{npy}: unreadable ({e}); {how}") from None
    ok = bank.dtype == np.float32 and bank.ndim == 2 and bank.shape[0] >= 2
    if not ok or bank.shape[1] != int(config["embed_dim"]) or not np.isfinite(bank).all():
        raise CacheError(f"{npy}: {bank.dtype} {bank.shape}, expected finite float32 (K >= 2, {config['embed_dim']})")
    return bank, info
