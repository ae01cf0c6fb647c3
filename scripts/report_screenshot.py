#!/usr/bin/env python3
"""Render the HTML chaos report of a recording and screenshot it with headless Chromium.

    .venv/bin/python scripts/report_screenshot.py [--source recordings/chaos-clients]
        [--html /tmp/chaos-report.html] [--png docs/chaos-report.png]

Needs the report extra (pip install -e '.[report]') and Debian's chromium
(apt-get install chromium); says so and exits 2 when either is missing.
The PNG is reduced to a 256-colour palette so it stays small enough to commit.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ucsproxy.report import MissingExtra, load_rows, write_html  # noqa: E402
from ucsproxy.verdicts import judge  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(ROOT / "recordings" / "chaos-clients"))
    ap.add_argument("--html", type=Path, default=None, help="where to write the page (default: a temporary file)")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "chaos-report.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1560)
    args = ap.parse_args()

    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        sys.exit("headless Chromium not found: install it (Debian: apt-get install chromium) and run again")
    html = args.html or Path(tempfile.mkdtemp(prefix="ucs-report-")) / "report.html"
    rows = load_rows(args.source)
    try:
        write_html(html, rows, judge(rows), title=Path(args.source).name)
    except MissingExtra as e:
        sys.exit(str(e))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ucs-chromium-") as profile:
        done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}",
                               f"--screenshot={args.png}", html.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not args.png.exists():
        sys.exit(f"{browser} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    try:
        from PIL import Image  # comes with matplotlib
    except ImportError:
        pass
    else:
        with Image.open(args.png) as image:
            small = image.convert("RGB").quantize(colors=256)
        small.save(args.png, optimize=True)
    print(f"wrote {html} and {args.png} ({args.png.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
