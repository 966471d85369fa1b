"""`tinyclap cache`: decode, log-mel and embed a distillation corpus once, into a memory-mapped store."""

from __future__ import annotations

import argparse
import json
import sys

from tinyclap.cli._common import (
    BATCH,
    add_command,
    add_device_arg,
    add_json_arg,
    add_progress_arg,
    add_workers_arg,
    float_in,
    int_in,
)
from tinyclap.train.cache.options import CROP_MODES, VIEW_AUGMENT, VIEW_MAX, CacheOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "cache",
        "precompute log-mel crops and teacher embeddings for distillation",
        description="Decode every source file once, cut up to K 5 s crops, and store their fp16 log-mels "
        "with the teacher's normalised embeddings in DIR (sharded, resumable; see tinyclap.train.cache). "
        "Run it under torchrun to split the files across processes/GPUs.",
    )
    p.add_argument(
        "--teacher", help="teacher checkpoint (official MS CLAP .pth, ours, or a proxy); required, except with "
        "--add-text-bank (default: the one cache.json records)"
    )
    p.add_argument(
        "--data",
        action="append",
        metavar="SPEC",
        help="KIND:PATH (audiocaps, clotho, macs, fsd50k, folder, manifest, us8k, esc50, ...), a folder, "
        "a manifest or an audio file; repeatable (files are de-duplicated)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="cache folder (created; reruns resume)")
    d = CacheOptions()
    p.add_argument("--crops-per-clip", type=int_in(1, 1000), default=d.crops_per_clip, metavar="K",
                   help="crops per long clip")
    p.add_argument("--crop", choices=CROP_MODES, default=d.crop, help="crop placement: even or seeded random")
    a = VIEW_AUGMENT
    p.add_argument("--views", type=int_in(0, VIEW_MAX), default=d.views, metavar="K",
                   help="also store K augmented views of each crop of a train-split file, each with the teacher's "
                   f"embedding of exactly that view (seeded): a random {a['keep_fraction'][0] * 100:g}-"
                   f"{a['keep_fraction'][1] * 100:g} %% segment at a random offset, "
                   f"{a['gain_db'][0]:+g}..{a['gain_db'][1]:+g} dB gain, and with probability "
                   f"{a['mix_probability']} mixup with a train-split clip (lam "
                   f"{a['mix_lambda'][0]}-{a['mix_lambda'][1]}); validation files keep their clean rows only. "
                   "`tinyclap distill --views` trains on them")
    p.add_argument("--val-fraction", type=float_in(0, 0.9), default=d.val_fraction,
                   help="share of source files held out")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split and random crops")
    p.add_argument("--batch-size", type=BATCH, default=d.batch_size, help="crops per log-mel/teacher batch")
    add_workers_arg(p, d.workers)
    p.add_argument("--shard-size", type=int_in(1, 1 << 20), default=d.shard_size, help="rows per shard, about")
    add_device_arg(p)
    p.add_argument("--overwrite", action="store_true", help="delete a cache with other settings in DIR first")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file could not be read")
    p.add_argument("--verify", action="store_true", help="read the whole store back and check it afterwards")
    add_progress_arg(p)
    add_json_arg(p, "this rank's report")
    _add_text_bank_args(p)
    p.set_defaults(func=run)


def _add_text_bank_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "text bank (for the text-KL term, `tinyclap distill --kl-weight W`; see tinyclap.train.cache.textbank)")
    g.add_argument("--text-bank", default="none", metavar="default|FILE|none",
                   help="after the audio, embed a vocabulary with the teacher's text tower: default (tinyclap's 384 "
                   "everyday sound labels, shipped) or a FILE of labels, plus captions of the cached audio "
                   "(AudioCaps, Clotho, MACS) (default: %(default)s)")
    g.add_argument("--add-text-bank", metavar="default|FILE",
                   help="only add (or replace) the text bank of the existing cache --out; no --data needed and "
                   "the audio is not recomputed")
    g.add_argument("--text-bank-exclude", action="append", default=[], metavar="NAMES",
                   help="drop every bank text containing one of these class names: us8k, esc50, esc10, tut17, a "
                   "dataset spec KIND:PATH, or a comma-separated list (repeatable)")
    g.add_argument("--text-bank-max-captions", type=int_in(0, 200_000), default=2000, metavar="N",
                   help="at most N source captions (a seeded subset) (default: %(default)s)")
    g.add_argument("--tokenizer", metavar="DIR", help="BERT tokenizer folder for an MS CLAP teacher's text tower")


def _text_bank(args: argparse.Namespace, bank: str) -> None:
    from tinyclap.train.cache.textbank import add_text_bank

    info = add_text_bank(
        args.out, args.teacher, bank, tokenizer=args.tokenizer, exclude=args.text_bank_exclude,
        max_captions=args.text_bank_max_captions, device=args.device,
    )  # fmt: skip
    print(f"text bank: {len(info['texts'])} texts ({info['labels']} labels, {info['captions']} captions, "
          f"{len(info['excluded'])} excluded) in {args.out}/text_bank.npy",
          file=sys.stderr if args.json else sys.stdout)


def _check_args(args: argparse.Namespace) -> str | None:
    """The bank to compute after the audio (None: none); ValueError on a combination that cannot run."""
    from pathlib import Path

    if args.add_text_bank is not None:
        if args.data:
            raise ValueError("--add-text-bank works on an existing cache: drop --data (or use --text-bank)")
        return args.add_text_bank
    if not args.teacher or not args.data:
        raise ValueError("give --teacher CKPT and --data SPEC (or --add-text-bank on an existing cache)")
    bank = None if args.text_bank == "none" else args.text_bank
    if bank not in (None, "default") and not Path(bank).is_file():
        raise ValueError(f"--text-bank {bank}: not default, none or an existing label file")
    return bank


def run(args: argparse.Namespace) -> int:
    from tinyclap.train.cache import CacheStore, build_cache

    bank = _check_args(args)
    if args.add_text_bank is not None:
        _text_bank(args, bank)
        return 0

    options = CacheOptions(
        crops_per_clip=args.crops_per_clip, val_fraction=args.val_fraction, seed=args.seed,
        batch_size=args.batch_size, workers=args.workers, shard_size=args.shard_size, device=args.device,
        progress=not args.no_progress, crop=args.crop, overwrite=args.overwrite, views=args.views,
        strict=False,  # decided below, after the summary is printed
    )  # fmt: skip
    report = build_cache(args.teacher, args.data, args.out, options)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    if args.verify:
        counts = CacheStore(args.out).verify()
        print(f"verified: {counts}", file=sys.stderr if args.json else sys.stdout)
    if report.skipped:
        print(f"{len(report.skipped)} file(s) skipped (listed in {args.out}/report.json)", file=sys.stderr)
    if bank is not None:
        _text_bank(args, bank)
    return 1 if args.strict and report.skipped else 0
