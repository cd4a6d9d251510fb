"""Sphinx extension: lighter pages, whose icons come from a font of a few kilobytes.

Every page of the PyData theme (under the book theme) loads, whatever it shows,

- Font Awesome's "SVG with JavaScript" bundle, ``_static/scripts/fontawesome.js`` (1.5 MB),
  which turns the dozen ``<i class="fa-...">`` of the page's buttons (menu, search,
  repository, download, launch, full screen, light and dark mode, previous and next) into
  inline SVG;
- the Font Awesome fonts (0.27 MB of the 2,000 icons' glyphs), which draw the icons of the
  admonitions and of the theme's stylesheets, and the stylesheet rules of every icon (70 kB);
- the search index and Sphinx's search code (0.1 MB and growing with the book), for a
  search-as-you-type field that the book does not switch on (``search_as_you_type``);
- sphinx-design's stylesheet and script (60 kB), which Jupyter Book adds to every page
  whether or not it has a card, a grid or tabs;

and the figures of the chapters are stored as full-colour PNGs (RGBA, 0.1 to 0.4 MB each).

This extension leaves sphinx-design's files out of the pages that use none of its components,
edits the theme's templates as Jinja loads them, so that the script tags go
(the theme's stylesheet then draws the ``<i>`` icons with the font, as it is made to), and
after the build it replaces each Font Awesome font by a subset holding only the icons that the
built pages and stylesheets use (a few kilobytes, WOFF), and keeps only those icons' rules in
the built copy of the theme's stylesheet. The icons are drawn by the book's own font files, so
they depend on no font of the reader's system. Font Awesome Free: icons CC BY 4.0, fonts SIL
OFL 1.1 (Fonticons, Inc.), which allows subsetting; the subsets keep the fonts' names.

Last, each opaque figure of ``_images/`` is stored with a palette of 256 colours (no dithering):
a plot has few colours (a colour map has 256), so the picture is unchanged to the eye and the
file about three times smaller. A figure that a palette would visibly change (mean error above
``MAX_PALETTE_ERROR`` levels of 255, a photograph say) is left as it is.
"""

from __future__ import annotations

import io
import pathlib
import re

import pydata_sphinx_theme
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

# The theme's static files, as shipped (the built copies are edited below).
THEME_STATIC = (
    pathlib.Path(pydata_sphinx_theme.__file__).parent / "theme" / "pydata_sphinx_theme" / "static"
)
FONT_DIR = "vendor/fontawesome/webfonts"
THEME_CSS = "styles/pydata-sphinx-theme.css"
FONTS = ("fa-solid-900", "fa-regular-400", "fa-brands-400")
FONTAWESOME_SCRIPT = re.compile(r"[ \t]*<script[^>]*scripts/fontawesome\.js[^>]*></script>\n?")
SEARCH_SCRIPTS = re.compile(
    r"[ \t]*<script[^>]*(searchtools\.js|language_data\.js|searchindex\.js)[^>]*></script>\n?"
)
ICON_CLASSES = re.compile(r"<(?:i|span)\s[^>]*class=\"([^\"]*\bfa[-srb ][^\"]*)\"")
ICON_RULE = re.compile(r"([^{}]+)\{content:\"\\([0-9a-f]{4,5})\"\}")
ICON_SELECTOR = re.compile(r"\s*\.(fa-[a-z0-9-]+):(?::)?before\s*")
# Characters of the Private Use Area, where Font Awesome puts its icons, as the stylesheets
# write them: literally or as a CSS escape.
PRIVATE_CHARACTER = re.compile(r"[\ue000-\uf8ff]|\\([ef][0-9a-f]{3})\b")
FONT_SOURCE = re.compile(r"src:url\(([^)]*?/)?(fa-[a-z]+-\d+)\.woff2\)[^;}]*")
MAX_PALETTE_ERROR = 1.0  # mean absolute error per channel, in levels of 0..255
DESIGN_FILES = ("sphinx-design.", "design-tabs.js")
DESIGN_CLASS = re.compile(r"class=\"[^\"]*(?<![\w-])sd-")
# Icons that the theme's own script may add to a page after it loads (announcement banners).
SCRIPTED_ICONS = {"fa-xmark"}


def drop_scripts(app: Sphinx) -> None:
    """Make the theme's templates leave out the icon script and the inline search's scripts."""
    templates = getattr(app.builder, "templates", None)
    if templates is None or not hasattr(templates, "get_source"):
        return
    inline_search = bool(app.config.html_theme_options.get("search_as_you_type"))
    original = templates.get_source
    dropped = {"fontawesome": 0, "search": 0}

    def get_source(environment, template):
        source, filename, uptodate = original(environment, template)
        path = pathlib.PurePath(filename or template).as_posix()
        if path.endswith("pydata_sphinx_theme/static/webpack-macros.html"):
            source, dropped["fontawesome"] = FONTAWESOME_SCRIPT.subn("", source)
        elif path.endswith("pydata_sphinx_theme/layout.html") and not inline_search:
            source, dropped["search"] = SEARCH_SCRIPTS.subn("", source)
        return source, filename, uptodate

    templates.get_source = get_source

    def check(app, exception):
        if exception is None and app.builder.format == "html" and not dropped["fontawesome"]:
            logger.warning(
                "lighter_pages: the theme's template no longer names fontawesome.js the "
                "expected way; the 1.5 MB script is still loaded on every page",
                type="lighter_pages",
            )

    app.connect("build-finished", check)


def drop_unused_design_files(app, pagename, templatename, context, doctree) -> None:
    """Leave sphinx-design's stylesheet and script out of a page that uses none of its parts."""
    if DESIGN_CLASS.search(context.get("body") or ""):
        return
    for key in ("css_files", "script_files"):
        files = context.get(key)
        if isinstance(files, list):
            files[:] = [
                f
                for f in files
                if not any(name in str(getattr(f, "filename", f)) for name in DESIGN_FILES)
            ]


def icon_classes(html: str) -> set[str]:
    """The fa-* classes of the <i> and <span> icons of a page."""
    return {name for classes in ICON_CLASSES.findall(html) for name in classes.split()} - {""}


def icon_rules(theme_css: str) -> dict[str, tuple[str, int]]:
    """Each icon class's rule (``.fa-x:before{content:...}``) and character in the stylesheet."""
    rules = {}
    for match in ICON_RULE.finditer(theme_css):
        selectors = match.group(1).split(",")
        names = [ICON_SELECTOR.fullmatch(selector) for selector in selectors]
        if all(names):
            for name in names:
                rules[name.group(1)] = (match.group(0), int(match.group(2), 16))
    return rules


def lighter_stylesheet(theme_css: str, used: set[str]) -> str:
    """The theme's stylesheet with only the used icons' rules, and the fonts' subsets."""

    def keep(match: re.Match) -> str:
        names = [ICON_SELECTOR.fullmatch(s) for s in match.group(1).split(",")]
        if all(names) and not any(name.group(1) in used for name in names):
            return ""
        return match.group(0)

    css = ICON_RULE.sub(keep, theme_css)
    return FONT_SOURCE.sub(
        lambda m: f'src:url({m.group(1) or ""}{m.group(2)}.subset.woff) format("woff")', css
    )


def private_characters(css: str) -> set[int]:
    return {
        ord(m.group()) if not m.group(1) else int(m.group(1), 16)
        for m in PRIVATE_CHARACTER.finditer(css)
    }


def subset_fonts(app: Sphinx, exception) -> None:
    """Keep in the built book only the icons its pages use, and fonts holding just those."""
    if exception is not None or app.builder.format != "html":
        return
    from fontTools import subset

    static = pathlib.Path(app.outdir) / "_static"
    built_css = static / THEME_CSS
    if not built_css.exists():
        return
    used = set(SCRIPTED_ICONS)
    for page in pathlib.Path(app.outdir).rglob("*.html"):
        used |= icon_classes(page.read_text(encoding="utf-8"))
    rules = icon_rules((THEME_STATIC / THEME_CSS).read_text(encoding="utf-8"))
    used &= set(rules)
    css = lighter_stylesheet((THEME_STATIC / THEME_CSS).read_text(encoding="utf-8"), used)
    built_css.write_text(css, encoding="utf-8")
    # The characters: those of the icons kept, and those the stylesheets draw themselves
    # (admonition titles, the "on this page" chevron, ...).
    characters = {rules[name][1] for name in used}
    for sheet in static.rglob("*.css"):
        characters |= private_characters(sheet.read_text(encoding="utf-8"))
    options = subset.Options()
    options.flavor = "woff"  # zlib: WOFF 2 would need the brotli package
    options.layout_features = []
    options.name_IDs = ["*"]
    options.notdef_outline = True
    for name in FONTS:
        font = subset.load_font(str(THEME_STATIC / FONT_DIR / f"{name}.ttf"), options)
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=characters)
        subsetter.subset(font)
        subset.save_font(font, str(static / FONT_DIR / f"{name}.subset.woff"), options)


def palette_png(path: pathlib.Path) -> bool:
    """Store an opaque PNG with 256 colours where that is smaller and looks the same."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in {"RGB", "RGBA"}:
            return False
        if image.mode == "RGBA" and image.getchannel("A").getextrema() != (255, 255):
            return False  # transparent: a palette would lose the alpha channel's shades
        rgb = image.convert("RGB")
    palette = rgb.quantize(256, dither=Image.Dither.NONE)
    error = np.abs(
        np.asarray(palette.convert("RGB"), dtype=np.int16) - np.asarray(rgb, dtype=np.int16)
    ).mean()
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    if error > MAX_PALETTE_ERROR or buffer.tell() >= path.stat().st_size:
        return False
    path.write_bytes(buffer.getvalue())
    return True


def lighter_figures(app: Sphinx, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for path in sorted((pathlib.Path(app.outdir) / "_images").glob("*.png")):
        palette_png(path)


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", drop_scripts)
    app.connect("html-page-context", drop_unused_design_files)
    app.connect("build-finished", subset_fonts)
    app.connect("build-finished", lighter_figures)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
