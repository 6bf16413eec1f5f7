"""Check the built book the way a reader sees it: every chapter page loads in headless Chromium, shows its figures
and carries no error output.  Screenshots of the index and every chapter land in <html>/../screenshots/.

    python scripts/check_book.py _build/html
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bs4 import BeautifulSoup

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ERROR_MARKERS = ("Traceback (most recent call last)", "Error", "Exception")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("check_book: no Chromium found; install it (Debian: `apt-get install chromium`) and run again")


def render(page: Path, screenshot: Path | None = None) -> str:
    """The DOM after Chromium has loaded the page and run its scripts; optionally a screenshot."""
    with tempfile.TemporaryDirectory() as profile:
        base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
        dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
        if screenshot is not None:
            subprocess.run([*base, f"--screenshot={screenshot}", "--window-size=1280,5200", page.as_uri()],
                           capture_output=True, timeout=120)
    return dom


def check_chapter(page: Path, shots: Path) -> list[str]:
    problems = []
    dom = render(page, shots / f"{page.stem}.png")
    soup = BeautifulSoup(dom, "html.parser")
    if not soup.find("h1"):
        problems.append("no title (h1): the page did not render")
    images = [img for img in soup.select("article img, main img") if "badge" not in (img.get("src") or "")]
    for img in images:
        src = img.get("src") or ""
        if not src.startswith("data:") and not (page.parent / src).exists():
            problems.append(f"figure {src} is missing")
    if not images:
        problems.append("no figures")
    for err in soup.select(".output.stderr, .output.error, .output .traceback, div.cell_output .ansi-red-fg"):
        text = err.get_text()
        if any(marker in text for marker in ERROR_MARKERS):
            problems.append(f"error output: {text.strip()[:200]}")
    return problems


def main(html_dir: str) -> int:
    html = Path(html_dir).resolve()
    shots = html.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    index = html / "index.html"
    if not index.exists():
        sys.exit(f"check_book: {index} does not exist; build the book first (make book)")
    render(index, shots / "index.png")
    chapters = sorted((html / "notebooks").glob("[0-9]*.html"))
    if not chapters:
        sys.exit(f"check_book: no chapter pages under {html / 'notebooks'}")
    failed = 0
    for page in chapters:
        problems = check_chapter(page, shots)
        failed += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {page.name}" + "".join(f"\n     - {p}" for p in problems))
    print(f"screenshots in {shots}")
    print(f"book: {len(chapters) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "_build/html"))
