"""`python -m tinyclap.runtime EXPORT_DIR FILE...`: the torch-free runtime (`tinyclap.deploy.runtime`), re-exported
under its short name for devices that install only onnxruntime, numpy, soundfile and soxr."""

import sys

from tinyclap.deploy.runtime import (
    EXPORT_FORMAT,
    MANIFEST_FILE,
    ExportError,
    Runtime,
    TimelineRow,
    iter_timeline,
    main,
    ort_session,
    read_manifest,
    read_verified,
)

__all__ = [
    "EXPORT_FORMAT",
    "MANIFEST_FILE",
    "ExportError",
    "Runtime",
    "TimelineRow",
    "iter_timeline",
    "main",
    "ort_session",
    "read_manifest",
    "read_verified",
]

if __name__ == "__main__":
    sys.exit(main())
