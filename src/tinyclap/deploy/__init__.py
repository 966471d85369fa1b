"""Deployment: ONNX export (`onnx`), int8 quantisation (`quantize`), the export folder (`export`), the
torch-free runtime (`runtime`), footprint and latency profiles (`profile`), the real recordings the
checks run on (`clips`).
"""

from tinyclap._util import lazy_exports

_EXPORTS = {  # module -> the names it provides
    ".export": "export",
    ".quantize": "Int8Options",
    ".runtime": "Runtime ExportError",
    ".profile": "profile_model",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
