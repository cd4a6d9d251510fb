"""The built book, as a reader's browser shows it.

Opens every page of the table of contents from ``_build/html`` in headless Chromium, served by
a web server on localhost (as the book is hosted, and free of file:// quirks), and checks that

- the mathematics is typeset: MathJax ran on every page whose source has math, every math
  element holds its rendering, no TeX error is shown, and no raw ``$$``, ``\\(`` or ``\\[`` is
  left in the visible text;
- every image loaded;
- every internal link leads to a page that exists and every ``#anchor`` to an id in it;
- the page logs no JavaScript error and asks nothing of any host but localhost: the book must
  work offline, so requests elsewhere are blocked and reported;

and saves a full-page screenshot of each page under ``_build/screenshots/`` to look at.
Chapters are also checked in dark mode (figures keep a light card), for their launch and
download buttons, and for a link to the notation page.

The test reads the HTML that the strict build of ``make test`` has just written; it does not
build the book itself (that would double the time of ``make test``). Run ``make strict-build``
(or ``make book``) first when running this file alone.

Chromium is Debian's ``/usr/bin/chromium`` (``.ci/run`` installs it), driven by Playwright's
Python package with that executable; no browser is downloaded. Without Chromium these tests
are skipped, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import threading
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
HTML_DIR = ROOT / "_build" / "html"
SCREENSHOT_DIR = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
VIEWPORT = {"width": 1280, "height": 900}
PAGE_TIMEOUT_MS = 30_000
ON_CI = os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}


# --- the pages of the book, from its table of contents --------------------------------------


def toc_docnames(toc_path: pathlib.Path = ROOT / "_toc.yml") -> list[str]:
    """Every document of _toc.yml (root, parts, chapters, sections), in reading order."""
    toc = yaml.safe_load(toc_path.read_text())
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    return names


def source_of(docname: str) -> pathlib.Path:
    for suffix in (".md", ".ipynb"):
        path = ROOT / (docname + suffix)
        if path.exists():
            return path
    raise FileNotFoundError(f"_toc.yml names {docname!r}, which has no .md or .ipynb source")


CODE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]+`")
MATH = re.compile(r"\$\$|\$[^$\s][^$\n]*\$|\{math\}|\\begin\{(equation|align|gather)")


def source_has_math(path: pathlib.Path) -> bool:
    """Whether the prose of a page (markdown, or a notebook's markdown cells) has math."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text()
    for pattern in (CODE, INLINE_CODE):
        text = pattern.sub("", text)
    return MATH.search(text) is not None


DOCNAMES = toc_docnames()
CHAPTERS = [name for name in DOCNAMES if source_of(name).suffix == ".ipynb"]


def html_path(docname: str) -> pathlib.Path:
    return HTML_DIR / (docname + ".html")


# --- ids in the built HTML, for #anchors ------------------------------------------------------


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (key == "name" and tag == "a"):
                self.ids.add(value)


@functools.cache
def ids_in(path: pathlib.Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8"))
    return frozenset(parser.ids)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [value for key, value in attrs if key == "href" and value]


def hrefs_in(path: pathlib.Path) -> list[str]:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.hrefs


# --- fixtures: the built book, a local web server, the browser --------------------------------


@pytest.fixture(scope="module")
def built_book() -> pathlib.Path:
    if not (HTML_DIR / "index.html").exists():
        pytest.fail(
            f"{HTML_DIR / 'index.html'} is missing: build the book first with "
            "`make strict-build` (or `make book`); `make test` does this before pytest"
        )
    return HTML_DIR


@pytest.fixture(scope="module")
def server(built_book):
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    if not pathlib.Path(CHROMIUM).exists():
        message = (
            f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package "
            "(`.ci/run` does) or set CHROMIUM to its path"
        )
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        # Playwright gives every launch a fresh, temporary user-data directory.
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


# --- visiting a page ------------------------------------------------------------------------

WAIT_FOR_MATHJAX = """async () => {
  if (!document.querySelector('script[src*="mathjax"]')) return false;
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await MathJax.startup.promise;
  return true;
}"""

MATH_REPORT = """() => {
  const hidden = 'PRE, CODE, SCRIPT, STYLE, TEXTAREA, KBD, MJX-CONTAINER';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const raw = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest(hidden)) continue;
    const text = node.textContent;
    for (const delimiter of ['$$', '\\\\(', '\\\\[']) {
      const at = text.indexOf(delimiter);
      if (at >= 0) raw.push(text.slice(Math.max(0, at - 20), at + 40).trim());
    }
  }
  const untypeset = [...document.querySelectorAll('span.math, div.math')]
    .filter((el) => !el.querySelector('mjx-container'))
    .map((el) => el.textContent.trim().slice(0, 60));
  return {
    containers: document.querySelectorAll('mjx-container').length,
    errors: [...document.querySelectorAll('mjx-merror')].map((e) => e.textContent.slice(0, 80)),
    raw,
    untypeset,
  };
}"""

IMAGE_REPORT = """async () => {
  const images = [...document.images];
  for (const img of images) img.loading = 'eager';
  await Promise.all(images.map((img) => img.complete ? null : new Promise((resolve) => {
    img.addEventListener('load', resolve); img.addEventListener('error', resolve);
  })));
  return images.map((img) => ({src: img.currentSrc || img.src, width: img.naturalWidth}));
}"""


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme not in {"http", "https", "ws", "wss"} or parts.hostname in LOCAL_HOSTS


def open_page(browser, url: str, problems: list[str], color_scheme: str = "light"):
    """Open url in a fresh context, recording errors and any request that leaves localhost."""
    context = browser.new_context(viewport=VIEWPORT, color_scheme=color_scheme)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)

    def block_remote(route):
        if is_local(route.request.url):
            route.continue_()
        else:
            problems.append(
                f"request to a non-local host (the book must work offline): {route.request.url}"
            )
            route.abort()

    page.route("**/*", block_remote)
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"uncaught JavaScript error: {e}"))
    page.on(
        "response",
        lambda r: r.status >= 400 and problems.append(f"HTTP {r.status} for {r.url}"),
    )
    page.on(
        "requestfailed",
        lambda r: is_local(r.url) and problems.append(f"failed request {r.url}: {r.failure}"),
    )
    page.goto(url, wait_until="load")
    return context, page


def broken_links(page, origin: str) -> list[str]:
    problems = []
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(a => a.href)")
    for href in sorted(set(hrefs)):
        if not href.startswith(origin + "/"):
            continue  # external links cannot be followed offline
        parts = urlsplit(href)
        path = unquote(parts.path)
        target = HTML_DIR / path.lstrip("/")
        if path.endswith("/"):
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"link to a missing file: {href}")
            continue
        fragment = unquote(parts.fragment)
        if fragment and target.suffix == ".html" and fragment not in ids_in(target):
            problems.append(f"link to a missing anchor #{fragment} in {target.name}: {href}")
    return problems


def screenshot(page, name: str, attempts: int = 3) -> None:
    """Save a full-page PNG. Chromium's capture can fail transiently on a loaded machine
    ("Unable to capture screenshot"), so it is retried a few times before the test fails."""
    from playwright.sync_api import Error as PlaywrightError

    path = SCREENSHOT_DIR / (name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        try:
            page.screenshot(path=str(path), full_page=True, timeout=60_000)
            return
        except PlaywrightError:
            if attempt == attempts - 1:
                raise
            page.wait_for_timeout(1000)


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_renders_offline_with_math_images_and_links(browser, server, docname):
    path = html_path(docname)
    assert path.exists(), f"{docname} is in _toc.yml but was not built: {path} is missing"
    problems: list[str] = []
    context, page = open_page(browser, f"{server}/{docname}.html", problems)
    try:
        has_mathjax = page.evaluate(WAIT_FOR_MATHJAX)
        math = page.evaluate(MATH_REPORT)
        images = page.evaluate(IMAGE_REPORT)
        problems += broken_links(page, server)
        screenshot(page, docname)
    finally:
        context.close()

    if source_has_math(source_of(docname)):
        if not has_mathjax or math["containers"] == 0:
            problems.append("the source has math, but MathJax typeset nothing on the page")
    problems += [f"raw TeX left in the text: {text!r}" for text in math["raw"]]
    problems += [f"math element not typeset: {text!r}" for text in math["untypeset"]]
    problems += [f"MathJax error: {text!r}" for text in math["errors"]]
    problems += [f"image did not load: {img['src']}" for img in images if img["width"] == 0]
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)


def rgb(css_color: str) -> tuple[int, ...]:
    return tuple(int(c) for c in re.findall(r"\d+", css_color)[:3])


@pytest.mark.parametrize("docname", CHAPTERS)
def test_chapter_in_dark_mode_shows_figures_on_a_light_card(browser, server, docname):
    problems: list[str] = []
    context, page = open_page(browser, f"{server}/{docname}.html", problems, "dark")
    try:
        theme = page.evaluate("document.documentElement.dataset.theme")
        body = page.evaluate("getComputedStyle(document.body).backgroundColor")
        cards = page.eval_on_selector_all(
            ".cell_output img", "els => els.map(e => getComputedStyle(e).backgroundColor)"
        )
        screenshot(page, f"dark/{docname}")
    finally:
        context.close()
    assert not problems, f"{docname} (dark):\n  " + "\n  ".join(problems)
    assert theme == "dark", f"the theme did not follow the reader's dark preference: {theme!r}"
    assert sum(rgb(body)) < 3 * 96, f"dark mode left a light page background: {body}"
    # matplotlib draws black axes and labels: on the dark page they need a light card.
    dark_cards = {card for card in cards if min(rgb(card)) < 200}
    assert not dark_cards, f"figures without a light card in dark mode: {dark_cards}"


@pytest.mark.parametrize("docname", CHAPTERS)
def test_chapter_page_has_launch_and_download_buttons(built_book, docname):
    hrefs = hrefs_in(html_path(docname))
    notebook = pathlib.PurePosixPath(docname).name + ".ipynb"
    assert any("colab.research.google.com" in h and h.endswith(notebook) for h in hrefs), (
        "no Colab launch button"
    )
    assert any("mybinder.org" in h and h.endswith(notebook) for h in hrefs), (
        "no Binder launch button"
    )
    assert any("_sources/" in h and h.endswith(notebook) for h in hrefs), (
        "no download button for the .ipynb"
    )


@pytest.mark.parametrize("docname", CHAPTERS)
def test_chapter_links_to_the_notation_page(built_book, docname):
    # Only links in the chapter's own text count, not the navigation around it.
    text = html_path(docname).read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text[text.index("<article") : text.index("</article>")])
    targets = {pathlib.PurePosixPath(urlsplit(href).path).stem for href in parser.hrefs}
    assert "notation" in targets, f"{docname} does not link to the notation page"
