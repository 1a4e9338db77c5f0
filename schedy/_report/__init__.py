"""``schedy report``: one self-contained HTML file of what an experiment found.

PBT's product is a schedule and the model it trained, and a population's
story (who copied whom, when diversity collapsed, which job ran when) reads
best as pictures. The report is one file to mail, attach to a ticket or
open years later offline: plotly's JavaScript is inlined and the page may
make no request (no CDN, no web fonts).

It is built in steps so that a server dashboard can show the same views
live: :func:`report_data` reads the experiment once into plain JSON data
(``_data``, no plotting library needed), :func:`figures` turns that data
into plotly specs as plain dicts (``_figures``), and :func:`render` lays
them out in the page (``_page``). Every view is computed from one pass over
the jobs held in memory (parents are looked up in a dict, never in the
store), so 10,000 jobs take a few seconds (``benchmarks/report_speed.py``).
plotly is imported only by :func:`render`, so ``import schedy`` never pays
for it, and without it the error names the extra to install.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ._data import report_data
from ._figures import figures
from ._page import render

if TYPE_CHECKING:
    from ..experiments import Experiment

__all__ = ["figures", "render", "report_data", "write_report"]


def write_report(
    experiment: Experiment, path: str | os.PathLike[str], *, score: str | None = None
) -> Path:
    """Write the HTML report of ``experiment`` to ``path``; return its absolute path.

    The file is self-contained (plotly's JavaScript inlined, no request
    made) and written atomically: a reader never sees half of it. ``score``
    names the result that ranks jobs (default: the experiment's
    ``result_name``, or for a search the numeric result most jobs
    reported). Needs plotly: ``pip install 'schedy[report]'``.
    """
    page = render(report_data(experiment, score=score))
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise ValueError(f"{path} is a folder: give the report's file name, e.g. report.html")
    descriptor, scratch = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(page)
        os.chmod(scratch, 0o644)
        os.replace(scratch, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise
    return target
