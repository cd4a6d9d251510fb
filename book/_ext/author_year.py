"""Sphinx extension: author-year citations, the same in the text and in the bibliography.

A work is named by its authors' surnames and its year, as in Chicago author-date style: one,
two or three authors are all named ("Ho, Jain and Abbeel (2020)"), four or more by the first
and "et al." ("Lu et al. (2022a)"). Works that would get the same name, the same authors in the
same year, are told apart by a letter after the year, assigned in the order of the
bibliography. That name is computed once, as the entry's label, and every citation prints it:

- ``{cite:t}`key``` gives "Lu et al. (2022a)", ``{cite:p}`a,b``` gives "(Lu et al., 2022a; Ho
  and Salimans, 2022)";
- the bibliography (``bibtex_default_style: book_author_year``) sorts the entries as their labels
  read (first author; alone, with co-authors, et al.; year) and shows each under its label.

In the HTML, each bibliography entry ends with the places that cite it ("Cited in Chapter 1
(a, b), Notation"), each a link back to the citation. sphinxcontrib-bibtex makes such back
links only when the citation and the bibliography are on the same page; the book keeps one
bibliography page for all chapters, so they are added here.

Configuration (``_config.yml``, under ``sphinx.config``)::

    bibtex_reference_style: book_author_year
    bibtex_default_style: book_author_year
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import docutils.nodes
import pybtex.plugin
import sphinxcontrib.bibtex.plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import BaseSortingStyle
from pybtex.style.template import join, node
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinxcontrib.bibtex.domain import get_docnames
from sphinxcontrib.bibtex.style.referencing import (
    BaseReferenceStyle,
    BracketStyle,
    GroupReferenceStyle,
)
from sphinxcontrib.bibtex.style.template import join2, post_text, pre_text, reference

if TYPE_CHECKING:
    from pybtex.database import Entry, Person
    from sphinx.application import Sphinx

STYLE_NAME = "book_author_year"
MAX_NAMED_AUTHORS = 3  # four or more authors: "First et al."


# ----------------------------------------------------------------------------- labels


def surname(person: Person) -> str:
    """The surname with its particles ("van den Berg"), TeX accents turned into Unicode."""
    tex = " ".join(person.prelast_names + person.last_names)
    return str(Text.from_latex(tex).render_as("text"))


def author_names(entry: Entry) -> str:
    """The authors as a label names them: Ho; Ho and Salimans; Ho, Jain and Abbeel; Lu et al."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [surname(person) for person in persons]
    if not names:
        return str(Text.from_latex(entry.fields.get("title", entry.key)).render_as("text"))
    if len(names) > MAX_NAMED_AUTHORS:
        return f"{names[0]} et al."
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Authors (year)", with "a", "b", ... after the year where two would coincide."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        names = [(author_names(e), e.fields.get("year", "n.d.")) for e in entries]
        count = defaultdict(int)
        for name in names:
            count[name] += 1
        seen = defaultdict(int)
        for authors, year in names:
            suffix = ""
            if count[authors, year] > 1:
                suffix = string.ascii_lowercase[seen[authors, year]]
                seen[authors, year] += 1
            yield f"{authors} ({year}{suffix})"


LABEL = re.compile(r"^(?P<authors>.*) \((?P<year>[^()]*)\)$")


def split_label(label: str) -> tuple[str, str]:
    """("Lu et al.", "2022a") from the label "Lu et al. (2022a)"."""
    match = LABEL.match(label)
    if match is None:
        raise ValueError(f"label {label!r} is not of the form 'Authors (year)'")
    return match.group("authors"), match.group("year")


# ----------------------------------------------------------------------------- sorting


class AuthorYearSortingStyle(BaseSortingStyle):
    """In the order in which a reader looks a label up.

    By the first author's surname; then works by that author alone, works with one or two
    co-authors (by their surnames) and works "et al."; then by year, arXiv number (the order of
    appearance) and title. So the "Chen et al." works stand together, by year.
    """

    def sorting_key(self, entry: Entry):
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        names = tuple(surname(person).lower() for person in persons) or ("",)
        if len(names) == 1:
            group, coauthors = 0, ()
        elif len(names) <= MAX_NAMED_AUTHORS:
            group, coauthors = 1, names[1:]
        else:
            group, coauthors = 2, ()
        fields = entry.fields
        return (
            names[0],
            group,
            coauthors,
            fields.get("year", ""),
            fields.get("eprint", ""),
            fields.get("title", ""),
        )


class AuthorYearStyle(UnsrtStyle):
    """The entries of pybtex's plain style, sorted and labelled by author and year."""

    default_label_style = AuthorYearLabelStyle
    default_sorting_style = AuthorYearSortingStyle


# ----------------------------------------------------------------------------- citations


@node
def label_authors(children, data):
    """The authors' part of the entry's label."""
    return Text(split_label(data["formatted_entry"].label)[0])


@node
def label_year(children, data):
    """The year of the entry's label, with its letter."""
    return Text(split_label(data["formatted_entry"].label)[1])


ROUND = BracketStyle(left="(", right=")", sep="; ")


@dataclass
class Parenthetical(BaseReferenceStyle):
    """{cite:p}: "(Lu et al., 2022a; Ho and Salimans, 2022)"; {cite:alp}: the same, no brackets."""

    bracket: BracketStyle = field(default_factory=lambda: ROUND)

    def role_names(self):
        return [f"{alt}p{full}" for alt in ("", "al") for full in ("", "s")]

    def outer(self, role_name, children):
        return self.bracket.outer(children, brackets="al" not in role_name)

    def inner(self, role_name):
        return join2(sep1=" ", sep2=", ")[
            pre_text, reference[join(sep=", ")[label_authors, label_year]], post_text
        ]


@dataclass
class Textual(BaseReferenceStyle):
    """{cite:t}: "Lu et al. (2022a)"; several keys are joined by commas and "and"."""

    bracket: BracketStyle = field(
        default_factory=lambda: BracketStyle(
            left="(", right=")", sep=", ", sep2=" and ", last_sep=", and "
        )
    )

    def role_names(self):
        return [f"{cap}t{full}" for cap in ("", "c") for full in ("", "s")]

    def outer(self, role_name, children):
        return self.bracket.outer(children, brackets=False, capfirst="c" in role_name)

    def inner(self, role_name):
        return join(sep=" ")[
            label_authors,
            join[
                self.bracket.left,
                join2(sep1=" ", sep2=", ")[pre_text, reference[label_year], post_text],
                self.bracket.right,
            ],
        ]


@dataclass
class NamesOrYearOnly(BaseReferenceStyle):
    """{cite:author}, {cite:year}, {cite:label} and their bracketed forms, from the label."""

    bracket: BracketStyle = field(default_factory=lambda: ROUND)

    def role_names(self):
        return [
            f"{kind}{par}" for kind in ("author", "authors", "year", "label") for par in ("", "par")
        ] + ["cauthor", "cauthors"]

    def outer(self, role_name, children):
        return self.bracket.outer(
            children, brackets="par" in role_name, capfirst=role_name.startswith("c")
        )

    def inner(self, role_name):
        if role_name.startswith(("author", "cauthor")):
            return reference[label_authors]
        if role_name.startswith("year"):
            return reference[label_year]
        return reference[join(sep=" ")[label_authors, join["(", label_year, ")"]]]


@dataclass
class AuthorYearReferenceStyle(GroupReferenceStyle):
    """Every citation role of sphinxcontrib-bibtex, printing the bibliography's label."""

    def __post_init__(self):
        self.styles.extend([Parenthetical(), Textual(), NamesOrYearOnly()])
        super().__post_init__()


# ----------------------------------------------------------------------------- back links


class CitedIn(SphinxPostTransform):
    """After each entry of a bibliography page, links to the places that cite it (HTML)."""

    # after sphinxcontrib-bibtex's BibliographyTransform (5) has made the entries
    default_priority = 6
    formats = ("html",)

    def run(self, **kwargs) -> None:
        env = self.env
        domain = env.get_domain("cite")
        docname = env.docname
        entries = {
            citation.citation_id: citation.key
            for citation in domain.citations
            if citation.bibliography_key.docname == docname
        }
        if not entries:
            return
        order = {name: i for i, name in enumerate(get_docnames(env))}
        places = defaultdict(list)  # key -> [(order, line, docname, id)]
        for ref in domain.citation_refs:
            for target in ref.targets:
                position = (order.get(ref.docname, len(order)), ref.line or 0)
                places[target.key].append((*position, ref.docname, ref.citation_ref_id))
        for citation in self.document.findall(docutils.nodes.citation):
            key = next((entries[i] for i in citation["ids"] if i in entries), None)
            if key is None or not places.get(key):
                continue
            citation += self.cited_in(sorted(places[key]))

    def page_name(self, docname: str) -> str:
        """Chapter N for a numbered chapter, "Preface" for the root page, else the title."""
        number = self.env.toc_secnumbers.get(docname, {}).get("")
        if number:
            return "Chapter " + ".".join(map(str, number))
        if docname == self.config.root_doc:
            return "Preface"
        return self.env.titles[docname].astext()

    def link(self, docname: str, ref_id: str, text: str) -> docutils.nodes.reference:
        uri = self.app.builder.get_relative_uri(self.env.docname, docname) + "#" + ref_id
        return docutils.nodes.reference("", text, internal=True, refuri=uri)

    def cited_in(self, places) -> docutils.nodes.paragraph:
        by_page = defaultdict(list)
        for _, _, docname, ref_id in places:
            by_page[docname].append(ref_id)
        paragraph = docutils.nodes.paragraph(classes=["cited-in"])
        paragraph += docutils.nodes.Text("Cited in ")
        pages = list(dict.fromkeys(docname for _, _, docname, _ in places))
        for i, docname in enumerate(pages):
            if i:
                paragraph += docutils.nodes.Text(", ")
            ids = by_page[docname]
            name = self.page_name(docname)
            if len(ids) == 1:
                paragraph += self.link(docname, ids[0], name)
                continue
            paragraph += docutils.nodes.Text(name + " (")
            for j, ref_id in enumerate(ids):
                if j:
                    paragraph += docutils.nodes.Text(", ")
                paragraph += self.link(docname, ref_id, string.ascii_lowercase[j % 26])
            paragraph += docutils.nodes.Text(")")
        paragraph += docutils.nodes.Text(".")
        return paragraph


def setup(app: Sphinx) -> dict:
    for group, klass in (
        ("pybtex.style.formatting", AuthorYearStyle),
        ("pybtex.style.labels", AuthorYearLabelStyle),
        ("pybtex.style.sorting", AuthorYearSortingStyle),
    ):
        pybtex.plugin.register_plugin(group, STYLE_NAME, klass, force=True)
    sphinxcontrib.bibtex.plugin.register_plugin(
        "sphinxcontrib.bibtex.style.referencing", STYLE_NAME, AuthorYearReferenceStyle, force=True
    )
    app.add_post_transform(CitedIn)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
