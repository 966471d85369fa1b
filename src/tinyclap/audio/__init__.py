"""Audio: decoding, resampling and clip fitting (`io`, torch-free) and the log-mel front ends (`frontend`).

The public names of `io` are re-exported here (`from tinyclap.audio import load_audio`); they need numpy,
soundfile and soxr, never torch.
"""

from tinyclap.audio.io import (
    CLIP_SAMPLES,
    CLIP_SECONDS,
    MAX_ABS_SAMPLE,
    PADS,
    POLICIES,
    RESAMPLE_QUALITY,
    SAMPLE_RATE,
    AudioError,
    AudioInfo,
    audio_info,
    display_path,
    eval_windows,
    fit_clip,
    iter_eval_windows,
    load_audio,
    stream_audio,
    stream_windows,
)

__all__ = [
    "AudioError",
    "AudioInfo",
    "CLIP_SAMPLES",
    "CLIP_SECONDS",
    "MAX_ABS_SAMPLE",
    "PADS",
    "POLICIES",
    "RESAMPLE_QUALITY",
    "SAMPLE_RATE",
    "audio_info",
    "display_path",
    "eval_windows",
    "fit_clip",
    "iter_eval_windows",
    "load_audio",
    "stream_audio",
    "stream_windows",
]
