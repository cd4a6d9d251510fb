"""The whole-book PDF, read back as text.

``make test`` builds the PDF (``make pdf``: the stored outputs typeset by XeLaTeX) after the
strict build and before these tests; run alone, this file needs ``make pdf`` first. The text
that poppler's ``pdftotext`` extracts must hold

- every chapter of _toc.yml in the table of contents, numbered 1, 2, ... in reading order, as
  the HTML edition numbers them (so that "Chapter 2" in the prose is the same chapter);
- the Chinese terms of the glossary (typeset with xeCJK, not dropped or boxed), and no
  character that XeLaTeX left out for want of a glyph (its log says so);
- numbered equations and figures, no reference LaTeX could not resolve ("??"), and no
  output shown as IPython's placeholder text;

and the PDF must have at least as many pages as its table of contents promises. Without
XeLaTeX no PDF is built and these tests are skipped, saying why. The last tests check how an
HTML build serves the PDF and links it (book/_ext/book_pdf.py), on a PDF of their own.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import nbformat
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
PDF = ROOT / "_build" / "latex" / CONFIG["latex"]["latex_documents"]["targetname"]
PDF = PDF.with_suffix(".pdf")
CHINESE_TERMS = ("扩散过程", "逆扩散过程", "稳定性")

needs_pdf = pytest.mark.skipif(
    shutil.which("xelatex") is None,
    reason="xelatex is not installed, so make test builds no PDF (Debian: texlive-xetex, see "
    "README.md)",
)


def chapter_titles() -> list[str]:
    """The title (first heading) of each notebook of _toc.yml, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [
        chapter["file"]
        for part in toc["parts"]
        for chapter in part["chapters"]
        if chapter["file"].startswith("notebooks/")
    ]
    titles = []
    for name in files:
        notebook = nbformat.read(ROOT / f"{name}.ipynb", as_version=4)
        heading = next(
            line
            for cell in notebook.cells
            if cell.cell_type == "markdown"
            for line in cell.source.splitlines()
            if line.startswith("# ")
        )
        titles.append(heading[2:].strip())
    return titles


def plain(text: str) -> str:
    """Whitespace collapsed and typographic quotes straightened, for searching."""
    text = text.translate(str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'}))
    return " ".join(text.split())


@pytest.fixture(scope="module")
def pdf_text() -> str:
    if not PDF.is_file():
        pytest.fail(f"{PDF.relative_to(ROOT)} is missing: run `make pdf` (make test does)")
    if shutil.which("pdftotext") is None:
        pytest.fail("pdftotext is missing (Debian: poppler-utils; .ci/run installs it)")
    result = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(PDF), "-"], capture_output=True, check=True
    )
    return result.stdout.decode("utf-8")


def page_count() -> int:
    info = subprocess.run(["pdfinfo", str(PDF)], capture_output=True, text=True, check=True)
    return int(re.search(r"^Pages:\s+(\d+)", info.stdout, re.M)[1])


def contents_pages(pdf_text: str) -> list[int]:
    """The page on which the contents say each chapter starts, chapter 1 first."""
    text = plain(pdf_text)
    titles = [plain(title) for title in chapter_titles()]
    contents = text[text.index(f"1 {titles[0]} ") :][:20_000]
    pages = []
    for number, title in enumerate(titles, start=1):
        match = re.search(rf"(?<![\d.]){number} {re.escape(title)} (\d+)", contents)
        assert match, f"the contents do not list chapter {number}, {title!r}"
        pages.append(int(match[1]))
    return pages


def test_the_numbered_part_is_where_the_latex_layout_expects_it():
    # book/_latex/diffusionbook.sty numbers the chapters of the second part of _toc.yml only,
    # as the HTML numbers those of the part marked `numbered: true`.
    parts = yaml.safe_load((ROOT / "_toc.yml").read_text())["parts"]
    assert [bool(part.get("numbered")) for part in parts] == [False, True, False]
    assert r"\ifnum\value{book@part}=2 " in (ROOT / "book/_latex/diffusionbook.sty").read_text()


@needs_pdf
def test_contents_list_every_chapter_numbered_in_reading_order(pdf_text):
    pages = contents_pages(pdf_text)
    assert pages == sorted(pages), f"chapters start on pages {pages}"


NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()


@needs_pdf
def test_every_chapter_opens_with_its_number_and_title(pdf_text):
    # Sphinx's chapter heading reads "CHAPTER / ONE / FORWARD DIFFUSION", a line each.
    lines = [plain(line).casefold() for line in pdf_text.splitlines() if line.strip()]
    for number, title in enumerate(chapter_titles(), start=1):
        heading = ["chapter", NUMBER_WORDS[number - 1]]
        assert any(
            lines[i : i + 2] == heading
            and " ".join(lines[i + 2 : i + 4]).startswith(plain(title).casefold())
            for i in range(len(lines) - 3)
        ), f"no heading 'Chapter {NUMBER_WORDS[number - 1]}: {title}' in the text"


@needs_pdf
def test_chinese_terms_are_typeset(pdf_text):
    for term in CHINESE_TERMS:
        assert term in pdf_text, f"{term} is not in the PDF's text"


@needs_pdf
def test_every_character_had_a_glyph(pdf_text):
    # XeLaTeX drops a character its fonts lack, saying so only in its log.
    log = PDF.with_suffix(".log").read_text(encoding="utf-8", errors="replace")
    missing = sorted(set(re.findall(r"Missing character: There is no (.+?) in font", log)))
    assert not missing, f"characters left out of the PDF for want of a glyph: {missing}"


@needs_pdf
def test_no_output_is_shown_as_a_python_placeholder(pdf_text):
    # An output that only HTML can show (an animation) must not print as IPython's placeholder.
    assert not re.findall(r"<IPython\.[\w.]+ object>", pdf_text)


@needs_pdf
def test_equations_and_figures_are_numbered_by_chapter(pdf_text):
    text = plain(pdf_text)
    assert re.search(r"\(1\.1\)", text), "no equation (1.1)"
    assert re.search(r"Fig\. \d+\.1:", text), "no figure numbered by its chapter"
    assert "??" not in text, "LaTeX left a reference unresolved"


@needs_pdf
def test_page_count_is_what_the_contents_promise(pdf_text):
    starts, pages = contents_pages(pdf_text), page_count()
    # Page numbers count from the first page after the (roman-numbered) contents.
    assert starts[-1] < pages, f"the last chapter starts on page {starts[-1]} of {pages}"
    lengths = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(lengths) >= 2, f"a chapter of fewer than two pages: starts {starts}"
    # Nothing (a table, a log) runs away: a chapter is a few dozen pages at most.
    assert pages <= 100 * len(starts), f"{pages} pages for {len(starts)} chapters"


# --- the link from the HTML edition --------------------------------------------------------


def book_pdf_extension():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import book_pdf
    finally:
        sys.path.remove(str(ROOT / "book" / "_ext"))
    return book_pdf


def html_build(tmp_path, with_pdf: bool):
    """A stand-in for Sphinx's HTML build in tmp_path/_build/html, and a page's context."""
    latex = tmp_path / "_build" / "latex"
    latex.mkdir(parents=True)
    (latex / "book.tex").write_text("\\documentclass{report}")
    if with_pdf:
        (latex / "book.pdf").write_bytes(b"%PDF-1.5 the book")
    app = SimpleNamespace(
        outdir=tmp_path / "_build" / "html", builder=SimpleNamespace(format="html")
    )
    menu = {"label": "download-buttons", "buttons": [{"label": "download-source-button"}]}
    context = {
        "header_buttons": [menu],
        "pathto": lambda target, resource: f"../{target}",  # from a page in a subfolder
    }
    return app, menu, context


def test_html_build_serves_the_pdf_and_links_it_from_the_download_menu(tmp_path):
    extension = book_pdf_extension()
    app, menu, context = html_build(tmp_path, with_pdf=True)
    extension.note_pdf(app)
    extension.add_download_entry(app, "notebooks/01", "page.html", context, None)
    extension.copy_pdf(app, None)
    entry = menu["buttons"][-1]
    assert entry["label"] == extension.BUTTON_LABEL
    assert entry["url"] == "../_static/book.pdf"
    served = app.outdir / "_static" / "book.pdf"
    assert served.read_bytes() == b"%PDF-1.5 the book"


def test_html_build_without_a_pdf_links_none(tmp_path):
    extension = book_pdf_extension()
    app, menu, context = html_build(tmp_path, with_pdf=False)
    extension.note_pdf(app)
    extension.add_download_entry(app, "notebooks/01", "page.html", context, None)
    extension.copy_pdf(app, None)
    assert [button["label"] for button in menu["buttons"]] == ["download-source-button"]
    assert not (app.outdir / "_static").exists()
