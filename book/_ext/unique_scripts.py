"""Sphinx extension: include each script of a page once.

Sphinx 7.4 registers a script that has a body but no file (``add_js_file(None, body=...)``)
twice when an extension adds it after the builder started, as sphinx-thebe and
sphinx-togglebutton do: once as ``None`` and once as ``''``. The second copy of sphinx-thebe's
``const THEBE_JS_URL`` is a JavaScript error on every page. This drops such duplicates.
"""

from __future__ import annotations

from sphinx.application import Sphinx


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen = set()
    unique = []
    for script in scripts:
        key = (
            getattr(script, "filename", script) or "",
            getattr(script, "priority", None),
            tuple(sorted(getattr(script, "attributes", {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
