"""`tinyclap serve` live: a real server process on a free loopback port, driven by headless Chromium
(Debian's package, through Playwright for Python; never a downloaded browser), plus what only a real
server shows: an oversize body refused while it streams, and a graceful SIGTERM.

The page test uploads a real clip, types labels, waits for the ranked bars, checks the top label and the
search panel (a small index of ../shared/data/animals-cc0), and keeps a screenshot in runs/serve/ (the
README's docs/serve.png, with a trained model, is taken by scripts/serve_screenshot.py). Missing Chromium
or Playwright FAILS the test: `scripts/setup.sh --test` installs both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("TINYCLAP_CHROMIUM", "/usr/bin/chromium"))
NAME = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"
LABELS = "dog barking, cat meowing, rooster crowing"
SHOTS = ROOT / "runs" / "serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def models(work: Path, animals_dir: Path) -> dict[str, Path]:
    """The tiny random teacher (64-d, BERT vocabulary: the bundled tokenizer works), a 64-d random student
    with BatchNorm fitted to the animal clips (so clips differ), and an index of those clips."""
    import torch
    from helpers import calibrated_models

    from tinyclap.audio import CLIP_SAMPLES, fit_clip, load_audio
    from tinyclap.cli import main
    from tinyclap.models import save_student
    from tinyclap.models.teacher import bundled_tokenizer_dir

    clips = sorted(animals_dir.glob("*.mp3"))
    waves = torch.from_numpy(__import__("numpy").stack([fit_clip(load_audio(c), CLIP_SAMPLES) for c in clips]))
    _, student, _ = calibrated_models(waves, NAME, work / "teacher")
    save_student(student, work / "student")
    assert main(["embed", str(animals_dir), "--model", str(work / "student.safetensors"), "--out",
                 str(work / "index"), "--no-progress", "--workers", "0"]) == 0
    return {"student": work / "student.safetensors", "teacher": work / "teacher.safetensors",
            "tokenizer": bundled_tokenizer_dir(), "index": work / "index"}


@pytest.fixture(scope="module")
def server(models: dict[str, Path], work: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    tmp = work / "server-tmp"
    tmp.mkdir()
    cmd = [sys.executable, "-m", "tinyclap.cli", "serve", "--model", str(models["student"]), "--teacher",
           str(models["teacher"]), "--tokenizer", str(models["tokenizer"]), "--index", str(models["index"]),
           "--port", str(port), "--max-upload-mb", "2", "--log-level", "warning"]
    log = open(work / "server.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(tmp)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if get_json(url + "/healthz", 2)["status"] == "ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"tinyclap serve did not start:\n{log.read()}")
        time.sleep(0.3)
    yield {"url": url, "port": port, "proc": proc, "tmp": tmp, "log": log}
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} missing: install Debian's chromium (scripts/setup.sh --test does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright missing: pip install playwright (scripts/setup.sh --test does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_page_classifies_and_searches(server: dict[str, Any], browser: Any, animals_dir: Path) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # (a media element may cancel its own blob: preview reads; those are not errors)
    page.on("requestfailed", lambda r: None if r.url.startswith("blob:") else errors.append(f"failed: {r.url}"))
    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server["url"]) or r.url.startswith(("data:", "blob:"))
            else external.append(r.url))
    page.goto(server["url"] + "/")
    page.wait_for_selector("#facts dd")
    assert NAME in page.inner_text("#facts")
    assert "median of 10 warm runs" in page.inner_text("#facts").lower()  # a warm median, labelled (issue 21, item 9)
    page.set_input_files("#file", str(animals_dir / "dog.mp3"))
    page.fill("#labels", LABELS)
    page.click("#classify")
    page.wait_for_selector("#bars li.bar", timeout=60_000)
    labels = [s.strip() for s in LABELS.split(",")]
    names = page.locator("#bars .name").all_inner_texts()
    assert sorted(names) == sorted(labels) and names[0] in labels
    assert page.is_visible("#search-card")
    page.fill("#query", "dog barking")
    page.click("#search")
    page.wait_for_selector("#hits li.hit", timeout=60_000)
    hits = page.locator("#hits .name").all_inner_texts()
    assert hits and all(h.endswith(".mp3") for h in hits)
    page.click("#like")
    expect(page.locator("#search-meta")).to_contain_text("dog.mp3", timeout=60_000)  # no eval: the CSP forbids it
    assert "dog.mp3" not in page.locator("#hits .name").all_inner_texts()  # the query itself is left out
    with page.expect_response(lambda r: "/api/audio/" in r.url, timeout=20_000) as played:
        page.locator("#hits li.hit button").first.click()
    assert played.value.status in (200, 206) and played.value.headers["content-type"] == "audio/mpeg"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "serve.png"), full_page=True)
    assert not errors, errors
    assert not external, external  # every asset came from the server
    page.close()


def test_long_clip_timeline_in_browser(server: dict[str, Any], browser: Any, work: Path) -> None:
    from helpers import chirp, write_wav

    path = write_wav(work / "long.wav", chirp(14.0, 22050), 22050)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(server["url"] + "/")
    page.wait_for_selector("#facts dd")
    page.set_input_files("#file", str(path))
    page.fill("#labels", "siren, engine")
    page.click("#classify")
    page.wait_for_selector("#timeline-box:not([hidden])", timeout=60_000)
    assert page.locator("#legend li").count() == 2
    page.screenshot(path=str(SHOTS / "serve-timeline.png"), full_page=True)
    page.close()


def test_oversize_stream_refused_early(server: dict[str, Any]) -> None:
    """A body whose Content-Length hides nothing but which grows past the 2 MB limit: 413 arrives while the
    client is still sending, and the server keeps serving."""
    total = 20 * (1 << 20)
    head = (b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    part = b'--b\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\nRIFF\x00\x00\x00\x00WAVE'
    sent = 0
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as s:
        s.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        chunk = bytes(64 * 1024)
        s.settimeout(0.05)
        reply = b""
        try:
            while sent < total:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                try:
                    reply += s.recv(65536)
                    if reply:
                        break
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(10)
        try:
            while b"\r\n\r\n" not in reply:
                data = s.recv(65536)
                if not data:
                    break
                reply += data
        except OSError:
            pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < total / 2, sent
    assert get_json(server["url"] + "/healthz")["status"] == "ok"


def test_sigterm_is_graceful(server: dict[str, Any]) -> None:
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert list(server["tmp"].glob("tinyclap-serve-*")) == []  # the private upload folder is gone
    server["log"].seek(0)
    assert "Traceback" not in server["log"].read()
