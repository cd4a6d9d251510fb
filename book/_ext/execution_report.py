"""Sphinx extension for the book's execution report page (book/execution_report.md).

``{build-machine}`` describes the machine that builds the book, read at build time (processor,
cores, memory, Python and library versions), so the page never states a machine it was not
built on. MyST-NB's ``{nb-exec-table}`` lists each notebook's run time; a build that renders
the outputs stored in the notebooks (``execute_notebooks: off``, the strict build of
``make test``) executes nothing and has no times to list, and then the table is replaced by a
sentence that says so instead of being shown empty. Its status column says "succeeded" or
"failed" in words, marked by a check or a cross that ``execution-status.css`` draws, instead of
the emoji MyST-NB writes (which a browser without an emoji font shows as an empty box).
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata

from docutils import nodes
from myst_nb.ext.execution_tables import ExecutionStatsNode
from myst_nb.sphinx_ import NbMetadataCollector
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.docutils import SphinxDirective

DEVICE_ENV = "DIFFUSION_DEVICE"  # read by diffusion_core.device.get_device


def processor_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:  # macOS
        return subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine() or "unknown"


def core_count() -> str:
    logical = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    return f"{logical} logical" + (
        f", {usable} available to the build" if usable != logical else ""
    )


def memory() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return "unknown"
    return f"{total / 2**30:.1f} GiB"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_facts(execution_mode: str) -> list[tuple[str, str]]:
    device = os.environ.get(DEVICE_ENV)
    return [
        ("Processor", processor_name()),
        ("Cores", core_count()),
        ("Memory", memory()),
        ("Operating system", platform.platform()),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("PyTorch", version("torch")),
        ("NumPy", version("numpy")),
        ("diffusion_core", version("diffusion-core")),
        ("Device for the notebooks", f"{device} ({DEVICE_ENV})" if device else "cpu (default)"),
        ("Notebook execution", execution_mode),
        ("Built", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]


def two_column_table(rows: list[tuple[str, str]]) -> nodes.table:
    table = nodes.table(classes=["colwidths-auto"])
    group = nodes.tgroup(cols=2)
    table += group
    group += [nodes.colspec(colwidth=1), nodes.colspec(colwidth=3)]
    body = nodes.tbody()
    group += body
    for name, value in rows:
        row = nodes.row()
        row += nodes.entry("", nodes.paragraph(text=name))
        row += nodes.entry("", nodes.paragraph(text=value))
        body += row
    return table


class BuildMachine(SphinxDirective):
    """A table describing the machine that runs this build."""

    def run(self) -> list[nodes.Node]:
        self.env.note_reread()  # describe the machine of every build, not of the first one
        return [two_column_table(machine_facts(self.config.nb_execution_mode))]


class ExplainMissingRunTimes(SphinxPostTransform):
    """Replace an empty ``{nb-exec-table}`` by a sentence saying why it is empty."""

    default_priority = 7  # before MyST-NB fills the table (8)

    def run(self, **kwargs) -> None:
        executed = any(
            data.get("exec_data") for data in NbMetadataCollector.get_doc_data(self.env).values()
        )
        if executed:
            return
        for node in list(self.document.findall(ExecutionStatsNode)):
            node.replace_self(self.no_run_times())

    def no_run_times(self) -> nodes.note:
        mode = self.config.nb_execution_mode
        paragraph = nodes.paragraph()
        paragraph += [
            nodes.Text(
                "No notebook was executed in this build: it renders the outputs stored in the "
                "notebooks (notebook execution mode "
            ),
            nodes.literal(text=mode),
            nodes.Text("), so there are no run times to report. A build with "),
            nodes.literal(text="make book"),
            nodes.Text(" executes every notebook and lists their times here."),
        ]
        return nodes.note("", paragraph)


class StatusInWords(SphinxPostTransform):
    """Write MyST-NB's status emoji of the run-time table as words, marked by CSS."""

    default_priority = 9  # after MyST-NB fills the table (8)
    STATUS = {"\u2705": "succeeded", "\u274c": "failed"}

    def run(self, **kwargs) -> None:
        for table in self.document.findall(nodes.table):
            for text in list(table.findall(nodes.Text)):
                status = self.STATUS.get(text.astext().strip())
                if status is not None:
                    text.parent.replace(
                        text,
                        nodes.inline(text=status, classes=["exec-status", f"exec-{status}"]),
                    )


def setup(app: Sphinx) -> dict:
    app.add_directive("build-machine", BuildMachine)
    app.add_post_transform(ExplainMissingRunTimes)
    app.add_post_transform(StatusInWords)
    app.add_css_file("execution-status.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
