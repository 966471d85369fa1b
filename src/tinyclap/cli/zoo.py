"""`tinyclap zoo`: the released tinyCLAP students usable by name (`--model NAME`), with source and licence."""

from __future__ import annotations

import argparse
import json

from tinyclap.cli._common import add_command, add_json_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "zoo", "list the released students usable by name (--model NAME): source, licence, size",
                    description="Released tinyCLAP students, fetched through the Hugging Face cache on first use "
                    "(HF_HUB_OFFLINE=1: cache only) and loaded weights-only; their class prompts are encoded by "
                    "MS CLAP 2022 (tinyclap download teacher msclap-2022, tokenizer bert).")
    add_json_arg(p, "a JSON list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tinyclap.models.pretrained import list_pretrained

    rows = list_pretrained()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:22s} {r['student']:40s} {r['size']:>8s}  {r['licence']}  teacher {r['teacher']}")
        print(f"{'':22s} {r['source']}")
        print(f"{'':22s} reported: {r['reported']}")
    return 0
