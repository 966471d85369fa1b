"""Deployment: ONNX export and int8 quantisation, the torch-free runtime, footprint and latency profiles.
"""

from tinyclap._util import lazy_exports

_EXPORTS = {
    "export": ".export",
    "Runtime": ".runtime",
    "ExportError": ".runtime",
    "profile_model": ".profile",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
