"""Models: PhiNet students (`students`, `phinet`), the CLAP teacher (`teacher`, `cnn14`), the proxy
teacher's towers (`proxy`), shared layers, checkpoints, the student's waveform embedder (`embedder`), an
export folder as a model (`exported`) and `load_model` (`factory`), the one door to every kind.
"""

from tinyclap._util import lazy_exports

_EXPORTS = {  # module -> the names it provides
    ".students": "create_student list_students parse_student_name count_params count_macs",
    ".factory": "load_model load_student save_student checkpoint_stem",
    ".embedder": "StudentEmbedder AudioEmbedder",
    ".exported": "ExportedModel",
    ".teacher": "load_teacher save_teacher CLAPTeacher TeacherConfig Teacher",
    ".proxy": "load_proxy_teacher ProxyTeacher",
    ".fingerprint": "describe_model load_model_for_eval model_fingerprint weights_fingerprint",
    ".checkpoint": "CheckpointError",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
