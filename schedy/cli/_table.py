"""One table model for everything ``list``, ``show`` and the other commands print.

Fields are named, sorted, selected and rendered in one place, so a field
spelled ``result.x`` in ``list -s`` means the same column ``show`` prints,
and a value reads the same wherever it appears (strings bare, the rest as
JSON, numbers aligned).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from tabulate import tabulate

from .. import _lineage
from .._values import canonical, is_number
from ..experiments import Experiment, PopulationBasedTraining
from ..jobs import Job
from ._base import UsageError

__all__ = [
    "EXPERIMENT_BRIEF",
    "JOB_BRIEF",
    "SCHEDY",
    "Column",
    "Table",
    "describe",
    "describe_experiment",
    "describe_job",
    "experiment_row",
    "job_row",
    "schedule_table",
    "text",
]

#: A table column: (category, name), e.g. ("result", "loss"). The category
#: disambiguates a hyperparameter and a result of the same name.
Column = tuple[str, str]

#: The category of the fields schedy itself keeps (id, status, member…).
SCHEDY = "schedy"
JOB_BRIEF: list[Column] = [(SCHEDY, "id"), (SCHEDY, "status")]
EXPERIMENT_BRIEF: list[Column] = [(SCHEDY, "name"), (SCHEDY, "status"), (SCHEDY, "scheduler")]
#: The integrations' per-epoch metric histories (``{metric: [value per epoch]}``):
#: they grow with every generation, so tables leave them out unless asked for.
HISTORY: Column = ("result", "history")
#: In a drawn table, a longer cell is cut (a path or a list must not widen every row).
MAX_CELL = 60

# -- values -------------------------------------------------------------------


def text(value: Any) -> str:
    """A value as the user would type it: strings bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, allow_nan=True)


def _cell(value: Any, width: int | None = None) -> Any:
    """A value for tabulate: numbers stay numbers so they align and round; text
    longer than ``width`` is cut with an ellipsis."""
    if value is None or is_number(value):
        return value
    shown = text(value)
    if width is not None and len(shown) > width:
        return shown[: width - 1] + "…"
    return shown


def summarize_history(value: Any) -> Any:
    """A results history as one short line: ``loss, val_acc: 120 epochs``."""
    if not isinstance(value, Mapping) or not value:
        return value
    lengths = {len(v) if isinstance(v, list) else 1 for v in value.values()}
    epochs = f"{lengths.pop()} epochs" if len(lengths) == 1 else "epochs"
    return f"{', '.join(map(str, value))}: {epochs} (the per-epoch history)"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers numerically first, then strings, then other JSON values by their text."""
    if is_number(value):
        return (0, float(value))
    if isinstance(value, str):
        return (1, value)
    return (2, canonical(value))


def _timestamp(seconds: float) -> str | None:
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")


def describe(obj: Mapping[str, Any]) -> str:
    """``{"normal": {"mean": 0, "std": 5}}`` as ``normal {"mean": 0, "std": 5}`` (CLI spelling)."""
    return " ".join(f"{name} {json.dumps(args, allow_nan=True)}" for name, args in obj.items())


# -- tables -------------------------------------------------------------------


class Table:
    """Rows of ``{(category, name): value}`` that list and show sort, select and render.

    A field is named by its bare name when that is unambiguous (``loss``) and
    by ``category.name`` otherwise (``hyperparameter.x`` / ``result.x``), as in
    the original client; both spellings are accepted by ``-s`` and ``-f``.
    """

    def __init__(self, rows: Iterable[Mapping[Column, Any]] = ()) -> None:
        self.columns: dict[Column, None] = {}  # an ordered set: first appearance wins
        self.rows: list[dict[Column, Any]] = []
        for row in rows:
            self.add_row(row)

    def add_row(self, row: Mapping[Column, Any]) -> None:
        self.columns.update(dict.fromkeys(row))
        self.rows.append(dict(row))

    def names(self) -> dict[Column, str]:
        bare = Counter(name for _, name in self.columns)
        return {
            column: column[1] if bare[column[1]] == 1 else ".".join(column)
            for column in self.columns
        }

    def resolve(self, field: str) -> Column:
        """The column a user's field name means; UsageError naming the fields that exist."""
        for column in self.columns:
            if ".".join(column) == field:
                return column
        matches = [column for column in self.columns if column[1] == field]
        if len(matches) == 1:
            return matches[0]
        if matches:
            spelled = " or ".join(".".join(column) for column in matches)
            raise UsageError(f"field {field!r} is ambiguous: use {spelled}")
        known = ", ".join(self.names().values()) or "none (nothing to list)"
        raise UsageError(f"unknown field {field!r}; the fields are: {known}")

    def sort(self, fields: Sequence[str], decreasing: bool = False) -> None:
        """Sort by ``fields`` (first one most significant); missing and NaN values go last."""
        if not self.rows:
            return
        for column in reversed([self.resolve(field) for field in fields]):
            present = [row for row in self.rows if not _is_missing(row.get(column))]
            missing = [row for row in self.rows if _is_missing(row.get(column))]
            present.sort(key=lambda row: _sort_key(row[column]), reverse=decreasing)
            self.rows = present + missing

    def select(self, fields: Sequence[str]) -> Table:
        """A table of only these fields (by user name), in this order."""
        if not self.rows:
            return self
        return self.only([self.resolve(field) for field in fields])

    def drop(self, column: Column) -> Table:
        """This table without ``column`` (if it has it)."""
        if column not in self.columns:
            return self
        return self.only([c for c in self.columns if c != column])

    def only(self, columns: Sequence[Column]) -> Table:
        present = [column for column in columns if column in self.columns]
        table = Table()
        table.columns = dict.fromkeys(present)
        table.rows = [{column: row.get(column) for column in present} for row in self.rows]
        return table

    def render(self, fmt: str = "psql", headers: bool = True) -> str:
        if not self.rows:
            return ""
        columns = list(self.columns)
        width = None if fmt == "plain" else MAX_CELL
        cells = [[_cell(row.get(column), width) for column in columns] for row in self.rows]
        # Text such as a job id '1e10' must not be read as a number.
        text_columns = [
            index
            for index in range(len(columns))
            if any(isinstance(line[index], str) for line in cells)
        ]
        names = self.names()
        rendered: str = tabulate(
            cells,
            [names[column] for column in columns] if headers else (),
            tablefmt=fmt,
            missingval="",
            disable_numparse=text_columns,
        )
        return rendered

    def render_paragraphs(self) -> str:
        names = self.names()
        paragraphs = [
            "\n".join(
                f"{names[column]}: {text(value)}"
                for column, value in row.items()
                if value is not None
            )
            for row in self.rows
        ]
        return "\n\n".join(paragraphs)


# -- rows ---------------------------------------------------------------------

#: Configuration that ``show`` prints, in this order (only those the kind has).
_CONFIG_FIELDS = (
    "objective",
    "result_name",
    "exploit",
    "population_size",
    "max_generations",
    "seed",
    "max_member_crashes",
)


def experiment_row(exp: Experiment, details: bool = False) -> dict[Column, Any]:
    """One experiment; ``details`` adds its whole configuration (for show)."""
    row: dict[Column, Any] = {
        (SCHEDY, "name"): exp.name,
        (SCHEDY, "status"): exp.status,
        (SCHEDY, "scheduler"): exp._KIND,
    }
    if exp.unreadable is not None:
        row[(SCHEDY, "status")] = f"UNREADABLE ({exp.status})"
        row[(SCHEDY, "error")] = exp.unreadable
        return row
    config = exp._config()
    if details:
        for key in _CONFIG_FIELDS:
            if key in config:
                value = config[key]
                row[("config", key)] = describe(value) if isinstance(value, dict) else value
    distributions = config.get("distributions") or config.get("initial_distributions") or {}
    for name, dist in distributions.items():
        row[("hyperparameter", name)] = describe(dist)
    if details:
        for name, strategy in config.get("explore", {}).items():
            row[("explore", name)] = describe(strategy)
    return row


def job_row(job: Job, lineage: bool = False, details: bool = False) -> dict[Column, Any]:
    """One job; ``lineage`` adds the PBT fields, ``details`` times and error (for show)."""
    row: dict[Column, Any] = {(SCHEDY, "id"): job.id, (SCHEDY, "status"): job.status}
    if lineage:
        row[(SCHEDY, "member")] = job.member
        row[(SCHEDY, "generation")] = job.generation
        row[(SCHEDY, "parent")] = job.parent_id
        row[(SCHEDY, "exploited_from")] = job.exploited_from
    if details:
        row[(SCHEDY, "created")] = _timestamp(job.created_at)
        row[(SCHEDY, "updated")] = _timestamp(job.updated_at)
    row.update({("hyperparameter", name): value for name, value in job.hyperparameters.items()})
    row.update({("result", name): value for name, value in job.results.items()})
    if details:
        row[(SCHEDY, "error")] = job.error
    return row


def describe_experiment(exp: Experiment) -> str:
    """An experiment and its whole configuration, one ``field: value`` per line."""
    return Table([experiment_row(exp, details=True)]).render_paragraphs()


def describe_job(job: Job) -> str:
    """A job with its lineage (for PBT), times and error, one ``field: value`` per line
    (its per-epoch history summed up in one line)."""
    lineage = isinstance(job.experiment, PopulationBasedTraining)
    row = job_row(job, lineage=lineage, details=True)
    if HISTORY in row:
        row[HISTORY] = summarize_history(row[HISTORY])
    return Table([row]).render_paragraphs()


def schedule_table(
    steps: Sequence[Mapping[str, Any]], result_name: str | None, *, fold: bool = False
) -> Table:
    """A lineage (:meth:`schedy.Experiment.lineage` steps) as a table: per step its
    generation, job id, member, the job it copied (an exploit), the hyperparameters
    that changed and its ``result_name``.

    With ``fold``, runs of steps with unchanged hyperparameters on one member are
    one row: its generations as ``first-last``, ``jobs`` how many it folds, the
    id and score of its last job.
    """
    rows = _lineage.changes(_lineage.fold(steps) if fold else steps)
    table = Table()
    for step in rows:
        row: dict[Column, Any] = {}
        if fold:
            first, last = step["generations"]
            row[(SCHEDY, "generation")] = first if first == last else f"{first}-{last}"
            row[(SCHEDY, "jobs")] = step["jobs"]
            row[(SCHEDY, "id")] = step["last_job_id"]
        else:
            row[(SCHEDY, "generation")] = step["generation"]
            row[(SCHEDY, "id")] = step["job_id"]
        row[(SCHEDY, "member")] = step["member"]
        row[(SCHEDY, "exploited_from")] = step["exploited_from"]
        for name, value in step["hyperparameters"].items():
            row[("hyperparameter", name)] = value
        row[("result", result_name or "score")] = step["score"]
        table.add_row(row)
    return table
