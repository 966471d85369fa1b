"""`tinyclap search INDEX "dog barking in the rain"` or `tinyclap search INDEX --like clip.wav`.

Text queries are embedded by a teacher's text tower (--teacher, else the teacher recorded with the index's
model); --like embeds an audio file with the index's own model. Prints the top-k files with the window
offsets (start-end, seconds) and cosine scores; adjacent windows of one file are merged into one hit
(--no-dedupe keeps every window). The search is exact (see `tinyclap.index.search`).
"""

from __future__ import annotations

import argparse
import json
import sys

from tinyclap.cli._common import add_command, add_json_arg, add_model_arg, add_templates_arg, add_top_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "search", "search an index by text or by example audio",
                    description=__doc__.split("\n\n", 1)[1].strip())
    p.add_argument("index", metavar="INDEX", help="folder written by `tinyclap embed`")
    p.add_argument("text", nargs="*", help="the text query (words are joined with spaces)")
    p.add_argument("--like", metavar="AUDIO", help="query by example: an audio file")
    p.add_argument("--teacher", help="teacher checkpoint for text queries (default: recorded with the model)")
    p.add_argument("--tokenizer", help="folder with BERT's uncased vocab.txt (a BERT teacher)")
    add_templates_arg(p, default="none given: the text as typed")
    add_model_arg(p, "the audio model for --like (none given: the index's own, checked by fingerprint)")
    add_top_arg(p)
    p.add_argument("--min-score", type=float, help="only hits with a cosine at least this")
    p.add_argument("--approximate", action="store_true",
                   help="candidates from the FAISS graph built by `embed --ann` (faster on huge indexes; exact scores)")
    p.add_argument("--no-dedupe", action="store_true", help="list adjacent windows of a file separately")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tinyclap.audio import display_path
    from tinyclap.index import Index, audio_query, text_query

    text = " ".join(args.text).strip()
    if bool(text) == bool(args.like):
        raise ValueError('give either a text query or --like AUDIO (not both, not neither)')
    with Index.open(args.index) as index:
        if text:
            q = text_query(index, text, teacher=args.teacher, tokenizer=args.tokenizer, templates=args.templates)
        else:
            q = audio_query(index, args.like, model=args.model)
        hits = index.search(q, args.top, min_score=args.min_score, dedupe=not args.no_dedupe,
                            approximate=args.approximate)
        n = len(index)
    if args.json:
        query = {"text": text} if text else {"like": args.like}
        print(json.dumps({"index": args.index, "query": query, "windows": n,
                          "hits": [h.to_dict() for h in hits]}, indent=2))
        return 0
    print(f"{len(hits)} hit(s) among {n} windows of {args.index}")
    print(f"  {'score':>7s}  {'start':>8s}  {'end':>8s}  file")
    for h in hits:
        print(f"  {h.score:7.4f}  {h.start:8.2f}  {h.end:8.2f}  {display_path(h.path)}")
    if not hits:
        print("no hits" + (f" with a score >= {args.min_score}" if args.min_score is not None else ""),
              file=sys.stderr)
    return 0
