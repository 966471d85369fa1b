"""`tinyclap classify FILE...`: zero-shot labels for audio files with a teacher or a student."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="rank class labels for audio files (zero-shot)")
    p.add_argument("files", nargs="+", help="audio files (anything libsndfile decodes)")
    g = p.add_argument_group("model (one of)")
    g.add_argument("--student", help="student checkpoint (.safetensors/.json or a run folder)")
    g.add_argument("--teacher", help="teacher checkpoint (official MS CLAP .pth or ours); gives text embeddings")
    g.add_argument("--model", help="any model spec: checkpoint, run folder or student name")
    p.add_argument("--tokenizer", help="folder with the BERT uncased vocab.txt (needed with --labels)")
    c = p.add_argument_group("classes (one of)")
    c.add_argument("--labels", help='comma-separated class names, e.g. "dog,rain,siren" (needs the teacher)')
    c.add_argument("--classes", help="class-matrix file (.npz) saved by tinyclap, no text encoder needed")
    p.add_argument("--template", action="append", help='prompt template(s), default "this is the sound of {}"')
    p.add_argument(
        "--long-clip",
        choices=("windows", "centre"),
        default="windows",
        help="clips longer than 5 s: mean of all window embeddings (default) or the centre crop",
    )
    p.add_argument("--top", type=int, default=5, help="labels shown per file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file could not be read")
    p.set_defaults(func=run)


def build_classifier(args: argparse.Namespace, audio_model):  # noqa: ANN001, ANN201 - CLI glue
    """Class matrix from --classes, or from --labels through the teacher's text tower."""
    from tinyclap.zeroshot import DEFAULT_TEMPLATE, ZeroShotClassifier

    if args.classes:
        return ZeroShotClassifier.load(args.classes)
    if not args.labels:
        raise ValueError('give the classes: --labels "a,b,c" (with a teacher) or --classes FILE.npz')
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    text_model = audio_model if hasattr(audio_model, "encode_text") else None
    if args.teacher and text_model is None:
        from tinyclap.models import load_model

        text_model = load_model(args.teacher, tokenizer_dir=args.tokenizer)
    if text_model is None:
        raise ValueError("--labels needs a text encoder: pass --teacher CKPT --tokenizer DIR, or use --classes FILE")
    return ZeroShotClassifier.from_teacher(text_model, labels, args.template or [DEFAULT_TEMPLATE])


def run(args: argparse.Namespace) -> int:
    from tinyclap.inference import embed_files
    from tinyclap.models import load_model

    spec = args.student or args.model or args.teacher
    if spec is None:
        raise ValueError("give a model: --student CKPT, --teacher CKPT or --model SPEC")
    model = load_model(spec, tokenizer_dir=args.tokenizer)
    clf = build_classifier(args, model)
    if clf.embed_dim != model.embed_dim:
        raise ValueError(f"class matrix has {clf.embed_dim} dims but the audio model gives {model.embed_dim}")
    res = embed_files(model, args.files, mode=args.long_clip, progress=len(args.files) > 20)
    ranked = clf.rank(res.embeddings, args.top) if res.paths else []
    if args.json:
        out = {
            "results": [
                {"file": p, "labels": [{"label": lb, "score": s} for lb, s in r]} for p, r in zip(res.paths, ranked)
            ],
            "failed": [{"file": p, "error": e} for p, e in res.failed],
        }
        print(json.dumps(out, indent=2))
    else:
        for p, r in zip(res.paths, ranked):
            print(p)
            for lb, s in r:
                print(f"  {s:7.4f}  {lb}")
    for p, e in res.failed:
        print(f"skipped {p}: {e}", file=sys.stderr)
    if res.failed:
        print(f"{len(res.failed)} of {len(args.files)} files could not be read", file=sys.stderr)
    return 1 if (res.failed and args.strict) or not res.paths else 0
