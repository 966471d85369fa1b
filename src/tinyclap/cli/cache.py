"""`tinyclap cache`: decode, log-mel and embed a distillation corpus once, into a memory-mapped store."""

from __future__ import annotations

import argparse
import json
import sys

from tinyclap.cli._common import add_command, add_device_arg
from tinyclap.train.cache.options import CROP_MODES, CacheOptions


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
        "--teacher", required=True, help="teacher checkpoint (official MS CLAP .pth, ours, or a proxy)"
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="SPEC",
        help="KIND:PATH (audiocaps, clotho, macs, fsd50k, folder, manifest, us8k, esc50, ...), a folder, "
        "a manifest or an audio file; repeatable (files are de-duplicated)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="cache folder (created; reruns resume)")
    d = CacheOptions()
    p.add_argument("--crops-per-clip", type=int, default=d.crops_per_clip, metavar="K", help="crops per long clip")
    p.add_argument("--crop", choices=CROP_MODES, default=d.crop, help="crop placement: even or seeded random")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of source files held out")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split and random crops")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per log-mel/teacher batch")
    p.add_argument("--workers", type=int, default=d.workers, help="decoding worker processes; 0 decodes inline")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="rows per shard, about")
    add_device_arg(p)
    p.add_argument("--overwrite", action="store_true", help="delete a cache with other settings in DIR first")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file could not be read")
    p.add_argument("--verify", action="store_true", help="read the whole store back and check it afterwards")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.add_argument("--json", action="store_true", help="print this rank's report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tinyclap.train.cache import CacheStore, build_cache

    options = CacheOptions(
        crops_per_clip=args.crops_per_clip, val_fraction=args.val_fraction, seed=args.seed,
        batch_size=args.batch_size, workers=args.workers, shard_size=args.shard_size, device=args.device,
        progress=not args.no_progress, crop=args.crop, overwrite=args.overwrite,
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
    return 1 if args.strict and report.skipped else 0
