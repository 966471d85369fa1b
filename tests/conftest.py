"""Shared fixtures: paths to the real recordings in ../shared/data and small generated audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
