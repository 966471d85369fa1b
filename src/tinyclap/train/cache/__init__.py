"""Distillation cache: fp16 log-mel crops + the frozen teacher's normalised embeddings, computed once.

tinyCLAP distils on audio only: the student learns to match the teacher's L2-normalised shared-space
embedding of the same 5 s crop. Decoding, resampling, the log-mel and the teacher are the expensive part
and never change between epochs, so `build_cache` (CLI: `tinyclap cache`) does them once and writes a
sharded, memory-mapped store; `CacheStore` / `CachedDataset` read it back with no decoding at all.

Store layout (`DIR` = the `--out` folder)
========================================

- `DIR/cache.json`: written first, before any shard::

      {"format": "tinyclap-cache/1",
       "teacher": {"kind", "path", "sha256", "sha256_of": "state_dict", "embed_dim", "sample_rate"},
       "frontend": LogMel().config(), "sample_rate": 44100, "clip_seconds": 5.0, "n_frames": 690,
       "n_mels": 64, "embed_dim": D, "crops_per_clip": K, "crop": "even" | "random",
       "val_fraction": f, "seed": s, "sources": [normalised specs]}

  `sha256` hashes the teacher's state dict (tensor names, dtypes, shapes and bytes), so the same weights
  give the same identity whether they came from an official `.pth` or one of our checkpoints. A rerun into
  the same DIR with different settings (anything but `teacher.path`) is refused unless `overwrite=True`.
- `DIR/shards/r{rank:02d}-{idx:05d}/`: one finished shard, holding whole files only (a file's crops never
  straddle two shards), about `shard_size` rows:
  - `logmel.npy`: (n, 690, 64) float16, the student's log-mel (MS CLAP 2022 front end) of each crop;
  - `target.npy`: (n, D) float32, the teacher's L2-normalised embedding of the same crop;
  - `items.json`: one dict per row: `path` (absolute source path), `rel` (path relative to its source
    root, which seeds the split), `offset` (crop start in seconds), `crop` (index of the crop within its
    file), `split` ("train" | "val") and `file` (index of the file in that run's de-duplicated list).
  A shard is written into `DIR/shards/.tmp-<name>-<pid>/` and renamed into place when complete, so a
  killed run loses at most the shard in flight; a rerun skips every file already in a finished shard
  (resume). A write error (disk full, permission denied) removes the temp folder and raises an OSError
  naming the shard. A finished shard that fails to open is moved aside to
  `DIR/shards/.corrupt-<name>-<time>/` and its files are computed again.
- `DIR/reports/r{rank:02d}.json` (each rank's last run) and `DIR/report.json` (their merge): files read,
  crops written, skipped files with the reason, stage timings and clips/s.

Crops, splits and ranks
=======================

Each unique source file (de-duplicated across specs by real path) is one item. A clip longer than 5 s at
44.1 kHz yields up to K = `crops_per_clip` non-overlapping crops (never more than fit): evenly spread
("even", deterministic; K = 1 is the centre crop, as `fit_clip(policy="eval")`) or at seeded random
non-overlapping offsets ("random", seeded by the seed and the file's `rel`, so reruns agree). Shorter clips
give one crop zero-padded at the end. The teacher sees the SAME crop (same start and duration): the
44.1 kHz crop itself, or that crop resampled with soxr to `teacher.sample_rate`.

The validation split is by source file: a file is "val" when the first 8 bytes of
sha256(f"{seed}:{rel}") read as a fraction fall below `val_fraction`, where `rel` is the file's path
relative to its spec's root (a folder spec: the folder; a manifest or dataset file: its folder; a single
file: its folder; a file outside that root: "<parent folder name>/<file name>"), so the split is stable
across reruns and machines. Under torchrun (`RANK`/`WORLD_SIZE`) rank r takes the files i with
i % world == r and writes its own `r{r}` shards; a gloo process group is created only when WORLD_SIZE > 1.

A cache may also hold a **text bank** (`text_bank.npy` + `text_bank.json`: the teacher's text embeddings of a
vocabulary, for the text-anchored KL of the `plus` distillation recipe), added by `tinyclap cache --text-bank`
or later by `--add-text-bank` without touching the audio: see `tinyclap.train.cache.textbank`.

Modules: `store` reads (CacheStore, CachedDataset, read_config; the only part a training run imports),
`sources` lists and decodes the inputs (specs, crops, split), `write` does the build's disk work (folder
check, shards, reports, lock) and `build` runs it (`build_cache`). Every public name is importable from
`tinyclap.train.cache`.

The log-mel is computed with `tinyclap.audio.frontend.FFTLogMel`, the FFT form of `LogMel` (the conv1d DFT kept
for ONNX export): the same values up to float rounding (<= 1e-3 dB above -90 dB, ~1e-2 dB near the -100 dB floor)
for several times less CPU, which matters here because the cache runs the front end over a whole corpus.
"""

from tinyclap._util import lazy_exports

_EXPORTS = {  # module -> the names it provides
    ".options": "CROP_MODES CacheOptions",
    ".store": "FORMAT SPLITS CacheError CacheStore CachedDataset read_config shard_name random_crop_start",
    ".sources": "crop_starts split_of SourceFile resolve_sources",
    ".write": "CacheReport",
    ".build": "build_cache",
    ".textbank": "CLASS_SETS add_text_bank build_text_bank default_vocabulary exclusion_names read_text_bank",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
