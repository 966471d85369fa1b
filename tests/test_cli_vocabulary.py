"""One vocabulary across the command line (issue 21, item 5): every command's parser is walked and each option
that several commands share (`cli._common.SHARED`) must come from its one definition in `cli/_common.py`, with
the same flags, dest, default and help; a model is always `--model`; the old spellings still parse, hidden;
`classify` and the runtime take folders as `embed` does."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import distinct_sound, small_export, write_wav

import tinyclap.runtime as runtime
from tinyclap.cli import build_parser
from tinyclap.cli import main as cli_main
from tinyclap.cli._common import HOP_SECONDS, SHARED, audio_inputs

# the commands that run a model: each names it with --model (the runtime included)
MODEL_COMMANDS = {"adapt", "classify", "demo", "distill", "embed", "eval", "export", "profile", "prune", "search",
                  "serve", "runtime"}
OLD_SPELLINGS = {"--student", "--export-dir", "--export", "--checkpoint", "--ckpt"}
NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
LABELS = ["dog", "rain", "siren"]


def _parsers(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command name, parser) of `parser` and every sub-command under it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _parsers(p, sub)


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    return [*_parsers(build_parser(), "tinyclap"), ("runtime", runtime.build_parser())]


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help != argparse.SUPPRESS and a.option_strings]


def _key(action: argparse.Action) -> str | None:
    """The SHARED flag `action` spells, if any."""
    return next((k for k, (flags, _, _) in SHARED.items() if set(action.option_strings) & set(flags)), None)


def test_shared_options_are_defined_once() -> None:
    seen: dict[str, dict[str, str]] = {}  # flag -> command -> help
    for name, parser in _commands():
        for action in _visible(parser):
            key = _key(action)
            if key is None:
                continue
            flags, dest, default = SHARED[key]
            where = f"{name} {'/'.join(action.option_strings)}"
            assert getattr(action, "shared", None) == key, f"{where}: not defined by cli/_common (add_..._arg)"
            assert tuple(action.option_strings) == flags, where
            assert action.dest == dest, where
            if default is not ...:
                assert action.default == default, where
            seen.setdefault(key, {})[name] = action.help or ""
    stems = {"--model": ("the model: ", ""), "--json": ("print ", " as JSON"), "--templates": ("prompt template", "")}
    for key, helps in seen.items():  # one help text, or one stem with what the command takes or prints
        if key in stems:
            assert all(h.startswith(stems[key][0]) and h.endswith(stems[key][1]) for h in helps.values()), helps
        else:
            assert len(set(helps.values())) == 1, f"{key}: {helps}"
    assert set(seen) == set(SHARED)  # every shared option is in use
    assert len(seen["--model"]) >= 10 and len(seen["--json"]) >= 8
    assert set(seen["--debug"]) == {name for name, _ in _commands()} - {"tinyclap", "runtime"}  # every command


def test_a_model_is_named_model_everywhere() -> None:
    for name, parser in _commands():
        visible = {f for a in _visible(parser) for f in a.option_strings}
        assert not visible & OLD_SPELLINGS, f"{name}: {sorted(visible & OLD_SPELLINGS)}"
        assert ("--model" in visible) == (name in MODEL_COMMANDS), name
        assert "--student" not in parser.format_help() and "--export-dir" not in parser.format_help()
        assert not [a for a in parser._actions if not a.option_strings and a.dest in ("export_dir", "model")], name


def test_workers_means_decoding_workers() -> None:
    helps = {name: a.help for name, p in _commands() for a in _visible(p) if "--workers" in a.option_strings}
    assert set(helps) == {"cache", "distill", "embed"} and len(set(helps.values())) == 1
    serve = dict(_commands())["serve"]
    assert [a.dest for a in _visible(serve) if "--jobs" in a.option_strings] == ["workers"]


def test_old_spellings_still_parse(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    parse = build_parser().parse_args
    assert parse(["classify", "a.wav", "--student", "run"]).student == "run"
    assert not capsys.readouterr().err  # no note where stderr is read by a program
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # on a terminal: one line
    assert parse(["classify", "a.wav", "--student", "run"]).student == "run"
    assert "--student is deprecated" in capsys.readouterr().err
    assert parse(["classify", "a.wav", "--export-dir", "E"]).export_dir == "E"
    assert capsys.readouterr().err.count("\n") == 1
    assert parse(["serve", "--export-dir", "E", "--workers", "3"]).workers == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("note: --") and "use --" in line for line in err)
    assert parse(["serve", "--jobs", "3"]).workers == 3 and not capsys.readouterr().err
    assert parse(["distill", "--student", NAME, "--out", "r"]).model == NAME
    assert parse(["demo", "--student", NAME]).model == NAME
    for argv in (["E", "a.wav", "b"], ["--model", "E", "a.wav", "b"], ["a.wav", "b", "--model", "E"],
                 ["a.wav", "--model", "E", "b", "--top", "3"]):  # files on both sides of the options
        args = runtime.parse_args(argv)
        assert (args.export_dir, args.files) == ("E", ["a.wav", "b"])
    with pytest.raises(SystemExit):
        runtime.parse_args(["only-one"])  # the folder, and no file


def test_shared_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    parse = build_parser().parse_args
    c, s, e = parse(["classify", "a.wav"]), parse(["search", "IX", "dog"]), parse(["embed", "x", "--model", "m",
                                                                                   "--out", "o"])
    assert c.top == s.top == runtime.parse_args(["E", "a.wav"]).top == 5
    assert c.hop == e.hop == parse(["serve"]).hop == 1.0 and c.window is None and e.window is None
    from tinyclap.index.build import HOP_S

    assert HOP_S == HOP_SECONDS  # the Python API's default hop (embed_sources) is the CLI's
    assert parse(["search", "IX", "dog", "-k", "3"]).top == parse(["classify", "a.wav", "-k", "3"]).top == 3


def test_audio_inputs_walk_folders_like_embed(tmp_path: Path) -> None:
    from tinyclap.index.build import list_sources

    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("a/one.wav", "a/b/two.flac", "a/.hidden.wav"):
        write_wav(tmp_path / rel, distinct_sound(1, 1.0))
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    loose = tmp_path / "loose.txt"  # a file is kept as given: classify reports it by name
    assert audio_inputs([str(tmp_path / "a"), str(loose)]) == [*list_sources([tmp_path / "a"]), str(loose)]
    assert [Path(p).name for p in audio_inputs([str(tmp_path / "a")])] == ["two.flac", "one.wav"]


def test_model_and_folders_end_to_end(tmp_path: Path, us8k_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--model EXPORT` in classify and the runtime, the old spellings giving the same output, and a folder."""
    export = small_export(tmp_path / "export", us8k_root, NAME, LABELS, 64)
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    write_wav(audio / "x.wav", distinct_sound(0, 2.0))
    write_wav(audio / "sub" / "y.wav", distinct_sound(1, 6.0))
    outs = []
    for argv in (["classify", str(audio), "--model", str(export), "-k", "2", "--json"],
                 ["classify", str(audio), "--export-dir", str(export), "--top", "2", "--json"]):
        assert cli_main(argv) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1]
    text = json.dumps(outs[0])
    assert str(audio / "x.wav") in text and str(audio / "sub" / "y.wav") in text
    texts = []
    for argv in ([str(export), str(audio)], ["--model", str(export), str(audio)]):
        assert runtime.main([*argv, "-k", "2"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and "x.wav" in texts[0] and "y.wav" in texts[0]


def test_debug_before_a_nested_command_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    """`tinyclap teacher --debug build-proxy ...`: argparse let build-proxy's default overwrite the parent's
    --debug; main() keeps it, so the error comes with its traceback."""
    from tinyclap.cli import main

    argv = ["build-proxy", "--us8k", "/nonexistent-us8k", "--out", "/nonexistent-out"]
    assert main(["teacher", *argv]) == 1 and "UrbanSound8K folder not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="UrbanSound8K folder not found"):
        main(["teacher", "--debug", *argv])
    with pytest.raises(ValueError, match="UrbanSound8K folder not found"):
        main(["teacher", *argv, "--debug"])
