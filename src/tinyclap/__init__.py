"""tinyclap: distil CLAP zero-shot audio classifiers into tiny students and put them on the edge.

Importing the package is cheap and imports neither torch nor transformers: the public names below are
resolved lazily, so `tinyclap.runtime` (onnxruntime + numpy only) works on devices without torch.
"""

from __future__ import annotations

from tinyclap._util import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "create_student": "tinyclap.models.students",
    "list_students": "tinyclap.models.students",
    "parse_student_name": "tinyclap.models.students",
    "load_model": "tinyclap.models.factory",
    "load_student": "tinyclap.models.factory",
    "save_student": "tinyclap.models.factory",
    "StudentEmbedder": "tinyclap.models.factory",
    "load_teacher": "tinyclap.models.teacher",
    "save_teacher": "tinyclap.models.teacher",
    "CLAPTeacher": "tinyclap.models.teacher",
    "TeacherConfig": "tinyclap.models.teacher",
    "Teacher": "tinyclap.models.teacher",
    "LogMel": "tinyclap.audio.frontend",
    "load_audio": "tinyclap.audio.io",
    "AudioError": "tinyclap.audio.io",
    "ZeroShotClassifier": "tinyclap.zeroshot",
}

__all__ = sorted(_LAZY) + ["__version__"]
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
