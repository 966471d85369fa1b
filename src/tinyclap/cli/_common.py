"""What every CLI command shares: how its parser is made (defaults shown in --help) and common options.

Commands live one per module in `tinyclap.cli`: `register(subparsers)` adds the parser (through
`add_command`) and sets `func(args) -> int`. Modules import only argparse-level code at import time; heavy
imports (torch, models) happen inside `func`, so `tinyclap --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "BATCH",
    "COUNT",
    "EPOCHS",
    "WORKERS",
    "HOP_SECONDS",
    "MODEL_KINDS",
    "SHARED",
    "WINDOW_SECONDS",
    "DatasetArg",
    "HelpFormatter",
    "add_alias",
    "add_command",
    "add_device_arg",
    "add_embedding_run_args",
    "add_pool_window_arg",
    "add_int8_arg",
    "add_json_arg",
    "add_model_arg",
    "add_progress_arg",
    "add_templates_arg",
    "add_top_arg",
    "add_window_args",
    "add_workers_arg",
    "audio_inputs",
    "embedding_run_kwargs",
    "export_model",
    "classifier_from_args",
    "float_in",
    "int_in",
    "make_parser",
    "require",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default in --help, except the uninformative ones (None, False, empty lists)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == [] or default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse `type`: an integer in low..high, else a one-line usage error naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low}..{high})")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def float_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse `type`: a finite number in [low, high] (or (low, high] with `low_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value if low_open else low <= value) or not value <= high:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"{text} is out of range ({'(' if low_open else '['}{low}, {high}])")
        return value

    parse.__name__ = "number"
    return parse


# the bounds every command shares (far beyond any sensible value, far below an allocation that fails)
BATCH = int_in(1, 1 << 16)
WORKERS = int_in(0, 256)
EPOCHS = int_in(0, 100_000)
COUNT = int_in(1, 1 << 30)


def make_parser(prog: str, description: str | None = None, **kw: Any) -> argparse.ArgumentParser:
    """A stand-alone parser with the shared help format (for `python -m` entry points)."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, **kw)


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, *, description: str | None = None
) -> argparse.ArgumentParser:
    """The parser of `tinyclap <name>`: the one way commands are created, so every --help shows defaults and
    every command takes --debug."""
    parser = sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)
    _shared(parser.add_argument("--debug", action="store_true", help="show tracebacks (without it an error is one "
                                "line)"), "--debug")
    return parser


def add_embedding_run_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "running" options shared by the commands that embed datasets (`eval`, `prune`); returns the group."""
    r = parser.add_argument_group("running")
    r.add_argument("--embed-cache", help="folder for cached audio embeddings (default: the user cache folder)")
    r.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")
    r.add_argument("--seed", type=int, default=0, help="initialisation seed when --model is a bare student name")
    add_device_arg(r)
    add_progress_arg(r)
    return r


def embedding_run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The library keywords of the options `add_embedding_run_args` adds (`run_eval`, `run_prune` take them)."""
    return {"embed_cache": args.embed_cache, "no_cache": args.no_cache, "seed": args.seed, "device": args.device,
            "progress": not args.no_progress}


def add_device_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--device`: the one spelling and rule (`auto`: CUDA if available, else CPU; see `_util.resolve_device`)."""
    _shared(parser.add_argument("--device", default="auto", help="torch device: auto (cuda if available, else "
                                "cpu), cpu, cuda or cuda:N"), "--device")


class DatasetArg(argparse.Action):
    """`--dataset KIND:PATH[#folds=..&limit=..&subset=..]` (the one grammar), or a bare KIND with `--root`.

    The spec fills `dataset`, `root`, `folds`, `limit` and `subset` on the namespace (options given
    separately on the command line after it override them)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from tinyclap.data.labelled import DATASET_NAMES
        from tinyclap.data.spec import parse_dataset_spec

        text = str(values)
        if text.lower() in DATASET_NAMES:
            namespace.dataset = text.lower()
            return
        try:
            spec = parse_dataset_spec(text)
        except ValueError as e:
            parser.error(f"{option_string}: {e}")
        namespace.dataset, namespace.root = spec.name, spec.root
        for key in ("folds", "limit", "subset"):
            if getattr(spec, key) is not None:
                setattr(namespace, key, list(spec.folds) if key == "folds" else getattr(spec, key))


def require(func: Callable[[argparse.Namespace], int], *names: str) -> Callable[[argparse.Namespace], int]:
    """`func`, after checking that the options `names` (dest names) were given, directly or through a spec."""

    def checked(args: argparse.Namespace) -> int:
        absent = [n for n in names if getattr(args, n, None) in (None, "")]
        if absent:
            raise ValueError(f"missing {', '.join('--' + n.replace('_', '-') for n in absent)} "
                             "(or give --dataset as KIND:PATH)")
        return func(args)

    return checked


def add_templates_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                      default: str = 'default "this is the sound of {}"') -> None:
    """`--templates`: prompt templates with {} (repeatable, or files of them), the one spelling everywhere."""
    _shared(parser.add_argument("--templates", action="append", metavar="TEMPLATE|FILE",
                                help=f"prompt template with {{}} (repeatable, or a file with one per line): prompt "
                                f"ensembling; {default}"), "--templates")


def add_pool_window_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: float | None = None,
                        help: str | None = None, window_alias: bool = False) -> None:
    """`--pool-window SECONDS`: a student embeds each 5 s clip from windows of SECONDS (backbone per window,
    features averaged, head once: what a microcontroller does); the one spelling everywhere. `window_alias`:
    the microcontroller commands also take it, hidden, as `--window` (the device's window)."""
    seconds = float_in(0.05, 5.0)
    parser.add_argument("--pool-window", type=seconds, default=default, metavar="SECONDS",
                        help=help or "students only: run the backbone on windows of SECONDS, average their features, "
                        "run the head once (what a device with little RAM does)")
    if window_alias:
        add_alias(parser, "--window", "--pool-window", dest="pool_window", type=seconds)


def parse_labels(value: str | None) -> list[str]:
    """`--labels`: comma-separated names, or an existing file of names (one a line, blank lines and '#'
    comments skipped). A value that names a file (a path, or ending in .txt/.csv) that does not exist is
    refused rather than read as one class of that name."""
    import os

    from tinyclap._util import display_path, read_list_file

    if not value:
        return []
    if os.path.isfile(value):
        return read_list_file(value, "labels")
    if "," not in value and ("/" in value or value.lower().endswith((".txt", ".csv"))):
        raise ValueError(f"--labels {display_path(value)}: no such file (give a labels file, one a line, or "
                         'comma-separated names: "dog,rain,siren")')
    return [s.strip() for s in value.split(",") if s.strip()]


def classifier_from_args(args: argparse.Namespace, model: Any, spec: Any) -> Any:
    """The class matrix from `--classes`, or `--labels` encoded with `--templates` by the one text-model rule
    of `tinyclap.evaluation.run.build_classifier`: `--teacher`, else the model's own text tower, else the
    teacher recorded in the run (`--tokenizer` only needed for a BERT teacher)."""
    from tinyclap.evaluation.run import build_classifier

    if args.classes:
        return build_classifier(None, classes_file=args.classes)
    labels = parse_labels(args.labels)
    if not labels:
        raise ValueError('give the classes: --labels "a,b,c" (with a text encoder) or --classes FILE.npz')
    return build_classifier(labels, templates=args.templates, model=model, model_spec=spec, teacher=args.teacher,
                            tokenizer=args.tokenizer)


# ---------------------------------------------------------------------------------------------------------
# the vocabulary: every option that more than one command has is defined once, here; tests/test_cli_vocabulary
# walks every command's parser and checks flags, dest, default and that the option came from here
# ---------------------------------------------------------------------------------------------------------

WINDOW_SECONDS = 5.0  # --window when a command always cuts windows and none is given: the model's clip
HOP_SECONDS = 1.0  # --hop when none is given, in every command

# flag -> (option strings, dest, default); default `...`: set by each command (--workers)
SHARED: dict[str, tuple[tuple[str, ...], str, Any]] = {
    "--model": (("--model",), "model", None),
    "--top": (("-k", "--top"), "top", 5),
    "--window": (("--window",), "window", None),
    "--hop": (("--hop",), "hop", HOP_SECONDS),
    "--json": (("--json",), "json", False),
    "--device": (("--device",), "device", "auto"),
    "--no-progress": (("--no-progress",), "no_progress", False),
    "--templates": (("--templates",), "templates", None),
    "--workers": (("--workers",), "workers", ...),
    "--int8": (("--int8",), "int8", False),
    "--debug": (("--debug",), "debug", False),
}
MODEL_KINDS = ("student name, run folder or checkpoint, teacher (MS CLAP .pth, ours or a proxy) or export folder "
               "(ONNX Runtime, no torch)")

_Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def _shared(action: argparse.Action, flag: str) -> argparse.Action:
    """Marks `action` as the shared option `flag` (what the vocabulary test looks for)."""
    action.shared = flag  # type: ignore[attr-defined]
    return action


def add_model_arg(parser: _Parser, what: str = MODEL_KINDS, *, required: bool = False) -> argparse.Action:
    """`--model`: the one way to name a model (a name, run folder, checkpoint, teacher or export folder);
    `what` says which of them the command takes."""
    return _shared(parser.add_argument("--model", required=required, metavar="MODEL", help=f"the model: {what}"),
                   "--model")


class _Deprecated(argparse.Action):
    """An old spelling kept, hidden, for a release: stores its value and, on a terminal, prints a one-line note
    (scripts and logs parsing stderr see nothing new)."""

    def __init__(self, option_strings: Sequence[str], dest: str, use: str = "", **kw: Any) -> None:
        self.use = use
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if sys.stderr.isatty():
            print(f"note: {option_string} is deprecated and goes in a later release: use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_alias(parser: _Parser, flag: str, use: str, *, dest: str | None = None, **kw: Any) -> argparse.Action:
    """A hidden, deprecated old spelling `flag` of the option `use` (help suppressed; a note on a terminal); `dest`
    defaults to the flag's own, so a command body reading it keeps working."""
    return parser.add_argument(flag, action=_Deprecated, use=use, **({"dest": dest} if dest else {}), **kw)


def add_top_arg(parser: _Parser) -> argparse.Action:
    """`-k/--top`: how many results are shown (labels per file, search hits)."""
    from tinyclap.deploy.runtime import MAX_TOP

    return _shared(parser.add_argument("-k", "--top", type=int_in(1, MAX_TOP), default=5, metavar="K",
                                       help="results shown: labels per file, or search hits"), "--top")


def add_window_args(parser: _Parser) -> None:
    """`--window` and `--hop` (seconds): how long audio is cut into windows; see `WINDOW_SECONDS`, `HOP_SECONDS`."""
    from tinyclap.audio.io import MAX_TIMELINE_WINDOW_S, MIN_TIMELINE_HOP_S

    seconds = float_in(MIN_TIMELINE_HOP_S, MAX_TIMELINE_WINDOW_S)
    _shared(parser.add_argument("--window", type=seconds, metavar="SEC", help="window length in seconds: in "
                                "classify and the runtime, setting it gives a per-window timeline; elsewhere none "
                                f"given is {WINDOW_SECONDS:g} s, the model's clip"), "--window")
    _shared(parser.add_argument("--hop", type=seconds, default=HOP_SECONDS, metavar="SEC",
                                help="seconds between window starts (a hop longer than the window skips audio)"),
            "--hop")


def add_json_arg(parser: _Parser, what: str = "the result") -> argparse.Action:
    """`--json`: print the command's result as JSON on stdout (messages stay on stderr)."""
    return _shared(parser.add_argument("--json", action="store_true", help=f"print {what} as JSON"), "--json")


def add_progress_arg(parser: _Parser) -> argparse.Action:
    """`--no-progress`: no progress bar (`_util.progress`)."""
    return _shared(parser.add_argument("--no-progress", action="store_true", help="no progress display"),
                   "--no-progress")


def add_workers_arg(parser: _Parser, default: int) -> argparse.Action:
    """`--workers`: audio decoding workers beside the model (threads or processes); threads that run the model
    itself are named otherwise (`serve --jobs`, `--threads`)."""
    return _shared(parser.add_argument("--workers", type=WORKERS, default=default, help="audio decoding workers "
                                       "beside the model (0: decode inline)"), "--workers")


def add_int8_arg(parser: _Parser) -> argparse.Action:
    """`--int8`: with an export folder, its int8 model."""
    return _shared(parser.add_argument("--int8", action="store_true", help="with an export folder: run its int8 "
                                       "model (model.int8.onnx)"), "--int8")


def export_model(args: argparse.Namespace) -> None:
    """`--model` naming an export folder moves to `args.export_dir` (the commands' torch-free path; the deprecated
    `--export-dir` lands there directly)."""
    from pathlib import Path

    from tinyclap.models.exported import is_export

    if args.model is not None and Path(args.model).is_dir() and is_export(args.model):
        if args.export_dir is not None:
            raise ValueError("give one model: --model (the deprecated --export-dir is the same option)")
        args.export_dir, args.model = args.model, None


def audio_inputs(paths: Sequence[str]) -> list[str]:
    """The audio files `paths` name: a folder stands for the audio files under it (recursively, by extension,
    hidden files skipped: the rule `embed` uses); anything else is kept as given, so a file that cannot be read
    is reported by its name (a folder without audio too: a batch skips and reports it, it is not fatal)."""
    import os
    from pathlib import Path

    from tinyclap.data import DatasetError, parse_data_spec

    out: list[str] = []
    for p in paths:
        try:
            out.extend(sorted(os.fspath(f) for f in parse_data_spec(p)) if Path(p).is_dir() else [p])
        except DatasetError:
            out.append(p)
    return out
