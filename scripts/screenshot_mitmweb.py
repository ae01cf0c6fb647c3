#!/usr/bin/env python3
"""Screenshot of mitmweb with the ucsproxy addon after a Lync-like session (for the README).

Starts ``mitmweb -s addons/ucsproxy.py`` as a mock Exchange on 127.0.0.1 (with one fault rule,
so an injected error shows among the successes), plays ``scripts/ucs_session.py`` through it,
opens the injected AddImGroup error's response in mitmweb with headless Chromium (Debian's
``chromium`` package) and writes a PNG:

    .venv/bin/python scripts/screenshot_mitmweb.py [--out docs/mitmweb-ucs.png]

Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
COLUMNS = ("icon", "path", "method", "status", "comment", "size", "time")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"screenshot_mitmweb: timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "mitmweb-ucs.png"), help="PNG to write")
    parser.add_argument("--size", default="1500,860", help="browser window WIDTH,HEIGHT")
    args = parser.parse_args()

    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print("screenshot_mitmweb: no Chromium found; on Debian: apt-get install chromium", file=sys.stderr)
        return 2
    mitmweb = BIN / "mitmweb"
    if not mitmweb.exists():
        print(f"screenshot_mitmweb: {mitmweb} is missing; install the project first: pip install -e '.[test]'",
              file=sys.stderr)
        return 2

    from mitmproxy.version import VERSION

    proxy_port, web_port = free_port(), free_port()
    token = secrets.token_hex(8)
    auth = ["--set", f"web_password={token}"] if int(VERSION.split(".")[0]) >= 12 else []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(mitmweb), "-q", "-s", str(ROOT / "addons" / "ucsproxy.py"),
               "--mode", "reverse:http://127.0.0.1:9", "--set", "connection_strategy=lazy",
               "--listen-host", "127.0.0.1", "--listen-port", str(proxy_port),
               "--web-host", "127.0.0.1", "--web-port", str(web_port), "--set", "web_open_browser=false",
               *[a for c in COLUMNS for a in ("--set", f"web_columns={c}")], *auth,
               "--set", "ucs_mode=mock", "--set", "ucs_db=", "--set", "ucs_seed=2013",
               "--set", "ucs_fault=AddImGroup:ews-error:code=ErrorImGroupLimitReached,nth=2"]
        web = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{web_port}"
            query = f"?token={token}" if auth else ""
            wait_until(lambda: socket.create_connection(("127.0.0.1", proxy_port), 0.5).close() or True, 60,
                       "mitmweb's proxy port")
            wait_until(lambda: urllib.request.urlopen(base + "/" + query, timeout=2).status == 200, 60,
                       "mitmweb's web port")
            subprocess.run([sys.executable, str(ROOT / "scripts" / "ucs_session.py"),
                            "--url", f"http://127.0.0.1:{proxy_port}/EWS/Exchange.asmx",
                            "--user", "kim.akers@contoso.com"], check=False, stdout=subprocess.DEVNULL, timeout=120)

            def flows():
                request = urllib.request.Request(base + "/flows" + query)
                with urllib.request.urlopen(request, timeout=5) as answer:
                    return json.load(answer)

            listed = wait_until(lambda: [f for f in flows() if "[injected" in (f.get("comment") or "")], 30, "the injected fault")
            target = listed[0]["id"]
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            url = f"{base}/{query}#/flows/{target}/response"
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--window-size={args.size}", "--virtual-time-budget=8000",
                            f"--screenshot={out.resolve()}", url],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        finally:
            web.terminate()
            try:
                web.wait(15)
            except subprocess.TimeoutExpired:
                web.kill()
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
