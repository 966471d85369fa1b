"""Shared fixtures: paths to the real recordings in ../shared/data, a per-module work folder and the tiny random
teacher's checkpoint (the plain set-up functions are in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import save_tiny_teacher

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
US8K = SHARED / "UrbanSound8K"
ANIMALS = SHARED / "animals-cc0"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, the real recordings (read in place, never copied)."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: tests need the shared real recordings beside the project")
    return SHARED


@pytest.fixture(scope="session")
def us8k_root(shared_data: Path) -> Path:
    return shared_data / "UrbanSound8K"


@pytest.fixture(scope="session")
def animals_dir(shared_data: Path) -> Path:
    return shared_data / "animals-cc0"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def work(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One temporary folder per test module, named after it (test_cache.py: cache0, ...)."""
    return tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2].removeprefix("test_"))


@pytest.fixture(scope="module")
def teacher_ckpt(work: Path) -> Path:
    """The tiny random teacher (torch seed 0) saved as work/teacher.safetensors."""
    return save_tiny_teacher(work / "teacher")
