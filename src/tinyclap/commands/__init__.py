"""CLI subcommands, one module each: `register(subparsers)` adds the parser and sets `func(args) -> int`.

Modules here import only argparse-level code at import time; heavy imports (torch, models) happen inside
`func`, so `tinyclap --help` stays fast.
"""
