"""The README's examples run as written: the walkthrough and the Library block on the shared recordings
(with a few clips per stage, `$DATA` set to them), every other `tinyclap` line parses with today's options,
and every link to a section of the README names a heading that exists."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from tinyclap.cli import build_parser
from tinyclap.cli import main as cli_main
from tinyclap.runtime import main as runtime_main

README = Path(__file__).resolve().parents[1] / "README.md"

# Only the scale changes in CI: the same commands, on a few clips and epochs (appended options win).
FAST = {
    "teacher build-proxy": ["--limit-per-class", "6", "--epochs", "3", "--eval-folds", "--no-progress"],
    "distill": ["--epochs1", "1", "--epochs2", "1", "--batch-size", "8", "--workers", "0", "--no-progress"],
}
LIMIT = 16  # clips per dataset spec


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def _section_block(heading: str, lang: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    return re.search(rf"^```{lang}\n(.*?)^```", text[start:], flags=re.S | re.M).group(1)


def _fast(argv: list[str], shared: Path) -> list[str]:
    out = []
    for a in argv:
        a = a.replace("$DATA", str(shared))
        if re.match(r"^(us8k|esc50|csv|tut17):", a):  # a dataset spec: a few clips
            a += ("&" if "#" in a else "#") + f"limit={LIMIT}"
        out.append(a)
    for prefix, extra in FAST.items():
        if " ".join(argv).startswith(prefix):
            out += extra
    return out


def _run(line: str, shared: Path) -> str:
    words = shlex.split(line)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if words[:3] == ["python", "-m", "tinyclap.runtime"]:
            rc = runtime_main(_fast(words[3:], shared))
        else:
            assert words[0] == "tinyclap", line
            rc = cli_main(_fast(words[1:], shared))
    assert rc == 0, f"{line}\n{buf.getvalue()}"
    return buf.getvalue()


@pytest.mark.slow
def test_walkthrough_and_library_run_as_written(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA", str(shared_data))
    block = _section_block("### Walkthrough", "bash").splitlines()
    assert block[0].startswith("export DATA=")  # set once, then every line runs from any folder
    lines = [ln for ln in block[1:] if ln.strip()]
    assert len(lines) >= 7
    printed = {}
    for line in lines:
        printed[line] = _run(line, shared_data)
    for name in ("proxy/proxy_teacher.safetensors", "cache/cache.json", "student/student.safetensors",
                 "eval/report.json", "prune/prune.json", "export/manifest.json"):
        assert (tmp_path / "runs" / name).is_file(), name
    ranked = [out for line, out in printed.items() if "dog.mp3" in line]
    assert ranked and all(any(lb in out for lb in ("dog_bark", "siren", "car_horn")) for out in ranked)

    code = _section_block("## Library", "python")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "README.md#library", "exec"), {})
    assert re.search(r"\('(dog_bark|rain|siren)', 0\.\d+\)", buf.getvalue()), buf.getvalue()
    assert (tmp_path / "runs" / "classes.npz").is_file()


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            for part in re.split(r"\s*&&\s*|;\s*", line.split("  #")[0]):
                part = re.sub(r"^torchrun .*? -m tinyclap\.cli ", "tinyclap ", part.strip())
                if part.startswith("tinyclap ") and "$(" not in part:
                    lines.append(part)
    return lines


@pytest.mark.parametrize("line", _command_lines())
def test_every_readme_command_parses(line: str) -> None:
    """Each `tinyclap ...` line of the README names a command and options that exist today."""
    argv = shlex.split(line.replace("$T", "teacher.pth").replace("$TOK", "tok/"))[1:]
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"README line does not parse (exit {e.code}): {line}")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_section_links_name_headings() -> None:
    text = README.read_text(encoding="utf-8")
    text_outside_code = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text_outside_code, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text_outside_code)
    assert len(links) >= 20  # the table of contents
    assert [a for a in links if a not in anchors] == []
