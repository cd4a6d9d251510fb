"""Sphinx extension: one id per element for the boxes of sphinx-proof and sphinx-exercise.

sphinx-proof 0.4 gives every proof the id ``proof`` and the body of every proposition, lemma
or proof the id ``proof-content``; sphinx-exercise 1.2 gives the body of every exercise and
solution the id ``exercise-content`` or ``solution-content``. A page with two proofs or two
exercises then has two elements with one id: invalid HTML, and an anchor that cannot say which
box it means. This numbers them on each page (``proof``, ``proof-2``, ...; ``exercise-content``,
``exercise-content-2``, ...) and marks each proof with the class ``prf-proof``, which
book/_static/custom.css styles as sphinx-proof styles ``div#proof``.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform

SHARED_IDS = ("proof", "proof-content", "exercise-content", "solution-content")


class NumberProofIds(SphinxTransform):
    """Make the ids that sphinx-proof and sphinx-exercise repeat unique within the page."""

    default_priority = 500

    def apply(self, **kwargs) -> None:
        seen = dict.fromkeys(SHARED_IDS, 0)
        for node in self.document.findall(nodes.Element):
            ids = node.get("ids", [])
            for i, name in enumerate(ids):
                if name not in seen:
                    continue
                seen[name] += 1
                if name == "proof":
                    node["classes"].append("prf-proof")
                if seen[name] > 1:
                    ids[i] = f"{name}-{seen[name]}"
                    self.document.ids[ids[i]] = node


def setup(app: Sphinx) -> dict:
    app.add_transform(NumberProofIds)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
