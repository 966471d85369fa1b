"""Models: PhiNet students (`students`, `phinet`), the CLAP teacher (`teacher`, `cnn14`), the proxy
teacher's towers (`proxy`), shared layers, checkpoints and `load_model`, the one door to every kind.
"""

from tinyclap._util import lazy_exports

_EXPORTS = {
    "create_student": ".students",
    "list_students": ".students",
    "parse_student_name": ".students",
    "count_params": ".students",
    "count_macs": ".students",
    "load_model": ".factory",
    "load_student": ".factory",
    "save_student": ".factory",
    "StudentEmbedder": ".factory",
    "checkpoint_stem": ".factory",
    "load_teacher": ".teacher",
    "save_teacher": ".teacher",
    "CLAPTeacher": ".teacher",
    "TeacherConfig": ".teacher",
    "load_proxy_teacher": ".proxy",
    "ProxyTeacher": ".proxy",
    "CheckpointError": ".checkpoint",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
