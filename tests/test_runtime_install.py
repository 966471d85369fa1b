"""Set-up and errors as a new user meets them: scripts/setup.sh's choice of interpreter (a project .venv
where the system Python is externally managed, PEP 668), and one-line errors for a missing model path, a
model of the wrong kind, a labels file and a list of paths given to `embed`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import save_tiny_teacher

from tinyclap.cli import main
from tinyclap.models import save_student
from tinyclap.models.students import create_student
from tinyclap.models.teacher import bundled_tokenizer_dir

ROOT = Path(__file__).resolve().parents[1]
NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
DEBIAN_PYTHON = Path("/usr/bin/python3")


def _pick(tmp: Path, env: dict[str, str]) -> tuple[str, subprocess.CompletedProcess[str]]:
    """The interpreter scripts/python.sh picks in a copy of the scripts at `tmp` (its stdout: PY)."""
    (tmp / "scripts").mkdir(exist_ok=True)
    shutil.copy(ROOT / "scripts" / "python.sh", tmp / "scripts" / "python.sh")
    r = subprocess.run(["bash", "-c", 'set -euo pipefail; source scripts/python.sh; echo "$PY"'], cwd=tmp, env=env,
                       capture_output=True, text=True, timeout=300)
    return r.stdout.strip(), r


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON")}
    return {**env, **extra}


def test_setup_uses_python_or_active_venv(tmp_path: Path) -> None:
    py, r = _pick(tmp_path, _env(PYTHON=sys.executable))
    assert py == sys.executable and not (tmp_path / ".venv").exists(), r.stderr
    venv = tmp_path / "active"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py, r = _pick(tmp_path, _env(VIRTUAL_ENV=str(venv)))
    assert py == str(venv / "bin" / "python") and not (tmp_path / ".venv").exists(), r.stderr


@pytest.mark.skipif(not (DEBIAN_PYTHON.is_file() and Path(subprocess.run(
    [str(DEBIAN_PYTHON), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"], capture_output=True,
    text=True).stdout.strip() or "/nonexistent", "EXTERNALLY-MANAGED").is_file()),
    reason="needs an externally-managed system python3 (Debian/Ubuntu)")
def test_setup_makes_project_venv_on_externally_managed_python(tmp_path: Path) -> None:
    """From Debian's own python3 with no venv active, setup works in .venv, where pip may install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(DEBIAN_PYTHON)
    env = _env(PATH=f"{bin_dir}:/usr/bin:/bin")
    refused = subprocess.run(["python3", "-m", "pip", "install", "--dry-run", "--no-index", "pip"], env=env,
                             capture_output=True, text=True, timeout=120)
    if "No module named pip" in refused.stderr:
        pytest.skip("the system python3 has no pip (python3-pip)")
    assert refused.returncode != 0 and "externally-managed" in refused.stderr
    py, r = _pick(tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert py == str(tmp_path / ".venv" / "bin" / "python") and "making the project's virtual environment" in r.stderr
    ok = subprocess.run([py, "-m", "pip", "install", "--dry-run", "--no-index", "pip"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    again, r = _pick(tmp_path, env)  # a second run reuses it
    assert again == py and "making" not in r.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("models")
    student = save_student(create_student(NAME, embed_dim=64), tmp / "student")
    return student, save_tiny_teacher(tmp / "teacher")


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_missing_model_path_says_so(animals_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = str(animals_dir / "dog.mp3")
    for spec in ("runs/nope", "nope.safetensors"):
        err = _error(["classify", clip, "--model", spec, "--labels", "a,b"], capsys)
        assert f"{spec}: no such file or folder" in err and "invalid student name" not in err
    err = _error(["classify", clip, "--teacher", "missing/teacher.pth", "--labels", "a,b"], capsys)
    assert "no such file or folder" in err


def test_student_as_teacher_is_one_line(models: tuple[Path, Path], animals_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    student, _ = models
    err = _error(["classify", str(animals_dir / "dog.mp3"), "--model", str(student), "--teacher", str(student),
                  "--labels", "a,b"], capsys)
    assert "'student' model (no text tower)" in err and "a teacher is expected" in err


def test_labels_file_is_read_as_a_file(models: tuple[Path, Path], animals_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, teacher = models
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\n# comment\n\ncat\n")
    argv = ["classify", str(animals_dir / "dog.mp3"), "--model", str(teacher), "--tokenizer",
            str(bundled_tokenizer_dir()), "--labels"]
    assert main([*argv, str(labels), "--json"]) == 0
    assert '"label": "cat"' in capsys.readouterr().out
    err = _error([*argv, str(tmp_path / "missing.txt")], capsys)
    assert "no such file" in err


def test_embed_refuses_a_bare_list(tmp_path: Path, animals_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text(str(animals_dir / "dog.mp3") + "\n")
    err = _error(["embed", str(lst), "--model", NAME, "--out", str(tmp_path / "index")], capsys)
    assert f"manifest:{lst}" in err and not (tmp_path / "index").exists()


def test_no_teacher_hint_names_the_fix(models: tuple[Path, Path], animals_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    student, _ = models
    err = _error(["classify", str(animals_dir / "dog.mp3"), "--model", str(student), "--labels", "a,b"], capsys)
    assert "--teacher CKPT (the teacher it was distilled from; an MS CLAP teacher also needs --tokenizer" in err

