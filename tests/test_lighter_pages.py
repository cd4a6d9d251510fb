"""The book's page-weight extension (book/_ext/lighter_pages.py) and the execution report's
status column (book/_ext/execution_report.py), without building the book."""

from __future__ import annotations

import io
import pathlib
import sys

import numpy as np
import pytest
from docutils import nodes
from docutils.frontend import get_default_settings
from docutils.parsers.rst import Parser
from docutils.utils import new_document
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import execution_report  # noqa: E402
import lighter_pages  # noqa: E402

THEME_CSS = (lighter_pages.THEME_STATIC / lighter_pages.THEME_CSS).read_text(encoding="utf-8")


def test_the_theme_css_maps_each_icon_class_to_its_character():
    rules = lighter_pages.icon_rules(THEME_CSS)
    assert rules["fa-github"][1] == 0xF09B
    assert rules["fa-bars"][1] == rules["fa-navicon"][1] == 0xF0C9  # aliases share a rule
    assert len(rules) > 1000  # every icon of Font Awesome Free


def test_the_lighter_stylesheet_keeps_only_the_used_icons_and_the_subset_fonts():
    css = lighter_pages.lighter_stylesheet(THEME_CSS, {"fa-github", "fa-bars"})
    assert '.fa-github:before{content:"\\f09b"}' in css
    assert ".fa-navicon:before" in css  # the alias stays with the rule it shares
    assert ".fa-rocket:before" not in css
    assert len(css) < len(THEME_CSS) - 50_000
    assert ".woff2" not in css and css.count(".subset.woff)") == 3
    assert lighter_pages.private_characters('a:after{content:"\\f107"} b{--x:"\uf303"}') == {
        0xF107,
        0xF303,
    }


def test_the_font_subset_draws_the_icons_it_keeps(tmp_path):
    from fontTools.ttLib import TTFont

    static = tmp_path / "_static"
    (static / lighter_pages.FONT_DIR).mkdir(parents=True)
    (static / "styles").mkdir()
    (static / lighter_pages.THEME_CSS).write_text(THEME_CSS)
    (tmp_path / "page.html").write_text('<i class="fa-solid fa-rocket"></i>')
    app = type("App", (), {"outdir": str(tmp_path)})()
    app.builder = type("Builder", (), {"format": "html"})()
    lighter_pages.subset_fonts(app, None)
    subset = static / lighter_pages.FONT_DIR / "fa-solid-900.subset.woff"
    assert subset.stat().st_size < 20_000  # the whole font: 420 kB as TTF, 150 kB as WOFF 2
    assert 0xF135 in TTFont(subset).getBestCmap()  # the rocket
    assert 0xF0C9 not in TTFont(subset).getBestCmap()  # the bars: not on the page
    built = (static / lighter_pages.THEME_CSS).read_text()
    assert ".fa-rocket:before" in built and ".fa-bars:before" not in built


def figure_png(path: pathlib.Path, photograph: bool = False) -> np.ndarray:
    """A figure as the book's are drawn (filled contours, a curve, text), or a noisy picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    if photograph:
        ax.imshow(np.random.default_rng(0).random((120, 160, 3)), interpolation="bilinear")
    else:
        x, y = np.meshgrid(np.linspace(-3, 3, 200), np.linspace(-3, 3, 200))
        ax.contourf(x, y, np.exp(-(x**2 + y**2) / 2), levels=12, cmap="Blues")
        ax.plot(x[0], np.sin(x[0]), color="C3", label="sin")
        ax.legend()
        ax.set_title("A figure")
    fig.savefig(path)
    plt.close(fig)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"), dtype=np.int16)


def test_an_opaque_figure_gets_a_palette_that_looks_the_same(tmp_path):
    path = tmp_path / "figure.png"
    original = figure_png(path)
    size = path.stat().st_size
    assert lighter_pages.palette_png(path)
    with Image.open(path) as image:
        assert image.mode == "P"
        stored = np.asarray(image.convert("RGBA"), dtype=np.int16)
    assert path.stat().st_size < size
    assert np.abs(stored - original).mean() <= lighter_pages.MAX_PALETTE_ERROR


def test_a_photograph_like_or_transparent_picture_is_left_alone(tmp_path):
    noisy = tmp_path / "noisy.png"
    figure_png(noisy, photograph=True)  # thousands of colours: a palette would show
    before = noisy.read_bytes()
    assert not lighter_pages.palette_png(noisy) and noisy.read_bytes() == before
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(clear)
    assert not lighter_pages.palette_png(clear)


@pytest.mark.parametrize(
    ("body", "kept"),
    [('<div class="sd-card sd-shadow-sm">', True), ('<span id="sd-scale-T">', False)],
)
def test_sphinx_design_files_stay_only_on_pages_that_use_it(body, kept):
    context = {
        "body": body,
        "css_files": ["_static/sphinx-design.min.css", "_static/custom.css"],
        "script_files": ["_static/design-tabs.js", "_static/doctools.js"],
    }
    lighter_pages.drop_unused_design_files(None, "page", "page.html", context, None)
    assert ("_static/sphinx-design.min.css" in context["css_files"]) == kept
    assert ("_static/design-tabs.js" in context["script_files"]) == kept
    assert "_static/custom.css" in context["css_files"]


def test_the_execution_report_writes_its_status_in_words():
    document = new_document("report", get_default_settings(Parser))
    row = nodes.row()
    succeeded = nodes.paragraph("", "", nodes.Text("\u2705"))
    failed = nodes.paragraph("", "", nodes.abbreviation(text="\u274c", explanation="error"))
    row += [nodes.entry("", succeeded), nodes.entry("", failed)]
    document += nodes.table("", row)
    transform = execution_report.StatusInWords(document)
    transform.run()
    statuses = [(n.astext(), n["classes"]) for n in document.findall(nodes.inline)]
    assert statuses == [
        ("succeeded", ["exec-status", "exec-succeeded"]),
        ("failed", ["exec-status", "exec-failed"]),
    ]
    assert "\u2705" not in document.astext() and "\u274c" not in document.astext()
    assert io.StringIO(document.pformat()).read().count("abbreviation") == 1  # kept its tooltip
