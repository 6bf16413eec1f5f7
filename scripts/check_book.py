"""Check the built book the way a reader sees it: every page opened in headless Chromium (through Selenium and
Debian's chromium-driver) with the network cut off, as in the offline build CI makes.

On every page:
  - math: MathJax loaded and typeset every formula, no raw ``\\(``, ``\\[`` or ``$$`` is left in the visible text
    (code blocks aside) and no formula shows a TeX error;
  - images: every ``img`` loaded (``naturalWidth > 0``);
  - code: no code block (cell input or output) scrolls horizontally at the default window width;
  - links: every internal link points at a file that exists, and its ``#anchor`` at an id on that page;
  - errors: no error output in a cell, nothing the browser logs as an error (a failed load, a script error).
Full-page screenshots of every page land in ``<html>/../screenshots/``.

    python scripts/check_book.py _build/html

Prints one line per page (``ok`` or ``FAIL`` with its problems) and ends with ``book: N passed, M failed``; the exit
status is 1 if any page failed.
"""

from __future__ import annotations

import base64
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bs4 import BeautifulSoup

WINDOW = (1280, 900)  # the default width a reader's laptop browser has; code must fit the content column at it
ERROR_MARKERS = ("Traceback (most recent call last)", "Error", "Exception")
SKIPPED_PAGES = {"search.html", "genindex.html"}  # Sphinx's own pages: no content of ours
# Browser messages that are not a reader's problem.  jupyter-book 1.0.4 registers sphinx-thebe twice, so every page
# declares THEBE_JS_URL twice and the second declaration throws; nothing on the page uses it (there is no live-code
# button), and the library script it names is only fetched when such a button is pressed.
IGNORED_CONSOLE = ("favicon.ico", "Identifier 'THEBE_JS_URL' has already been declared")

# Text a reader sees outside code, formulas and scripts: where raw TeX would show if MathJax had not run.
VISIBLE_TEXT_JS = """
const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'MJX-CONTAINER', 'NOSCRIPT', 'TEXTAREA']);
const top = document.querySelector('main') || document.body || document.documentElement;
const walker = document.createTreeWalker(top, NodeFilter.SHOW_TEXT, {
  acceptNode(node) {
    for (let el = node.parentElement; el; el = el.parentElement) {
      if (skip.has(el.tagName)) return NodeFilter.FILTER_REJECT;
    }
    return NodeFilter.FILTER_ACCEPT;
  }
});
const parts = [];
while (walker.nextNode()) parts.push(walker.currentNode.nodeValue);
return parts.join(' ');
"""

# Wait (async) for MathJax to finish, and for every image to load or fail.
SETTLE_JS = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images).map(img => {
  img.loading = 'eager';
  return img.complete ? Promise.resolve() :
    new Promise(resolve => { img.addEventListener('load', resolve); img.addEventListener('error', resolve); });
});
const hasMath = document.querySelector('.math') !== null;
const mathjax = (window.MathJax && MathJax.startup && MathJax.startup.promise) ?
  MathJax.startup.promise.then(() => 'typeset', err => 'failed: ' + err) :
  Promise.resolve(hasMath ? 'not loaded' : 'none');
Promise.all([mathjax, ...images]).then(results => done({mathjax: results[0], hasMath: hasMath}));
"""

IMAGES_JS = """
return Array.from(document.images).filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => img.getAttribute('src'));
"""

OVERFLOWING_CODE_JS = """
return Array.from(document.querySelectorAll('main pre')).filter(pre => pre.scrollWidth > pre.clientWidth + 1)
  .map(pre => ({
    kind: pre.closest('.cell_output, .output') ? 'output' : 'code',
    line: (pre.textContent.split('\\n').find(l => l.trim()) || '').trim().slice(0, 90),
    over: pre.scrollWidth - pre.clientWidth,
    longest: Math.max(...pre.textContent.split('\\n').map(l => l.length)),
  }));
"""


# Display formulas wider than the content column: MathJax lets them overflow, and the theme clips them.
WIDE_FORMULAS_JS = """
return Array.from(document.querySelectorAll('main mjx-container[display="true"]'))
  .filter(m => m.scrollWidth > m.clientWidth + 1 || m.getBoundingClientRect().right >
               (m.closest('article, main') || document.body).getBoundingClientRect().right + 1)
  .map(m => (m.getAttribute('aria-label') || m.textContent || '').slice(0, 80));
"""


def chromium_and_driver() -> tuple[str, str]:
    browser = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        sys.exit("check_book: needs Chromium and its driver; install them (Debian: "
                 "`apt-get install chromium chromium-driver`) and run again")
    return browser, driver


def start_browser():
    """Headless Chromium at the default window size, with every host name unresolvable (the network is off)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        sys.exit("check_book: needs selenium in the venv (`pip install selenium`, it is in requirements.txt)")
    browser, driver = chromium_and_driver()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 "--host-resolver-rules=MAP * ~NOTFOUND"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_script_timeout(60)
    chrome.set_page_load_timeout(120)
    return chrome


def full_page_screenshot(chrome, path: Path) -> None:
    """The whole page, top to bottom, at the window's width (Chrome DevTools' captureBeyondViewport)."""
    size = chrome.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": WINDOW[0], "height": min(int(size["height"]), 60_000), "scale": 1}
    shot = chrome.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True, "clip": clip})
    path.write_bytes(base64.b64decode(shot["data"]))


class Anchors:
    """The ids of every built page, read once (for ``page.html#anchor`` links)."""

    def __init__(self) -> None:
        self._ids: dict[Path, set[str]] = {}

    def of(self, page: Path) -> set[str]:
        if page not in self._ids:
            soup = BeautifulSoup(page.read_text(errors="replace"), "html.parser")
            self._ids[page] = {el["id"] for el in soup.select("[id]")} | {el["name"] for el in soup.select("a[name]")}
        return self._ids[page]


def broken_links(page: Path, html: Path, soup: BeautifulSoup, anchors: Anchors) -> list[str]:
    problems = []
    for a in soup.select("a[href]"):
        href = a["href"]
        parts = urlsplit(href)
        if parts.scheme or href.startswith("//"):
            continue  # external (http, mailto, ...): not part of the offline book
        target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"link to a missing file: {href}")
        elif html not in target.parents and target != html:
            problems.append(f"link leaves the book: {href}")
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in anchors.of(target):
            problems.append(f"link to a missing anchor: {href}")
    return problems


def error_outputs(soup: BeautifulSoup) -> list[str]:
    problems = []
    for err in soup.select(".output.stderr, .output.error, .output .traceback, div.cell_output .ansi-red-fg"):
        text = err.get_text()
        if any(marker in text for marker in ERROR_MARKERS):
            problems.append(f"error output: {text.strip()[:200]}")
    return problems


def redirect_target(page: Path) -> str | None:
    """Where a redirect page (``<meta http-equiv="Refresh" content="0; url=...">``, e.g. the root index) points."""
    soup = BeautifulSoup(page.read_text(errors="replace"), "html.parser")
    meta = soup.find("meta", attrs={"http-equiv": lambda v: v and v.lower() == "refresh"})
    if meta is None or "url=" not in meta.get("content", "").lower():
        return None
    return meta["content"].split("=", 1)[1].strip()


def check_page(chrome, page: Path, html: Path, shots: Path, anchors: Anchors) -> list[str]:
    if (target := redirect_target(page)) is not None:
        return [] if (page.parent / urlsplit(target).path).exists() else [f"redirects to a missing page: {target}"]
    chrome.get_log("browser")  # drop what earlier pages logged
    chrome.get(page.as_uri())
    settled = chrome.execute_async_script(SETTLE_JS)
    problems = []

    if settled["hasMath"] and settled["mathjax"] != "typeset":
        problems.append(f"MathJax {settled['mathjax']}: the formulas show as raw TeX")
    text = chrome.execute_script(VISIBLE_TEXT_JS)
    for raw in ("\\(", "\\[", "$$"):
        if raw in text:
            at = text.index(raw)
            problems.append(f"raw TeX {raw!r} in the text: …{' '.join(text[max(0, at - 40):at + 60].split())}…")
    n_errors = chrome.execute_script("return document.querySelectorAll('mjx-merror, .MathJax_Error').length")
    if n_errors:
        problems.append(f"{n_errors} formula(s) with a TeX error")

    for formula in chrome.execute_script(WIDE_FORMULAS_JS):
        problems.append(f"display formula wider than the column: {formula}")
    for src in chrome.execute_script(IMAGES_JS):
        problems.append(f"image did not load: {src}")
    for block in chrome.execute_script(OVERFLOWING_CODE_JS):
        problems.append(f"{block['kind']} block scrolls sideways ({block['over']} px too wide, longest line "
                        f"{block['longest']} characters): {block['line']}")

    soup = BeautifulSoup(chrome.page_source, "html.parser")
    problems += broken_links(page, html, soup, anchors)
    problems += error_outputs(soup)
    if not soup.find("h1"):
        problems.append("no title (h1): the page did not render")
    if page.parent.name == "notebooks" and not [img for img in soup.select("main img")
                                                if "badge" not in (img.get("src") or "")]:
        problems.append("no figures: a chapter page shows none")
    for entry in chrome.get_log("browser"):
        if entry["level"] == "SEVERE" and not any(s in entry["message"] for s in IGNORED_CONSOLE):
            problems.append(f"browser error: {entry['message'][:200]}")

    shot_name = page.relative_to(html).with_suffix(".png").as_posix().replace("/", "__")
    full_page_screenshot(chrome, shots / shot_name)
    return problems


def pages_of(html: Path) -> list[Path]:
    skip = {"_static", "_sources", "_images", "_sphinx_design_static"}
    return sorted(p for p in html.rglob("*.html")
                  if not skip & set(p.relative_to(html).parts) and p.name not in SKIPPED_PAGES)


def main(html_dir: str) -> int:
    html = Path(html_dir).resolve()
    if not (html / "index.html").exists():
        sys.exit(f"check_book: {html / 'index.html'} does not exist; build the book first (make book)")
    if not list((html / "notebooks").glob("[0-9]*.html")):
        sys.exit(f"check_book: no chapter pages under {html / 'notebooks'}")
    shots = html.parent / "screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir()
    pages, anchors, failed = pages_of(html), Anchors(), 0
    chrome = start_browser()
    try:
        for page in pages:
            problems = check_page(chrome, page, html, shots, anchors)
            failed += bool(problems)
            name = page.relative_to(html).as_posix()
            print(f"{'FAIL' if problems else 'ok  '} {name}" + "".join(f"\n     - {p}" for p in problems), flush=True)
    finally:
        chrome.quit()
    print(f"screenshots in {shots}")
    print(f"book: {len(pages) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "_build/html"))
