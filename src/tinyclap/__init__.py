"""tinyclap: distil CLAP zero-shot audio classifiers into tiny students and put them on the edge.

Importing the package is cheap and imports neither torch nor transformers: the public names below are
resolved lazily, so `tinyclap.runtime` (onnxruntime + numpy only) works on devices without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "create_student": "tinyclap.students",
    "list_students": "tinyclap.students",
    "parse_student_name": "tinyclap.students",
    "load_teacher": "tinyclap.teacher",
    "CLAPTeacher": "tinyclap.teacher",
    "TeacherConfig": "tinyclap.teacher",
    "Teacher": "tinyclap.teacher",
    "save_teacher": "tinyclap.teacher",
    "LogMel": "tinyclap.frontend",
    "ZeroShotClassifier": "tinyclap.zeroshot",
    "load_audio": "tinyclap.audio",
    "AudioError": "tinyclap.audio",
    "save_student": "tinyclap.models",
    "load_student": "tinyclap.models",
    "load_model": "tinyclap.models",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tinyclap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
