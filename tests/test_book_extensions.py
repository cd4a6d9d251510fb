"""The book's own Sphinx extensions (book/_ext): citations, Chinese-language marks, unique ids.

These run without building the book: the citation styles are applied to book/references.bib
with pybtex directly, and the HTML pass to small pages written here.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
from pybtex.database import parse_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import author_year  # noqa: E402
import chinese_lang  # noqa: E402
import proof_ids  # noqa: E402


@pytest.fixture(scope="module")
def formatted():
    bibliography = parse_file(str(ROOT / "book" / "references.bib"))
    style = author_year.AuthorYearStyle()
    return list(style.format_entries(bibliography.entries.values()))


def test_labels_are_unique_and_name_authors_and_year(formatted):
    labels = [entry.label for entry in formatted]
    assert len(set(labels)) == len(labels), "two works share a label"
    by_key = {entry.key: entry.label for entry in formatted}
    assert by_key["ho2020ddpm"] == "Ho, Jain and Abbeel (2020)"
    assert by_key["ho2022cfg"] == "Ho and Salimans (2022)"
    assert by_key["efron2011tweedie"] == "Efron (2011)"
    assert by_key["karras2022edm"] == "Karras et al. (2022)"
    assert by_key["hyvarinen2005score"] == "Hyvärinen (2005)"  # TeX accent as Unicode


def test_same_authors_same_year_get_letters_in_order_of_appearance(formatted):
    by_key = {entry.key: entry.label for entry in formatted}
    # DPM-Solver (arXiv 2206.00927) appeared before DPM-Solver++ (arXiv 2211.01095).
    assert by_key["lu2022dpmsolver"] == "Lu et al. (2022a)"
    assert by_key["lu2022dpmsolverpp"] == "Lu et al. (2022b)"
    assert all(label[-2] not in "ab" for key, label in by_key.items() if not key.startswith("lu"))


def test_entries_are_sorted_as_their_labels_read(formatted):
    firsts = [entry.label.split()[0].rstrip(",").lower() for entry in formatted]
    assert firsts == sorted(firsts)
    # works with the same author part stand together, in order of year
    labels = [author_year.split_label(entry.label) for entry in formatted]
    for i in range(1, len(labels)):
        if labels[i][0] == labels[i - 1][0]:
            assert labels[i][1] > labels[i - 1][1], (labels[i - 1], labels[i])
    groups = [authors for authors, _ in labels]
    assert all(groups.index(a) == i or groups[i - 1] == a for i, a in enumerate(groups))


def test_no_tex_source_reaches_the_reader(formatted):
    for entry in formatted:
        text = entry.text.render_as("text")
        assert "\\" not in text and "{" not in text and "}" not in text, (entry.key, text)


def test_label_splits_into_authors_and_year():
    assert author_year.split_label("Lu et al. (2022a)") == ("Lu et al.", "2022a")
    assert author_year.split_label("Ho, Jain and Abbeel (2020)") == ("Ho, Jain and Abbeel", "2020")
    with pytest.raises(ValueError, match="label"):
        author_year.split_label("Lu 2022")


def test_chinese_runs_are_marked_outside_tags_and_scripts():
    page = (
        '<html lang="en"><head><title>扩散</title><script>var s = "扩散";</script></head>'
        '<body><dt id="term-扩散过程">扩散过程</dt><p>the article (逆扩散过程, 稳定性) ends'
        " here。</p><!-- 注释 --></body></html>"
    )
    marked = chinese_lang.mark_chinese(page)
    assert '<dt id="term-扩散过程"><span lang="zh">扩散过程</span></dt>' in marked
    assert '(<span lang="zh">逆扩散过程</span>, <span lang="zh">稳定性</span>)' in marked
    assert 'here<span lang="zh">。</span>' in marked
    assert "<title>扩散</title>" in marked and 'var s = "扩散";' in marked
    assert "<!-- 注释 -->" in marked
    assert chinese_lang.mark_chinese(marked) == marked  # a second pass changes nothing
    assert chinese_lang.mark_chinese("<p>no Chinese</p>") == "<p>no Chinese</p>"


def test_repeated_proof_and_exercise_ids_are_numbered():
    from docutils import nodes
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser
    from docutils.utils import new_document

    document = new_document("page", get_default_settings(Parser))
    boxes = []
    for ids in (["proof"], ["proof-content"], ["proof"], ["exercise-content"], ["proof"]):
        box = nodes.container(ids=list(ids))
        document += box
        boxes.append(box)
    for box in boxes:
        document.ids[box["ids"][0]] = box
    proof_ids.NumberProofIds(document).apply()
    assert [box["ids"] for box in boxes] == [
        ["proof"],
        ["proof-content"],
        ["proof-2"],
        ["exercise-content"],
        ["proof-3"],
    ]
    assert [("prf-proof" in box["classes"]) for box in boxes] == [True, False, True, False, True]
    assert document.ids["proof-3"] is boxes[4]
