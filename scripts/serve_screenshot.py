"""Take the README's screenshot of `tinyclap serve` (docs/serve.png) with a trained export.

Starts `tinyclap serve --model EXPORT --index INDEX` on a free loopback port, uploads CLIP in Debian's
chromium (through Playwright, as tests/test_serve_browser.py does), types LABELS, classifies, runs a text
search for QUERY and saves a full-page PNG. How docs/serve.png was made (a student distilled on
UrbanSound8K folds 1-2, its held-out fold 3 indexed; DATA is the shared recordings folder):

    tinyclap export --model RUN --labels "air_conditioner,...,street_music" --text --out /tmp/export
    tinyclap embed "us8k:$DATA/UrbanSound8K#folds=3" --model /tmp/export --out /tmp/index
    python scripts/serve_screenshot.py --export /tmp/export --index /tmp/index --teacher TEACHER \\
        --clip $DATA/UrbanSound8K/audio/fold3/12647-3-0-0.ogg --out docs/serve.png
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"tinyclap serve did not start at {url}")


def _shoot(url: str, args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
        page.goto(url + "/")
        page.wait_for_selector("#facts dd")
        page.set_input_files("#file", str(args.clip))
        page.fill("#labels", args.labels)
        page.click("#classify")
        page.wait_for_selector("#bars li.bar", timeout=60_000)
        print(" | ".join(t.replace("\n", " ") for t in page.locator("#bars li.bar").all_inner_texts()))
        if args.query:
            page.fill("#query", args.query)
            page.click("#search")
            try:
                page.wait_for_selector("#hits li.hit", timeout=120_000)
            except Exception:
                page.screenshot(path="/tmp/l-readme/fail.png", full_page=True)
                raise SystemExit(f"no search hits: {page.inner_text('#search-card')}") from None
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True, help="export folder (made with --text for free labels)")
    ap.add_argument("--index", type=Path, help="index folder for the search panel")
    ap.add_argument("--teacher", type=Path, help="teacher for text search of the index (when its model records none)")
    ap.add_argument("--clip", type=Path, required=True, help="the audio file uploaded")
    ap.add_argument("--labels", default="dog barking, children playing, street music, siren, car horn")
    ap.add_argument("--query", default="dog barking", help="text search shown (needs --index; empty: none)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    args = ap.parse_args()
    url = f"http://127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "tinyclap.cli", "serve", "--model", str(args.export), "--port", url.rsplit(":", 1)[1],
           "--log-level", "warning"] + (["--index", str(args.index)] if args.index else [])
    cmd += ["--teacher", str(args.teacher)] if args.teacher else []
    proc = subprocess.Popen(cmd)
    try:
        _wait_healthy(url, proc)
        _shoot(url, args if args.index else argparse.Namespace(**{**vars(args), "query": ""}))
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{args.out}: {args.out.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
