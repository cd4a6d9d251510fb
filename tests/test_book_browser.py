"""The built book, as a reader's browser shows it.

Opens every page of the table of contents from ``_build/html`` (or the folder named by the
environment variable ``BOOK_HTML_DIR``) in headless Chromium, served by a web server on
localhost (as the book is hosted, and free of file:// quirks), and checks that

- the mathematics is typeset: MathJax ran on every page whose source has math, every math
  element holds its rendering, no TeX error is shown, and no raw ``$$``, ``\\(`` or ``\\[`` is
  left in the visible text;
- every image loaded;
- every internal link leads to a page that exists and every ``#anchor`` to an id in it;
- the page logs no JavaScript error and asks nothing of any host but localhost: the book must
  work offline, so requests elsewhere are blocked and reported;
- the page weighs at most its budget (the bodies of every response it loads, the HTML, scripts,
  styles, fonts and images, added up; written to ``page_weights.json`` beside the HTML folder);
- at a phone's 390 CSS pixels nothing widens the page beyond the screen (a wide table or
  equation may scroll inside its own box);
- every figure has a caption and an alt text that describes it (not a file name);
- no raw TeX and no equation label name such as ``(ode-gain)`` reaches the text;
- no character that needs an emoji or symbol font the reader may lack (media-control symbols,
  emoji, check marks) is shown: such glyphs are drawn with SVG or CSS instead;

and saves full-page screenshots of each page at 1366 and 390 CSS pixels under
``_build/screenshots/1366/`` and ``_build/screenshots/390/`` (beside the HTML folder).
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
HTML_DIR = pathlib.Path(os.environ.get("BOOK_HTML_DIR") or ROOT / "_build" / "html").resolve()
SCREENSHOT_DIR = HTML_DIR.parent / "screenshots"
WEIGHT_REPORT = HTML_DIR.parent / "page_weights.json"
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
VIEWPORT = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
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
    # Room for every resource of a page in the Performance API (the default keeps 250).
    page.add_init_script("performance.setResourceTimingBufferSize(100000)")

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


# --- what a page weighs, what a phone shows, what a reader reads --------------------------

WEIGHT_REPORT_JS = """async () => {
  await document.fonts.ready;
  const entries = [
    ...performance.getEntriesByType('navigation'),
    ...performance.getEntriesByType('resource'),
  ];
  return entries.map((e) => ({url: e.name, bytes: e.decodedBodySize}));
}"""

OVERFLOW_REPORT = """() => {
  const overflow = document.scrollingElement.scrollWidth - window.innerWidth;
  if (overflow <= 0) return {overflow, culprits: []};
  // The widest elements that stick out and do not scroll inside a box of their own.
  const scrolls = (el) => ['auto', 'scroll', 'hidden', 'clip']
    .includes(getComputedStyle(el).overflowX);
  const culprits = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.getBoundingClientRect().right <= window.innerWidth + 1) continue;
    let boxed = false;
    for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
      if (scrolls(up)) { boxed = true; break; }
    }
    if (boxed) continue;
    const name = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
      + (el.className && typeof el.className === 'string'
         ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
    culprits.push(`${name} (right edge at ${Math.round(el.getBoundingClientRect().right)} px)`);
  }
  return {overflow, culprits: culprits.slice(-5)};
}"""

FIGURE_REPORT = """() => {
  const article = document.querySelector('article') || document.body;
  return [...article.querySelectorAll('img')].map((img) => {
    const figure = img.closest('figure');
    const caption = figure && figure.querySelector('figcaption');
    return {
      src: (img.getAttribute('src') || '').slice(0, 80),
      alt: img.getAttribute('alt'),
      caption: caption ? caption.textContent.trim() : '',
      animation: img.closest('.book-animation') !== null,
    };
  });
}"""

# All of the text a reader can reach (folded solutions included), without code and typeset
# math, and the alt texts of images, which screen readers read aloud.
TEXT_REPORT = """(skip) => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const prose = [];
  const all = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (parent.closest('SCRIPT, STYLE, NOSCRIPT, TEMPLATE')) continue;
    all.push(node.textContent);
    if (!parent.closest(skip)) prose.push(node.textContent);
  }
  const alts = [...document.images].map((img) => img.getAttribute('alt') || '');
  return {prose: prose.concat(alts), all: all.concat(alts)};
}"""

# The theme's buttons show their icons: each has a character of the icon font, and every icon
# font the page uses has loaded (the book ships subsets of them that hold only those icons).
ICON_REPORT = """async () => {
  await document.fonts.ready;
  const icons = [...document.querySelectorAll('i[class*="fa-"], span[class*="fa-"]')]
    .filter((el) => el.checkVisibility())
    .map((el) => ({
      icon: el.className.replace(/\\s+/g, ' ').trim(),
      width: el.getBoundingClientRect().width,
      content: getComputedStyle(el, '::before').content,
    }));
  const fonts = [...document.fonts]
    .filter((font) => /Awesome/.test(font.family) && font.status !== 'unloaded')
    .map((font) => ({family: font.family, weight: font.weight, status: font.status}));
  return {icons, fonts};
}"""

# Each animation shows its first frame and steps through the others with its buttons.
ANIMATION_REPORT = """async () => {
  const problems = [];
  for (const player of document.querySelectorAll('.book-animation')) {
    const img = player.querySelector('img');
    const first = img.src;
    const buttons = [...player.querySelectorAll('button')];
    if (buttons.length < 5 || buttons.some((b) => b.getBoundingClientRect().width === 0))
      problems.push('an animation lacks its five visible buttons');
    player.querySelector('[data-action=next]').click();
    await new Promise((resolve) => setTimeout(resolve, 50));
    if (img.src === first) problems.push('"Next frame" did not change the frame');
    player.querySelector('[data-action=first]').click();
    await new Promise((resolve) => setTimeout(resolve, 50));
    if (img.src !== first) problems.push('"First frame" did not return to the first frame');
  }
  return problems;
}"""

# Each audio player loads its clip from the page itself (a data: URL, no network) and reads
# the clip's header: its duration is known once the metadata has loaded.
AUDIO_REPORT = """async () => {
  const players = [...document.querySelectorAll('audio')];
  const load = (audio) => new Promise((resolve) => {
    if (audio.readyState >= 1) return resolve();
    audio.addEventListener('loadedmetadata', () => resolve(), {once: true});
    audio.addEventListener('error', () => resolve(), {once: true});
    audio.preload = 'metadata';
    audio.load();
    setTimeout(resolve, 5000);
  });
  await Promise.all(players.map(load));
  return players.map((audio) => ({
    src: (audio.currentSrc || audio.querySelector('source')?.src || '').slice(0, 30),
    duration: audio.duration,
    error: audio.error ? audio.error.code : null,
  }));
}"""

PROSE_SKIP = "PRE, CODE, KBD, TEXTAREA, MJX-CONTAINER, .math, .highlight, .cell_input"
RAW_TEX = re.compile(r"\$\$|\\[()\[\]]|\\[A-Za-z]{2,}")
# Characters that a stock Linux browser without an emoji font shows as empty boxes: the
# media-control symbols, emoji-style dingbats (check and cross marks) and the emoji planes.
NEEDS_EMOJI_FONT = re.compile(
    "[\u231a\u231b\u23e9-\u23fa\u25fd\u25fe\u2614\u2615\u2648-\u2653\u267f\u2693\u26a1"
    "\u26aa\u26ab\u26bd\u26be\u26c4\u26c5\u26ce\u26d4\u26ea\u26f2\u26f3\u26f5\u26fa\u26fd"
    "\u2705\u270a\u270b\u2728\u274c\u274e\u2753-\u2755\u2757\u2795-\u2797\u27b0\u27bf"
    "\u2b1b\u2b1c\u2b50\u2b55\U0001f000-\U0001faff]"
)
FILE_NAME = re.compile(r"^\S*\.(png|jpe?g|gif|svg|webp)$|^\S*/\S*$|^data:", re.IGNORECASE)

MIB = 2**20
# What a page may weigh: the bodies of everything it loads, uncompressed, in MiB. A chapter may
# weigh half of what it did while every page loaded the theme's 1.5 MB icon script, MathJax's
# combined bundle (with its context menu) and full-colour figures (then 5.37, 5.83, 4.53, 4.18,
# 4.15 and 3.89 MiB); another page, what the theme and MathJax take (1.5 MiB) and a little text.
WEIGHT_BUDGET_MIB = {
    "notebooks/01_forward_diffusion": 2.65,
    "notebooks/02_inverse_diffusion": 2.9,
    "notebooks/03_stability": 2.25,
    "notebooks/04_generating_digits": 2.05,
    "notebooks/05_guidance": 2.05,
    "notebooks/06_latent_diffusion": 1.9,
}
CHAPTER_BUDGET_MIB = 2.25  # a chapter not listed above
PAGE_BUDGET_MIB = 1.6


def weight_budget(docname: str) -> float:
    if docname in WEIGHT_BUDGET_MIB:
        return WEIGHT_BUDGET_MIB[docname]
    return CHAPTER_BUDGET_MIB if docname in CHAPTERS else PAGE_BUDGET_MIB


@functools.cache
def equation_labels() -> frozenset[str]:
    """The names of every labelled equation of the book, from the ids Sphinx gives them."""
    labels = set()
    for docname in DOCNAMES:
        if html_path(docname).exists():
            labels |= {i[len("equation-") :] for i in ids_in(html_path(docname))}
    return frozenset(label for label in labels if label and not label.isdigit())


def record_weight(docname: str, total: int, largest: list[tuple[int, str]]) -> None:
    weights = json.loads(WEIGHT_REPORT.read_text()) if WEIGHT_REPORT.exists() else {}
    weights[docname] = {"bytes": total, "largest": [[b, u] for b, u in largest]}
    WEIGHT_REPORT.write_text(json.dumps(weights, indent=1, sort_keys=True) + "\n")


def visit(browser, server: str, docname: str) -> dict:
    """Everything the tests below check on one page, from one visit at 1366 and 390 px."""
    problems: list[str] = []
    context, page = open_page(browser, f"{server}/{docname}.html", problems)
    try:
        report = {"has_mathjax": page.evaluate(WAIT_FOR_MATHJAX)}
        report["math"] = page.evaluate(MATH_REPORT)
        report["images"] = page.evaluate(IMAGE_REPORT)
        report["links"] = broken_links(page, server)
        report["resources"] = page.evaluate(WEIGHT_REPORT_JS)
        report["figures"] = page.evaluate(FIGURE_REPORT)
        report["text"] = page.evaluate(TEXT_REPORT, PROSE_SKIP)
        report["icons"] = page.evaluate(ICON_REPORT)
        report["animations"] = page.evaluate(ANIMATION_REPORT)
        report["audio"] = page.evaluate(AUDIO_REPORT)
        screenshot(page, f"{VIEWPORT['width']}/{docname}")
        page.set_viewport_size(PHONE)
        page.wait_for_timeout(100)  # let the theme's resize handlers run
        report["phone"] = page.evaluate(OVERFLOW_REPORT)
        screenshot(page, f"{PHONE['width']}/{docname}")
    finally:
        context.close()
    report["problems"] = problems
    return report


@pytest.fixture(scope="module")
def visits(browser, server):
    """Each page is visited once, by the first test that asks for it."""
    cache: dict[str, dict] = {}

    def get(docname: str) -> dict:
        assert html_path(docname).exists(), (
            f"{docname} is in _toc.yml but was not built: {html_path(docname)} is missing"
        )
        if docname not in cache:
            cache[docname] = visit(browser, server, docname)
        return cache[docname]

    return get


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_renders_offline_with_math_images_and_links(visits, docname):
    report = visits(docname)
    problems = list(report["problems"]) + report["links"]
    math = report["math"]
    if source_has_math(source_of(docname)):
        if not report["has_mathjax"] or math["containers"] == 0:
            problems.append("the source has math, but MathJax typeset nothing on the page")
    problems += [f"raw TeX left in the text: {text!r}" for text in math["raw"]]
    problems += [f"math element not typeset: {text!r}" for text in math["untypeset"]]
    problems += [f"MathJax error: {text!r}" for text in math["errors"]]
    problems += [
        f"image did not load: {img['src']}" for img in report["images"] if img["width"] == 0
    ]
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_weight_is_within_budget(visits, docname):
    resources = visits(docname)["resources"]
    total = sum(r["bytes"] for r in resources)
    largest = sorted(((r["bytes"], r["url"]) for r in resources), reverse=True)[:5]
    record_weight(docname, total, largest)
    budget = weight_budget(docname)
    assert total <= budget * MIB, (
        f"{docname} weighs {total / MIB:.2f} MiB, over its budget of {budget:.2f} MiB;"
        " largest: " + ", ".join(f"{url} ({size / 1024:.0f} KiB)" for size, url in largest)
    )


@pytest.mark.parametrize("docname", DOCNAMES)
def test_buttons_show_their_icons_and_animations_play(visits, docname):
    report = visits(docname)
    icons, fonts = report["icons"]["icons"], report["icons"]["fonts"]
    assert icons, "no icon found in the page's buttons"
    problems = [
        f"icon {icon['icon']!r} has no character (width {icon['width']:.0f} px)"
        for icon in icons
        if icon["width"] < 4 or icon["content"] in {"none", "normal", '""'}
    ]
    problems += [f"icon font {f['family']} {f['weight']}: {f['status']}" for f in fonts]
    problems = [p for p in problems if not p.endswith(": loaded")]
    problems += report["animations"]
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("docname", DOCNAMES)
def test_audio_players_load_their_clips_offline(visits, docname):
    """Every audio player of a page plays a clip stored in the page (a data: URL): it loads
    with no network and knows its duration. The sound chapter has players; its source embeds
    them with IPython.display.Audio."""
    players = visits(docname)["audio"]
    source = source_of(docname).read_text()
    if "display.Audio" in source or "Audio(" in source:
        assert players, f"{docname} embeds audio, but the page has no audio element"
    problems = [
        f"audio player {i}: source {p['src']!r}, duration {p['duration']}, error {p['error']}"
        for i, p in enumerate(players)
        if not p["src"].startswith("data:audio/")
        or p["error"] is not None
        or not (p["duration"] and 0 < p["duration"] < 60)
    ]
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_fits_a_phone_screen(visits, docname):
    phone = visits(docname)["phone"]
    assert phone["overflow"] <= 0, (
        f"{docname} is {phone['overflow']} px wider than a {PHONE['width']} px screen;"
        " sticking out: " + "; ".join(phone["culprits"])
    )


@pytest.mark.parametrize("docname", DOCNAMES)
def test_every_figure_has_a_caption_and_alt_text(visits, docname):
    problems = []
    for figure in visits(docname)["figures"]:
        alt = (figure["alt"] or "").strip()
        if not alt or FILE_NAME.match(alt):
            problems.append(f"image without a descriptive alt text ({alt!r}): {figure['src']}")
        # An animation is an HTML output, which myst-nb does not wrap in a figure: its caption
        # is the sentence that introduces it.
        if not figure["animation"] and not figure["caption"]:
            problems.append(f"figure without a caption: {figure['src']}")
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("docname", DOCNAMES)
def test_no_raw_tex_or_equation_label_names_in_the_text(visits, docname):
    prose = "\n".join(visits(docname)["text"]["prose"])
    problems = [
        f"raw TeX: {prose[max(0, m.start() - 30) : m.end() + 30]!r}"
        for m in RAW_TEX.finditer(prose)
    ]
    problems += [
        f"equation label name in the text: ({label})"
        for label in sorted(equation_labels())
        if f"({label})" in prose
    ]
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems[:20])


@pytest.mark.parametrize("docname", DOCNAMES)
def test_no_character_needs_an_emoji_font(visits, docname):
    text = "\n".join(visits(docname)["text"]["all"])
    found = {
        f"U+{ord(m.group()):04X} in {text[max(0, m.start() - 30) : m.end() + 30]!r}"
        for m in NEEDS_EMOJI_FONT.finditer(text)
    }
    assert not found, f"{docname}: characters a stock browser may show as boxes:\n  " + (
        "\n  ".join(sorted(found)[:20])
    )


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
