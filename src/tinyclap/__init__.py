"""tinyclap: distil CLAP zero-shot audio classifiers into tiny students and put them on the edge.

Importing the package is cheap and imports neither torch nor transformers: the public names below are
resolved lazily, so `tinyclap.runtime` (onnxruntime + numpy only) works on devices without torch.
"""

from __future__ import annotations

from tinyclap._util import lazy_exports

__version__ = "0.1.0"

# module -> the public names it provides (resolved on first use)
_LAZY = {
    "tinyclap.models.students": "create_student list_students parse_student_name",
    "tinyclap.models.factory": "load_model load_student save_student",
    "tinyclap.models.embedder": "StudentEmbedder AudioEmbedder",
    "tinyclap.models.teacher": "load_teacher save_teacher CLAPTeacher TeacherConfig Teacher",
    "tinyclap.models.checkpoint": "CheckpointError",
    "tinyclap.audio.frontend": "LogMel",
    "tinyclap.audio.io": "load_audio AudioError",
    "tinyclap.zeroshot": "ZeroShotClassifier",
    "tinyclap.classifier": "Classifier",
}

__all__ = sorted(n for names in _LAZY.values() for n in names.split()) + ["__version__"]
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
