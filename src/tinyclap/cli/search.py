"""`tinyclap search INDEX "dog barking in the rain"` or `tinyclap search INDEX --like clip.wav`.

Text queries are embedded by a teacher's text tower (--teacher, else the teacher recorded with the index's
model), put into classify's templates ("this is the sound of {}"; --templates to change, --raw for the text
as typed); --like embeds an audio file with the index's own model (another --model is refused unless
--allow-other-model) and leaves that file out of the hits. Prints the top-k files with the window
offsets (start-end, seconds), cosine scores and, for files indexed from a labelled source (us8k:, esc50:,
csv:... specs), their label; adjacent windows of one file are merged into one hit (--no-dedupe keeps every
window). The search is exact (see `tinyclap.index.search`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from tinyclap.cli._common import add_command, add_json_arg, add_model_arg, add_templates_arg, add_top_arg, float_in


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "search", "search an index by text or by example audio",
                    description=__doc__.split("\n\n", 1)[1].strip())
    p.add_argument("index", metavar="INDEX", help="folder written by `tinyclap embed`")
    p.add_argument("text", nargs="*", help="the text query (words are joined with spaces)")
    p.add_argument("--like", metavar="AUDIO", help="query by example: an audio file")
    p.add_argument("--teacher", help="teacher checkpoint for text queries (default: recorded with the model)")
    p.add_argument("--tokenizer", help="folder with BERT's uncased vocab.txt (a BERT teacher)")
    add_templates_arg(p, default='none given: classify\'s "this is the sound of {}" (--raw: the text as typed)')
    p.add_argument("--raw", action="store_true", help="embed the text query as typed (no template)")
    add_model_arg(p, "the audio model for --like (none given: the index's own; either is checked by fingerprint)")
    p.add_argument("--allow-other-model", action="store_true", help="rank with a --model or --teacher other "
                   "than the index recorded (a warning; scores not comparable)")
    add_top_arg(p)
    p.add_argument("--min-score", type=float_in(-1, 1), help="only hits with a cosine at least this")
    p.add_argument("--approximate", action="store_true",
                   help="candidates from the FAISS graph built by `embed --ann` (faster on huge indexes; exact scores)")
    p.add_argument("--no-dedupe", action="store_true", help="list adjacent windows of a file separately")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tinyclap.audio import display_path
    from tinyclap.index import Index, audio_query, text_query
    from tinyclap.index.query import OtherModelWarning

    text = " ".join(args.text).strip()
    if bool(text) == bool(args.like):
        raise ValueError('give either a text query or --like AUDIO (not both, not neither)')
    if args.raw and (args.templates or not text):
        raise ValueError("--raw applies to a text query without --templates")
    if args.allow_other_model and not (args.model or args.teacher):
        raise ValueError("--allow-other-model applies to --model or --teacher")
    with Index.open(args.index) as index:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if text:
                q = text_query(index, text, teacher=args.teacher, tokenizer=args.tokenizer, templates=args.templates,
                               raw=args.raw, allow_other=args.allow_other_model)
            else:
                q = audio_query(index, args.like, model=args.model, allow_other=args.allow_other_model)
        for w in seen:
            if issubclass(w.category, OtherModelWarning):
                print(f"warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        like = {os.path.abspath(args.like), os.path.realpath(args.like)} if args.like else set()
        hits = index.search(q, args.top, min_score=args.min_score, dedupe=not args.no_dedupe,
                            approximate=args.approximate, exclude=like)
        n = len(index)
    if args.json:  # the tinyclap.search document (docs/json.md)
        from tinyclap.schemas import hit, search_document

        query = {"text": text} if text else {"like": args.like}
        print(json.dumps(search_document(query, [hit(h, path=True) for h in hits], index=args.index, windows=n),
                         indent=2))
        return 0
    print(f"{len(hits)} hit(s) among {n} windows of {args.index}")
    print(f"  {'score':>7s}  {'start':>8s}  {'end':>8s}  file")
    for h in hits:
        label = f"  [{display_path(h.label)}]" if h.label is not None else ""
        print(f"  {h.score:7.4f}  {h.start:8.2f}  {h.end:8.2f}  {display_path(h.path)}{label}")
    if not hits:
        print("no hits" + (f" with a score >= {args.min_score}" if args.min_score is not None else ""),
              file=sys.stderr)
    return 0
