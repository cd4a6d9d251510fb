"""Sphinx extension: serve the whole-book PDF with the HTML and link it from every page.

``make pdf`` typesets the book with XeLaTeX into ``_build/latex/<name>.pdf`` (``<name>.tex``
is the target of ``latex_documents`` in _config.yml). When that file exists as an HTML build
starts, the build copies it to ``_static/<name>.pdf`` and adds "Whole book (PDF)" to the
download menu of every page (beside the theme's print-this-page ".pdf"). When it does not
exist, the menu has no such entry, so no build ever links a PDF it does not serve:
``make book`` and the strict build of ``make test`` behave alike, and publish the PDF exactly
when it was made before them (as the publishing workflow does).

In the PDF itself, an output that only HTML can show (an animation, stored as ``text/html``
with IPython's placeholder ``<IPython.core.display.HTML object>`` as its plain text, or a sound
clip, ``<IPython.lib.display.Audio object>``) is replaced by a sentence that sends the reader
to the HTML edition, instead of printing the placeholder."""

from __future__ import annotations

import pathlib
import shutil

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)
BUTTON_LABEL = "download-book-pdf-button"
HTML_ONLY = "<IPython.core.display.HTML object>"
AUDIO_ONLY = "<IPython.lib.display.Audio object>"


def built_pdf(app: Sphinx) -> pathlib.Path | None:
    """The PDF of the LaTeX build beside this HTML build (``_build/latex``), if there is one.

    That is the PDF typeset from a ``.tex`` file of the same name; Jupyter Book's LaTeX build
    writes one (the target of ``latex_documents`` in _config.yml).
    """
    latex = pathlib.Path(app.outdir).parent / "latex"
    typeset = [pdf for pdf in latex.glob("*.pdf") if pdf.with_suffix(".tex").is_file()]
    return typeset[0] if len(typeset) == 1 else None


def note_pdf(app: Sphinx) -> None:
    app.book_pdf = built_pdf(app) if app.builder.format == "html" else None
    if app.book_pdf:
        logger.info(f"whole-book PDF: linking {app.book_pdf}")


def add_download_entry(app: Sphinx, pagename, templatename, context, doctree) -> None:
    """Append the PDF to the theme's download menu (built at priority 501)."""
    if not getattr(app, "book_pdf", None):
        return
    for button in context.get("header_buttons", []):
        if button.get("label") == "download-buttons":
            button["buttons"].append(
                {
                    "type": "link",
                    "url": context["pathto"](f"_static/{app.book_pdf.name}", 1),
                    "text": "Whole book (PDF)",
                    "tooltip": "Download the whole book as one PDF",
                    "icon": "fas fa-book",
                    "label": BUTTON_LABEL,
                }
            )


def copy_pdf(app: Sphinx, exception: Exception | None) -> None:
    source = getattr(app, "book_pdf", None) if exception is None else None
    if source:
        target = pathlib.Path(app.outdir) / "_static" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


class ExplainHtmlOnlyOutputs(SphinxPostTransform):
    """In LaTeX, replace the plain-text placeholder of an HTML-only output by a sentence."""

    default_priority = 400
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        for block in list(self.document.findall(nodes.literal_block)):
            text = block.astext().strip()
            if text in (HTML_ONLY, AUDIO_ONLY):
                what = "An animation plays" if text == HTML_ONLY else "A sound clip plays"
                note = nodes.paragraph()
                note += nodes.emphasis(text=f"{what} here in the HTML edition of the book.")
                block.replace_self(note)


def setup(app: Sphinx) -> dict:
    app.add_post_transform(ExplainHtmlOnlyOutputs)
    app.connect("builder-inited", note_pdf)
    app.connect("html-page-context", add_download_entry, priority=502)
    app.connect("build-finished", copy_pdf)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
