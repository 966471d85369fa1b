"""`tinyclap <stage>`: a thin command line over the library (one module per stage in tinyclap.cli)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import tinyclap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyclap", description="Distil, evaluate, prune and deploy tiny zero-shot audio classifiers."
    )
    parser.add_argument("--version", action="version", version=f"tinyclap {tinyclap.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<stage>")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue  # _common (shared options), __main__
        importlib.import_module(f"tinyclap.cli.{mod.name}").register(sub)
    return parser


# what the `train` extra adds to the torch-free core (pyproject.toml)
TRAIN_MODULES = {"torch", "transformers", "safetensors", "tqdm", "matplotlib", "platformdirs", "yaml"}


def _debug(args: argparse.Namespace, argv: list[str]) -> bool:
    """--debug anywhere before `--`: argparse lets a nested command's default (False) overwrite the value a
    parent command parsed (`tinyclap teacher --debug build-proxy ...`)."""
    flags = argv[: argv.index("--")] if "--" in argv else argv
    return bool(getattr(args, "debug", False)) or "--debug" in flags


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.debug = _debug(args, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # our errors name the file/problem: show them without a traceback
        if getattr(args, "debug", False):
            raise
        print(f"tinyclap {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:  # the torch-free runtime install meets a command that trains or exports
        if getattr(args, "debug", False) or e.name not in TRAIN_MODULES:
            raise
        print(f"tinyclap {args.command}: error: this needs {e.name}, which the runtime-only install leaves out: "
              "pip install 'tinyclap[train]' (or bash scripts/setup.sh)", file=sys.stderr)
        return 1
