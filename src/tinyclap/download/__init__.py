"""`tinyclap download`: fetch the teacher weights, tokenizer files and datasets, safely.

Every file is downloaded with urllib into `<name>.part` (resumed with HTTP Range after a dropped connection,
restarted cleanly when a server ignores Range), checked against its expected size and SHA-256 (or the MD5
that Zenodo publishes when no SHA-256 exists), and only then renamed to its final name. Archives are
validated member by member *before* anything is written (no absolute paths, no `..`, no links leaving the
target, no device files), extracted into a temporary folder beside the target and renamed into place, so a
bad archive leaves nothing behind. Files without any published checksum are never reported as verified:
the computed SHA-256 is printed and the user must pass `--sha256 HEX` or `--allow-unverified`.

Layout under the root (`--root`, else `$TINYCLAP_HOME`, else `platformdirs.user_cache_dir("tinyclap")`)::

    <root>/teacher/msclap-2022/CLAP_weights_2022.pth
    <root>/tokenizer/bert-base-uncased/{vocab.txt,tokenizer_config.json,tokenizer.json,config.json}
    <root>/downloads/dataset/<name>/<archive>     (archives; removed after extraction unless kept)
    <root>/dataset/<name>/...                     (extracted dataset, with a completion marker)

Modules: `registry` (the catalogue: `REGISTRY`, `Resource`, `RemoteFile`, paths), `fetch` (HTTP with
resume and verification), `extract` (`safe_extract`); this package ties them together (`download`, `find`,
completion markers). The command line is `tinyclap.cli.download`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyclap._util import atomic_write_text, read_json
from tinyclap.download.extract import MAX_EXTRACT_BYTES, safe_extract
from tinyclap.download.fetch import CHUNK, DEFAULT_MAX_BYTES, RETRY_HTTP_CODES, STALL_BYTES, FetchOptions, fetch_file
from tinyclap.download.registry import (
    ENV_HOME,
    REGISTRY,
    DownloadError,
    RemoteFile,
    Resource,
    archive_dir,
    default_root,
    format_registry,
    is_sha256,
    make_registry,
    resolve,
    resource_dir,
    result_path,
    root_dir,
)

__all__ = [
    "CHUNK",
    "DEFAULT_MAX_BYTES",
    "ENV_HOME",
    "MARKER",
    "MARKER_FORMAT",
    "REGISTRY",
    "RETRY_HTTP_CODES",
    "STALL_BYTES",
    "DownloadError",
    "FetchOptions",
    "RemoteFile",
    "Resource",
    "archive_dir",
    "default_root",
    "download",
    "find",
    "format_registry",
    "make_registry",
    "resolve",
    "resource_dir",
    "safe_extract",
    "sha256_overrides",
]

log = logging.getLogger("tinyclap.download")

MARKER = ".tinyclap-download.json"
MARKER_FORMAT = "tinyclap-download/1"


# ---------------------------------------------------------------------------------------------------------
# Completion markers
# ---------------------------------------------------------------------------------------------------------

def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = read_json(folder / MARKER)  # bounded size and depth: a hostile marker is just "not ours"
    except ValueError:
        return None
    return data if data.get("format") == MARKER_FORMAT else None


def _is_complete(res: Resource, folder: Path, *, archives: bool = False,
                 overrides: Mapping[str, str] | None = None) -> bool:
    """True when `folder` holds a finished download of `res` matching the registry (and any --sha256)."""
    marker = _read_marker(folder)
    if marker is None or marker.get("resource") != res.key:
        return False
    recorded = {r.get("name"): r for r in marker.get("files", []) if isinstance(r, dict)}
    for rf in res.files:
        r = recorded.get(rf.name)
        want = (overrides or {}).get(rf.name, rf.sha256)
        if r is None or (want and r.get("sha256") != want) or (rf.size and r.get("size") != rf.size):
            return False
        if (archives or not res.is_archive) and not ((folder / rf.name).is_file()
                                                     and (folder / rf.name).stat().st_size == r.get("size")):
            return False
    return True


def _marker_text(res: Resource, records: list[dict[str, Any]]) -> str:
    return json.dumps({"format": MARKER_FORMAT, "resource": res.key, "files": records,
                       "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n"


def sha256_overrides(res: Resource, sha256: str | Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Per-file SHA-256 overrides from `HEX` (single-file resources), `NAME=HEX` items or a mapping."""
    if sha256 is None:
        return {}
    if isinstance(sha256, Mapping):
        items = list(sha256.items())
    else:
        items = []
        for s in [sha256] if isinstance(sha256, str) else list(sha256):
            name, sep, hexd = s.partition("=")
            if not sep:
                if len(res.files) != 1:
                    raise DownloadError(f"{res.key} has {len(res.files)} files: give --sha256 as NAME=HEX "
                                        f"(names: {', '.join(f.name for f in res.files)})")
                name, hexd = res.files[0].name, s
            items.append((name, hexd))
    out = {}
    names = {f.name for f in res.files}
    for name, hexd in items:
        hexd = hexd.strip().lower()
        if name not in names:
            raise DownloadError(f"--sha256 for {name!r}: {res.key} has no such file "
                                f"(names: {', '.join(sorted(names))})")
        if not is_sha256(hexd):
            raise DownloadError(f"--sha256 for {name}: {hexd!r} is not 64 hexadecimal digits")
        out[name] = hexd
    return out


def find(
    what: str | Sequence[str],
    root: str | os.PathLike | None = None,
    *,
    registry: Mapping[str, Resource] | None = None,
) -> Path | None:
    """The path `download()` would return if the resource is already completely there, else None."""
    res = resolve(what, registry)
    r = root_dir(root)
    folder = resource_dir(res, r)
    return result_path(res, r, True) if _is_complete(res, folder) else None


# ---------------------------------------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------------------------------------


def download(
    what: str | Sequence[str],
    root: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    extract: bool = True,
    force: bool = False,
    sha256: str | Mapping[str, str] | Sequence[str] | None = None,
    allow_unverified: bool = False,
    keep_archives: bool = False,
    timeout: float = 30.0,
    retries: int = 5,
    backoff: float = 1.0,
    registry: Mapping[str, Resource] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    stall_timeout: float = 120.0,
) -> Path:
    """Download (if needed), verify and, for archives, safely extract a resource; return its path.

    `what` is e.g. `"teacher msclap-2022"`, `"tokenizer bert-base-uncased"` or `"dataset us8k"`. Returns the
    file for single-file resources, the folder otherwise (for datasets the folder in the official layout,
    or the archive folder with `extract=False`). Nothing is downloaded when a finished copy is present,
    unless `force`. `sha256` overrides/supplies checksums (`HEX` or `NAME=HEX`); `allow_unverified`
    accepts files that have no published checksum. `max_bytes` caps a file whose size is not known (an
    entry's own `max_size` first) and extraction's total; `stall_timeout` drops a transfer slower than
    `STALL_BYTES` per that many seconds (then resumes it). Raises DownloadError.
    """
    res = resolve(what, registry)
    r = root_dir(root)
    overrides = sha256_overrides(res, sha256)
    if not max_bytes > 0 or not stall_timeout > 0 or not timeout > 0 or retries < 0:
        raise DownloadError(f"max_bytes, stall_timeout and timeout must be positive, retries >= 0 (got {max_bytes}, "
                            f"{stall_timeout}, {timeout}, {retries})")
    opts = FetchOptions(allow_unverified=allow_unverified, force=force, timeout=timeout, retries=retries,
                        backoff=backoff, progress=progress, max_bytes=max_bytes, stall_timeout=stall_timeout)
    result = result_path(res, r, extract)
    if not res.is_archive:
        out_dir = resource_dir(res, r)
        if not force and _is_complete(res, out_dir, overrides=overrides):
            log.info("%s: already downloaded", result)
            return result
        records = _fetch_all(res, out_dir, overrides, opts)
        atomic_write_text(out_dir / MARKER, _marker_text(res, records))
        return result
    return _download_archives(res, r, overrides, opts, extract=extract, keep_archives=keep_archives)


def _refetch_hint(res: Resource, adir: Path) -> str:
    """What to do when downloaded archives do not extract: they are kept, and --force fetches them again."""
    return (f"The archives are kept in {adir}; if they are damaged or not what the registry means (an unverified "
            f"download is reused as is), download them again with `tinyclap download {res.kind} {res.name} "
            "--force`.")


def _fetch_all(res: Resource, folder: Path, overrides: Mapping[str, str], opts: FetchOptions) -> list[dict[str, Any]]:
    return [fetch_file(rf, folder / rf.name, overrides.get(rf.name), opts) for rf in res.files]


def _download_archives(res: Resource, r: Path, overrides: Mapping[str, str], opts: FetchOptions, *, extract: bool,
                       keep_archives: bool) -> Path:
    """Fetch a resource's archives and (unless `extract` is False) extract them into its folder."""
    out_dir, adir = resource_dir(res, r), archive_dir(res, r)
    result = result_path(res, r, extract)
    if not opts.force:
        if extract and _is_complete(res, out_dir, overrides=overrides):
            log.info("%s: already downloaded and extracted", result)
            return result
        if not extract and _is_complete(res, adir, archives=True, overrides=overrides):
            log.info("%s: archives already downloaded", result)
            return result
    if extract and out_dir.exists() and not opts.force and _read_marker(out_dir) is None:
        # checked before downloading gigabytes: never replace a folder someone else put there
        raise DownloadError(f"{out_dir} exists but was not made by `tinyclap download`; move it away or pass "
                            "--force to replace it")
    marker = _marker_text(res, _fetch_all(res, adir, overrides, opts))
    if not extract:
        atomic_write_text(adir / MARKER, marker)
        return result
    archives = [adir / rf.name for rf in res.files]
    try:
        safe_extract(archives, out_dir, replace=True, expect=res.expect, extra_files={MARKER: marker},
                     max_bytes=max(opts.max_bytes, MAX_EXTRACT_BYTES))
    except DownloadError as e:
        raise DownloadError(f"{e}. {_refetch_hint(res, adir)}") from None
    if not keep_archives:
        for rf in res.files:
            (adir / rf.name).unlink(missing_ok=True)
        (adir / MARKER).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            adir.rmdir()
    log.info("%s: ready", result)
    return result
