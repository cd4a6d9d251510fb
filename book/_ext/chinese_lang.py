"""Sphinx extension: mark the Chinese terms of the HTML pages as Chinese (``lang="zh"``).

The book is written in English and its pages say ``<html lang="en">``; the Chinese terms of the
glossary, the notation page and the preface would then be read by a screen reader with English
rules and drawn by the browser with whatever font it picks for English. When the HTML builder
has finished, every run of CJK characters in the text of each written page is wrapped in
``<span lang="zh">...</span>``. Only text between tags is touched: tags and their attributes
(a glossary entry's ``id="term-扩散过程"``, say), scripts, styles, the page title and text
already inside a ``<span lang="zh">`` (a page written by an earlier build) stay as they are.
Other builders (LaTeX for the PDF, which sets the Chinese font itself) are not affected.
"""

from __future__ import annotations

import pathlib
import re

from sphinx.application import Sphinx

# CJK punctuation, CJK Unified Ideographs with extension A, compatibility ideographs, full-width
# forms; a run may contain the spaces between words of Chinese text.
CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
CJK_RUN = re.compile(f"[{CJK}](?:[{CJK} ]*[{CJK}])?")
TOKEN = re.compile(r"<!--.*?-->|<[^>]*>|[^<]+", re.S)
RAW_TEXT = {"script", "style", "title", "textarea"}
TAG = re.compile(r"<\s*(/?)\s*([a-zA-Z][a-zA-Z0-9-]*)([^>]*)>", re.S)
ZH_ATTRIBUTE = re.compile(r"""\blang\s*=\s*["']?zh""", re.I)


def mark_chinese(html: str) -> str:
    """``html`` with each run of CJK characters in its text wrapped in ``<span lang="zh">``."""
    out = []
    raw = None  # name of the script/style/title element we are inside, if any
    span_stack = []  # for each open <span>: whether it says lang="zh"
    for token in TOKEN.findall(html):
        if token.startswith("<"):
            out.append(token)
            tag = TAG.match(token)
            if tag is None:
                continue
            closing, name, attributes = tag.group(1), tag.group(2).lower(), tag.group(3)
            if raw is not None:
                if closing and name == raw:
                    raw = None
                continue
            if name in RAW_TEXT and not closing and not attributes.rstrip().endswith("/"):
                raw = name
            elif name == "span":
                if closing:
                    if span_stack:
                        span_stack.pop()
                else:
                    span_stack.append(bool(ZH_ATTRIBUTE.search(attributes)))
            continue
        if raw is not None or any(span_stack):
            out.append(token)
        else:
            out.append(CJK_RUN.sub(lambda m: f'<span lang="zh">{m.group(0)}</span>', token))
    return "".join(out)


def mark_written_pages(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    suffix = getattr(app.builder, "out_suffix", ".html")
    for page in pathlib.Path(app.outdir).rglob(f"*{suffix}"):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        if CJK_RUN.search(text) is None:
            continue
        marked = mark_chinese(text)
        if marked != text:
            page.write_text(marked, encoding="utf-8")


def setup(app: Sphinx) -> dict:
    app.connect("build-finished", mark_written_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
