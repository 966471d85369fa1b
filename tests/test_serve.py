"""`tinyclap serve`'s JSON API through FastAPI's TestClient: good and long clips, the bad-audio corpus,
limits (size, duration, labels, queue), path traversal on the audio-by-id route, private temp folders.
The live server, the real browser and SIGTERM are in tests/test_serve_browser.py."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient  # the serve extra: scripts/setup.sh installs it (never skipped)
from helpers import small_export, tone, write_wav

from tinyclap.serve.app import create_app
from tinyclap.serve.engine import Engine
from tinyclap.serve.limits import MB, ServeConfig
from tinyclap.serve.uploads import sniff_audio

NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
LABELS = ["dog", "rain", "siren", "engine"]
DIM = 64
# corpus cases about the file system, not the bytes: an upload is bytes, so they do not apply
FILESYSTEM_ERRORS = {"file not found", "broken symbolic link", "is a directory", "permission denied"}
CFG = ServeConfig(max_upload_bytes=4 * MB, max_seconds=60.0, workers=2, queue=2)


@pytest.fixture(scope="module")
def export_dir(work: Path, us8k_root: Path) -> Path:
    """A random student (64-d) exported with 4 fixed classes (fp32 only: fast)."""
    return small_export(work / "export", us8k_root, NAME, LABELS, DIM)


@pytest.fixture(scope="module")
def engine(export_dir: Path) -> Engine:
    from tinyclap.classifier import Classifier

    eng = Engine(Classifier.from_export(export_dir), CFG)
    eng.measure_latency(runs=1)
    return eng


@pytest.fixture(scope="module")
def client(engine: Engine, work: Path) -> Any:
    (work / "tmp").mkdir(exist_ok=True)
    with TestClient(create_app(engine, CFG, temp_root=work / "tmp"), base_url="http://127.0.0.1") as c:
        yield c


def post(client: Any, data: bytes, name: str = "clip.wav", **fields: str) -> Any:
    return client.post("/api/classify", files={"audio": (name, data, "application/octet-stream")}, data=fields)


def wav_bytes(wave: np.ndarray, rate: int = 44100) -> bytes:
    buf = io.BytesIO()
    import soundfile as sf

    sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def assert_json_error(r: Any, status: int, phrase: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text
    assert phrase.lower() in body["error"].lower(), body["error"]


def test_page_info_and_health(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text  # every asset from this server
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    info = client.get("/api/info").json()
    assert info["labels"] == LABELS and info["free_text_labels"] is False and info["search"] is False
    assert info["latency_ms"] > 0 and info["sample_rate"] == 44100
    assert client.get("/healthz").json()["status"] == "ok"
    assert_json_error(client.get("/nope"), 404, "not found")
    assert_json_error(client.get("/api/classify"), 405)


def test_classify_real_clip(client: Any, us8k_root: Path) -> None:
    clip = sorted((us8k_root / "audio" / "fold1").glob("*.ogg"))[0]
    r = post(client, clip.read_bytes(), clip.name)
    assert r.status_code == 200, r.text
    (body,) = r.json()["results"]
    got = [x["label"] for x in body["labels"]]
    assert sorted(got) == sorted(LABELS) and "timeline" not in body and body["format"] == "Ogg"
    probs = [x["probability"] for x in body["labels"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-3
    assert body["file"] == clip.name  # the client's name for its upload, never a server-side path
    assert post(client, clip.read_bytes(), "x.bin", top="2").json()["results"][0]["labels"] == body["labels"][:2]


def test_long_clip_gets_timeline(client: Any) -> None:
    r = post(client, wav_bytes(tone(12.0, 22050), 22050))
    assert r.status_code == 200, r.text
    tl = r.json()["results"][0]["timeline"]
    assert tl["labels"] == LABELS and tl["window"] == 5.0 and tl["hop"] == 1.0
    assert len(tl["rows"]) == 8  # starts 0..7 s: the windows that fit in 12 s
    assert all(len(row["probabilities"]) == len(row["cosines"]) == 4 for row in tl["rows"])
    assert [row["start"] for row in tl["rows"]] == [float(s) for s in range(8)]


def test_refusals_are_json(client: Any) -> None:
    assert_json_error(client.post("/api/classify", content=b"x", headers={"content-type": "audio/wav"}), 415,
                      "multipart")
    assert_json_error(client.post("/api/classify", data={"labels": "a"}, files={"x": ("a", b"b")}), 400,
                      "'audio' or 'file'")
    assert_json_error(post(client, b"this is not audio\n" * 50, "text.wav"), 415, "not a recognised audio")
    assert_json_error(post(client, b"\x00\x00\x00\x20ftypM4A " + bytes(64), "a.m4a"), 415, "MP4/M4A")
    assert_json_error(post(client, b""), 400, "0 bytes")
    assert_json_error(post(client, wav_bytes(tone(0.5)), labels="cat, dog"), 400, "fixed classes")
    assert_json_error(post(client, wav_bytes(tone(0.5)), top="0"), 400, "top")
    assert_json_error(post(client, wav_bytes(np.zeros(61 * 8000, np.float32), 8000), rate="x"), 413, "too long")


def test_oversize_refused_before_reading(client: Any) -> None:
    """A declared body over the limit is refused from its headers; the streaming case (no or a lying
    Content-Length) is checked against the live server in tests/test_serve_browser.py."""
    body = b"--b\r\n" + b"x" * 100
    r = client.post("/api/classify", content=body, headers={
        "content-type": "multipart/form-data; boundary=b", "content-length": str(CFG.max_upload_bytes + 1)})
    assert_json_error(r, 413, "too large")
    big = wav_bytes(np.zeros(CFG.max_upload_bytes // 2 + 1000, np.float32))  # 16-bit: just over the limit
    assert_json_error(post(client, big), 413, "too large")
    assert client.get("/healthz").status_code == 200


def test_bad_audio_corpus(client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every regular file of tests/test_bad_audio.py's corpus, uploaded: a 4xx JSON error for each refused
    case, 200 (or 413 when over the size/duration limits) for each defined handling; the server keeps
    serving. The file-system cases (FIFO, device, directory, missing, symlink, permissions) are not bytes."""
    from test_bad_audio import CASES

    seen = 0
    for case in CASES:
        folder = tmp_path / case.id
        folder.mkdir()
        with monkeypatch.context() as mp:
            path, _ = case.build(folder, mp)
        if os.path.islink(path) or not os.path.isfile(path) or case.error in FILESYSTEM_ERRORS:
            continue
        seen += 1
        with open(path, "rb") as f:
            data = f.read(CFG.max_upload_bytes + 1)
        r = post(client, data, os.fsdecode(os.path.basename(path)).encode("utf-8", "replace").decode())
        assert "Traceback" not in r.text, case.id
        if case.error:
            assert 400 <= r.status_code < 500 and r.json()["error"], (case.id, r.text)
        else:
            assert r.status_code in (200, 413), (case.id, r.text)
            if r.status_code == 200:
                assert len(r.json()["results"][0]["labels"]) == 4, case.id
        assert client.get("/healthz").status_code == 200
    assert seen >= 40


def test_audio_by_id_never_reads_a_path(client: Any) -> None:
    for url in ("/api/audio/0", "/api/audio/../../etc/passwd", "/api/audio/..%2f..%2fetc%2fpasswd",
                "/api/audio/%2fetc%2fpasswd", "/api/audio/-1", "/api/audio/1e3", "/api/audio/0x10",
                "/api/audio/99999999999999999999", "/api/audio/%00", "/api/audio/ 1"):
        r = client.get(url)
        assert r.status_code in (404, 405), (url, r.text)
        assert r.json()["error"] and "root:" not in r.text, url


def test_uploads_leave_no_files(client: Any) -> None:
    root = client.app.state.upload_root
    assert root.is_dir() and oct(root.stat().st_mode & 0o777) == "0o700"
    post(client, wav_bytes(tone(1.0)))
    post(client, b"junk")
    assert list(root.iterdir()) == []


def test_queue_limit_gives_503(engine: Engine, work: Path) -> None:
    cfg = ServeConfig(max_upload_bytes=4 * MB, workers=1, queue=1)
    gate = threading.Event()
    slow = Engine(engine.clf, cfg)
    real = slow.classify
    slow.classify = lambda *a: (gate.wait(30), real(*a))[1]  # type: ignore[method-assign]
    data = wav_bytes(tone(1.0))
    with TestClient(create_app(slow, cfg, temp_root=work / "tmp"), base_url="http://localhost:8000") as c:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(post(c, data).status_code)) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while c.app.state.pool.admitted < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.app.state.pool.admitted == 2
        assert_json_error(post(c, data), 503, "busy")
        assert c.get("/healthz").json()["rejected"] == 1
        gate.set()
        for t in threads:
            t.join(30)
        assert results == [200, 200]
        assert post(c, data).status_code == 200  # capacity is back


def test_sniffing_ignores_names() -> None:
    assert sniff_audio(wav_bytes(tone(0.1))[:12]) == "WAV"
    assert sniff_audio(b"ID3\x04" + bytes(8)) == "MP3"
    assert sniff_audio(b"fLaC\x00\x00\x00\x22") == "FLAC"
    with pytest.raises(Exception, match="WebM"):
        sniff_audio(b"\x1a\x45\xdf\xa3" + bytes(8))


def test_write_wav_helper_roundtrip(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", tone(0.2))
    assert sniff_audio(Path(path).read_bytes()[:12]) == "WAV"


def test_loopback_default_and_warning() -> None:
    from tinyclap.cli import build_parser
    from tinyclap.serve.server import host_warning

    args = build_parser().parse_args(["serve", "--export-dir", "x"])
    assert args.host == "127.0.0.1" and host_warning(args.host) is None
    assert host_warning("::1") is None and host_warning("localhost") is None
    assert "anyone who can reach" in host_warning("0.0.0.0")
