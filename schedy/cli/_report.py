"""``schedy report``: write one self-contained HTML file of what an experiment found.

The page (:mod:`schedy._report`) is what to look at after a run, or to send
to someone: scores by generation with the exploits, the lineage tree, the
best schedule against the population, donors, diversity, a timeline and a
sortable job table for PBT; the score's distribution, each hyperparameter
against it and parallel coordinates for searches. It opens offline.
"""

from __future__ import annotations

import argparse

from ..errors import SchedyError
from ._base import Commands, Store

__all__ = ["setup"]


def _report(args: argparse.Namespace, store: Store) -> int:
    try:
        from .._report import write_report
        from .._report._page import plotly_js

        plotly_js()  # a missing extra is said before the store is read
    except ImportError as error:
        raise SchedyError(str(error)) from None
    experiment = store.open().get_experiment(args.experiment)
    try:
        path = write_report(experiment, args.output, score=args.score)
    except OSError as error:
        raise SchedyError(f"cannot write the report to {args.output}: {error.strerror}") from None
    print(f"Report of {experiment.name!r}: {path}")
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy report`` to ``commands``."""
    parser = commands.add_parser(
        "report",
        parents=[common],
        help="write an HTML report of an experiment (one file, works offline)",
        description="Write one self-contained HTML file (plotly's JavaScript inlined, no "
        "request made) showing what the experiment found: for PBT the score over "
        "generations with the exploits, the lineage tree, the best schedule and the "
        "population's hyperparameters, donors, diversity, a timeline and a sortable, "
        "filterable job table; for searches the score's distribution, each "
        "hyperparameter against it and parallel coordinates. Needs plotly "
        "(pip install 'schedy[report]').",
    )
    parser.set_defaults(handler=_report)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument(
        "-o",
        "--output",
        default="report.html",
        metavar="FILE",
        help="the HTML file to write (default: report.html)",
    )
    parser.add_argument(
        "--score",
        metavar="RESULT",
        default=None,
        help="the result that ranks jobs (default: the experiment's result_name; for a "
        "search, the numeric result most jobs reported)",
    )
