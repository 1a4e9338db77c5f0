"""The ``schedy`` command: create experiments, queue jobs, watch them and run workers.

Every subcommand is a thin layer over the public API (``SchedyDB``, experiments,
jobs). What ``list`` and ``show`` print is built by one :class:`_Table`, so
fields are named, sorted and rendered the same way everywhere. A mistake the
user can make ends as one ``schedy: error: …`` line on stderr and a non-zero
exit status (2 for a malformed command line, 1 otherwise), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from tabulate import tabulate

from . import __version__
from ._records import MemberRecord
from ._values import canonical, is_number
from ._workers import run_workers
from .db import DEFAULT_URL, SchedyDB, _resolve_url, _scheme, _sqlite_file
from .errors import NoJobError, SchedyError
from .experiments import Experiment, ManualSearch, PopulationBasedTraining, RandomSearch
from .jobs import Job
from .pbt import _EXPLORE_STRATEGIES, MAXIMIZE, MINIMIZE, ExploreStrategy, Truncate
from .random import _DISTRIBUTION_TYPES, Distribution

__all__ = ["main"]

_T = TypeVar("_T")

#: A table column: (category, name), e.g. ("result", "loss"). The category
#: disambiguates a hyperparameter and a result of the same name.
Column = tuple[str, str]

_SCHEDY = "schedy"
_JOB_BRIEF: list[Column] = [(_SCHEDY, "id"), (_SCHEDY, "status")]
_EXPERIMENT_BRIEF: list[Column] = [(_SCHEDY, "name"), (_SCHEDY, "status"), (_SCHEDY, "scheduler")]

#: How long an interrupted training command may take to clean up before it is killed.
_INTERRUPT_GRACE_S = 30.0

_RESULTS_START = "--- RESULTS ---"
_RESULTS_END = "--- END RESULTS ---"


class UsageError(Exception):
    """The command line itself is wrong (exit status 2)."""


class CommandFailedError(Exception):
    """The training command of ``schedy run`` failed; its job is marked CRASHED."""


# -- values -------------------------------------------------------------------


def _text(value: Any) -> str:
    """A value as the user would type it: strings bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, allow_nan=True)


def _cell(value: Any) -> Any:
    """A value for tabulate: numbers stay numbers so they align and round."""
    if value is None or is_number(value):
        return value
    return _text(value)


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


def _describe(obj: Mapping[str, Any]) -> str:
    """``{"normal": {"mean": 0, "std": 5}}`` as ``normal {"mean": 0, "std": 5}`` (CLI spelling)."""
    return " ".join(f"{name} {json.dumps(args, allow_nan=True)}" for name, args in obj.items())


# -- tables -------------------------------------------------------------------


class _Table:
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

    def select(self, fields: Sequence[str]) -> _Table:
        """A table of only these fields (by user name), in this order."""
        if not self.rows:
            return self
        return self.only([self.resolve(field) for field in fields])

    def only(self, columns: Sequence[Column]) -> _Table:
        present = [column for column in columns if column in self.columns]
        table = _Table()
        table.columns = dict.fromkeys(present)
        table.rows = [{column: row.get(column) for column in present} for row in self.rows]
        return table

    def render(self, fmt: str = "psql", headers: bool = True) -> str:
        if not self.rows:
            return ""
        columns = list(self.columns)
        cells = [[_cell(row.get(column)) for column in columns] for row in self.rows]
        # Text such as a job id '1e10' must not be read as a number.
        text_columns = [
            index
            for index in range(len(columns))
            if any(isinstance(line[index], str) for line in cells)
        ]
        names = self.names()
        text: str = tabulate(
            cells,
            [names[column] for column in columns] if headers else (),
            tablefmt=fmt,
            missingval="",
            disable_numparse=text_columns,
        )
        return text

    def render_paragraphs(self) -> str:
        names = self.names()
        paragraphs = [
            "\n".join(
                f"{names[column]}: {_text(value)}"
                for column, value in row.items()
                if value is not None
            )
            for row in self.rows
        ]
        return "\n\n".join(paragraphs)


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


def _experiment_row(exp: Experiment, details: bool = False) -> dict[Column, Any]:
    """One experiment; ``details`` adds its whole configuration (for show)."""
    row: dict[Column, Any] = {
        (_SCHEDY, "name"): exp.name,
        (_SCHEDY, "status"): exp.status,
        (_SCHEDY, "scheduler"): exp._KIND,
    }
    config = exp._config()
    if details:
        for key in _CONFIG_FIELDS:
            if key in config:
                value = config[key]
                row[("config", key)] = _describe(value) if isinstance(value, dict) else value
    distributions = config.get("distributions") or config.get("initial_distributions") or {}
    for name, dist in distributions.items():
        row[("hyperparameter", name)] = _describe(dist)
    if details:
        for name, strategy in config.get("explore", {}).items():
            row[("explore", name)] = _describe(strategy)
    return row


def _job_row(job: Job, lineage: bool = False, details: bool = False) -> dict[Column, Any]:
    """One job; ``lineage`` adds the PBT fields, ``details`` times and error (for show)."""
    row: dict[Column, Any] = {(_SCHEDY, "id"): job.id, (_SCHEDY, "status"): job.status}
    if lineage:
        row[(_SCHEDY, "member")] = job.member
        row[(_SCHEDY, "generation")] = job.generation
        row[(_SCHEDY, "parent")] = job.parent_id
        row[(_SCHEDY, "exploited_from")] = job.exploited_from
    if details:
        row[(_SCHEDY, "created")] = _timestamp(job.created_at)
        row[(_SCHEDY, "updated")] = _timestamp(job.updated_at)
    row.update({("hyperparameter", name): value for name, value in job.hyperparameters.items()})
    row.update({("result", name): value for name, value in job.results.items()})
    if details:
        row[(_SCHEDY, "error")] = job.error
    return row


def _describe_experiment(exp: Experiment) -> str:
    return _Table([_experiment_row(exp, details=True)]).render_paragraphs()


def _describe_job(job: Job) -> str:
    lineage = isinstance(job.experiment, PopulationBasedTraining)
    return _Table([_job_row(job, lineage=lineage, details=True)]).render_paragraphs()


def _emit(text: str) -> None:
    if text:
        print(text)


# -- parsing the command line's JSON arguments ---------------------------------


def _groups(words: Sequence[str], size: int, what: str, shape: str) -> list[list[str]]:
    """Split ``words`` into groups of ``size`` whose first words (names) are unique."""
    if len(words) % size:
        raise UsageError(
            f"{what} must be given as {shape} ({size} words each), got {len(words)} "
            f"word(s): {shlex.join(words)}"
        )
    groups = [list(words[start : start + size]) for start in range(0, len(words), size)]
    seen: set[str] = set()
    for name, *_ in groups:
        if name in seen:
            raise UsageError(f"{what}: {name!r} is given twice")
        seen.add(name)
    return groups


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        hint = f"; to pass a string, quote it: '\"{text}\"'" if text[:1].isalpha() else ""
        raise UsageError(f"invalid JSON for {what}: {text!r} ({error}){hint}") from None


def _pairs(words: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``x 1 y '[2, 3]'`` as ``{"x": 1, "y": [2, 3]}``."""
    return {
        name: _json_arg(value, f"{what} {name!r}")
        for name, value in _groups(words or [], 2, f"{what}s", "name/value pairs")
    }


def _build_named(
    registry: Mapping[str, Callable[[Any], _T]], kind: str, params: str, what: str, name: str
) -> _T:
    """Build the ``kind`` (a distribution or a strategy) for hyperparameter ``name``."""
    factory = registry.get(kind)
    if factory is None:
        known = ", ".join(sorted(registry))
        raise UsageError(f"unknown {what} {kind!r} for {name!r}; choose from: {known}")
    args = _json_arg(params, f"{name!r} ({kind})")
    try:
        return factory(args)
    except (TypeError, ValueError) as error:
        raise UsageError(f"invalid {what} for {name!r}: {error}") from None


_DISTRIBUTIONS: dict[str, Callable[[Any], Distribution]] = {
    name: cls._from_args for name, cls in _DISTRIBUTION_TYPES.items()
}
_STRATEGIES: dict[str, Callable[[Any], ExploreStrategy]] = {
    name: cls._from_params for name, cls in _EXPLORE_STRATEGIES.items()
}


def _distributions(words: Sequence[str]) -> dict[str, Distribution]:
    """``x normal '{"mean": 0, "std": 5}' …`` as ``{"x": Normal(0, 5), …}``."""
    return {
        name: _build_named(_DISTRIBUTIONS, kind, params, "distribution", name)
        for name, kind, params in _groups(words, 3, "hyperparameters", "HP DIST PARAMS triples")
    }


# -- add ----------------------------------------------------------------------


def _build_manual(args: argparse.Namespace) -> Experiment:
    return ManualSearch(args.experiment, status=args.status)


def _build_random(args: argparse.Namespace) -> Experiment:
    return RandomSearch(
        args.experiment, _distributions(args.hyperparameters), status=args.status, seed=args.seed
    )


def _build_pbt(args: argparse.Namespace) -> Experiment:
    initial = _distributions(args.hyperparameters)
    if initial and args.population_size is None:
        raise UsageError(
            "initial distributions need --population-size N: how many members to draw from them"
        )
    explore_words = [word for triple in args.explore for word in triple]
    explore = {
        name: _build_named(_STRATEGIES, kind, params, "explore strategy", name)
        for name, kind, params in _groups(
            explore_words, 3, "--explore", "HP STRATEGY PARAMS triples"
        )
    }
    try:
        exploit = Truncate(args.truncate)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--truncate: {error}") from None
    return PopulationBasedTraining(
        args.experiment,
        args.objective,
        args.result_name,
        exploit=exploit,
        explore=explore,
        initial_distributions=initial,
        population_size=args.population_size,
        status=args.status,
        max_generations=args.max_generations,
        seed=args.seed,
        max_member_crashes=args.max_member_crashes,
    )


def _cmd_add(args: argparse.Namespace, store: _Store) -> int:
    experiment: Experiment = args.build(args)
    store.open(create=True).add_experiment(experiment)
    _emit(_describe_experiment(experiment))
    return 0


# -- push ---------------------------------------------------------------------


def _cmd_push(args: argparse.Namespace, store: _Store) -> int:
    hyperparameters = _pairs(args.hyperparameters, "hyperparameter")
    results = _pairs(args.results, "result")
    experiment = store.open().get_experiment(args.experiment)
    job = experiment.add_job(hyperparameters, status=args.status, results=results)
    _emit(_describe_job(job))
    return 0


# -- list ---------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace, store: _Store) -> int:
    if args.experiment is None:
        table = _Table(_experiment_row(exp) for exp in store.open().get_experiments())
        brief = _EXPERIMENT_BRIEF
    else:
        experiment = store.open().get_experiment(args.experiment)
        lineage = isinstance(experiment, PopulationBasedTraining)
        table = _Table(_job_row(job, lineage=lineage) for job in experiment.all_jobs())
        brief = _JOB_BRIEF
    if args.sort:
        table.sort(args.sort, decreasing=args.decreasing)
    elif args.decreasing:
        table.rows.reverse()
    if args.field:
        table = table.select(args.field)
    elif not (args.table or args.paragraph):
        table = table.only(brief)
    if args.paragraph:
        _emit(table.render_paragraphs())
    elif args.table:
        _emit(table.render())
    else:
        _emit(table.render("plain", headers=False))
    return 0


# -- show ---------------------------------------------------------------------


def _member_status(member: MemberRecord) -> str:
    if member.ended:
        return "ended"
    return "busy" if member.busy_id is not None else "ready"


def _population_table(exp: PopulationBasedTraining, members: list[MemberRecord]) -> _Table:
    """One row per member: where it stands and its latest ``result_name``."""
    table = _Table()
    for member in members:
        head = None if member.head_id is None else exp.get_job(member.head_id)
        score = None if head is None else head.results.get(exp.result_name)
        table.add_row(
            {
                (_SCHEDY, "member"): member.index,
                (_SCHEDY, "generation"): member.head_generation,
                ("result", exp.result_name): score,
                (_SCHEDY, "status"): _member_status(member),
                (_SCHEDY, "crashes"): member.crashes,
                (_SCHEDY, "head"): member.head_id,
            }
        )
    return table


def _schedule_table(exp: PopulationBasedTraining, lineage: list[Job]) -> _Table:
    """The best job's ancestry: per step, the hyperparameters that changed and the result."""
    table = _Table()
    previous: dict[str, Any] = {}
    for step in lineage:
        row: dict[Column, Any] = {
            (_SCHEDY, "generation"): step.generation,
            (_SCHEDY, "id"): step.id,
            (_SCHEDY, "member"): step.member,
            (_SCHEDY, "exploited_from"): step.exploited_from,
        }
        for name, value in step.hyperparameters.items():
            if name not in previous or _text(previous[name]) != _text(value):
                row[("hyperparameter", name)] = value
        row[("result", exp.result_name)] = step.results.get(exp.result_name)
        table.add_row(row)
        previous = step.hyperparameters
    return table


def _show_population(exp: PopulationBasedTraining) -> None:
    members = exp.population()
    if not members:
        print("\nPopulation: no member yet (workers create them: `schedy run`, next_job()).")
        return
    size = exp.population_size or len(members)
    print(f"\nPopulation ({len(members)} of {size} members):")
    print(_population_table(exp, members).render())
    scored = [
        (member.score, member.head_id)
        for member in members
        if member.score is not None and member.head_id is not None
    ]
    if not scored:
        print(f"\nNo member has reported {exp.result_name!r} yet.")
        return
    best = exp.get_job(max(scored)[1])
    value = _text(best.results.get(exp.result_name))
    print(
        f"\nBest: job {best.id} (member {best.member}, generation {best.generation}, "
        f"{exp.result_name} = {value}). Its hyperparameter schedule:"
    )
    print(_schedule_table(exp, best.lineage()).render())


def _show_experiment(experiment: Experiment) -> None:
    _emit(_describe_experiment(experiment))
    if isinstance(experiment, PopulationBasedTraining):
        _show_population(experiment)


def _watch(store: _Store, name: str, interval: float) -> int:
    """Redraw ``show NAME`` every ``interval`` seconds until the experiment is
    DONE; Ctrl-C is the normal way out, so it ends quietly with status 0."""
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            experiment = store.open().get_experiment(name)  # its status, afresh
            print(
                f"{clear}{datetime.now():%Y-%m-%d %H:%M:%S}  {name}: {experiment.status} "
                f"(every {interval:g} s until DONE; Ctrl-C stops watching)"
            )
            _show_experiment(experiment)
            sys.stdout.flush()
            if experiment.status == Experiment.DONE:
                return 0
            time.sleep(interval)
            if not clear:
                print()
    except KeyboardInterrupt:
        print()
        return 0


def _cmd_show(args: argparse.Namespace, store: _Store) -> int:
    if args.watch is not None:
        if args.job is not None:
            raise UsageError("--watch follows a whole experiment: leave out the job id")
        if not (math.isfinite(args.watch) and args.watch > 0):
            raise UsageError(f"--watch takes a number of seconds > 0, not {args.watch:g}")
        return _watch(store, args.experiment, args.watch)
    experiment = store.open().get_experiment(args.experiment)
    if args.job is None:
        _show_experiment(experiment)
        return 0
    job = experiment.get_job(args.job)
    _emit(_describe_job(job))
    if isinstance(experiment, PopulationBasedTraining) and job.member is not None:
        print("\nIts hyperparameter schedule (how this job's model was trained):")
        print(_schedule_table(experiment, job.lineage()).render())
    return 0


# -- rm -----------------------------------------------------------------------


def _confirm(question: str) -> bool:
    """Ask on the terminal; no answer (EOF, no stdin) means no."""
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def _cmd_rm(args: argparse.Namespace, store: _Store) -> int:
    experiment = store.open().get_experiment(args.experiment)
    delete: Callable[[], None]
    if args.job is None:
        what = f"experiment {experiment.name!r} and all its jobs"
        description = _describe_experiment(experiment)
        delete = experiment.delete
    else:
        job = experiment.get_job(args.job)
        what, description, delete = f"job {job.id}", _describe_job(job), job.delete
    if not args.force:
        print(description)
        if not _confirm(f"Remove {what}?"):
            print(f"Not removed: {what}.")
            return 0
    delete()
    return 0


# -- run ----------------------------------------------------------------------

_FORMAT_CODE = re.compile(r"%(.?)", re.DOTALL)
_FORMATTERS: dict[str, Callable[[Job], str]] = {
    "e": lambda job: job.experiment.name,
    "j": lambda job: job.id,
    "%": lambda job: "%",
}


def _hyperparameter_args(hyperparameters: Mapping[str, Any]) -> list[str]:
    """``{"num_layers": 3, "act": "relu"}`` as ``--num-layers 3 --act relu`` (None skipped)."""
    args: list[str] = []
    for name, value in hyperparameters.items():
        if value is not None:
            args += ["--" + name.replace("_", "-"), _text(value)]
    return args


def _expand_arg(template: str, job: Job | None) -> list[str]:
    """Expand one argument of the training command; with ``job=None``, only check it."""
    if template == "%h":
        return [] if job is None else _hyperparameter_args(job.hyperparameters)

    def substitute(match: re.Match[str]) -> str:
        code = match.group(1)
        if code == "h":
            raise UsageError(
                f"%h expands to several arguments, so it must be an argument on its own, "
                f"not part of {template!r}"
            )
        formatter = _FORMATTERS.get(code)
        if formatter is None:
            found = f"unknown format %{code}" if code else "a lone % at the end"
            raise UsageError(
                f"{found} in {template!r}: use %e (experiment), %j (job id), "
                "%h (hyperparameters) or %% (a literal %)"
            )
        return "" if job is None else formatter(job)

    return [_FORMAT_CODE.sub(substitute, template)]


def _expand_command(templates: Sequence[str], job: Job | None) -> list[str]:
    return [arg for template in templates for arg in _expand_arg(template, job)]


def _child_env(db: SchedyDB, job: Job) -> dict[str, str]:
    """The job for the training command, in case it wants more than ``%h`` gives."""
    env = dict(os.environ)
    env.update(
        SCHEDY_URL=db.url,
        SCHEDY_EXPERIMENT=job.experiment.name,
        SCHEDY_JOB_ID=job.id,
        SCHEDY_JOB_HYPERPARAMETERS=json.dumps(job.hyperparameters, allow_nan=True),
        SCHEDY_JOB_RESULTS=json.dumps(job.results, allow_nan=True),
    )
    return env


class _ResultsReader:
    """Collects the last ``--- RESULTS ---`` block of a command's output, line by line."""

    def __init__(self) -> None:
        self.text: str | None = None
        self._inside = False

    def feed(self, raw: bytes) -> None:
        line = raw.decode(errors="replace")
        marker = line.strip()
        if marker == _RESULTS_START:
            self.text, self._inside = "", True
        elif marker == _RESULTS_END:
            self._inside = False
        elif self._inside:
            self.text = (self.text or "") + line

    def results(self, allow_empty: bool) -> dict[str, Any]:
        if self.text is None or not self.text.strip():
            if allow_empty:
                return {}
            raise CommandFailedError(
                f"the command printed no results: print a JSON object between "
                f"'{_RESULTS_START}' and '{_RESULTS_END}' lines, or pass --allow-empty-results"
            )
        try:
            parsed = json.loads(self.text)
        except ValueError as error:
            raise CommandFailedError(f"the command's results are not valid JSON: {error}") from None
        if not isinstance(parsed, dict):
            raise CommandFailedError(
                f"the command's results must be a JSON object of name: value, not {parsed!r}"
            )
        return parsed


def _terminal_sent_sigint() -> bool:
    """Whether a Ctrl-C in the terminal already reached the child (our foreground group)."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except (OSError, AttributeError):
            return False
    return False


def _echo(output: bytes) -> None:
    """Pass the command's output through (as bytes: it need not be UTF-8)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # stdout replaced by a text stream, e.g. redirect_stdout
        sys.stdout.write(output.decode(errors="replace"))
        sys.stdout.flush()
    else:
        buffer.write(output)
        buffer.flush()


def _interrupt(process: subprocess.Popen[bytes]) -> None:
    """Pass Ctrl-C on to the child, echo its last words, kill it if it lingers."""
    try:
        if process.poll() is None and not _terminal_sent_sigint():
            process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=_INTERRUPT_GRACE_S)
        _echo(rest or b"")
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: stop now
        process.kill()
        process.wait()


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _run_command(argv: list[str], env: dict[str, str], allow_empty: bool) -> dict[str, Any]:
    """Run the training command, echoing its stdout, and return the results it printed."""
    reader = _ResultsReader()
    sys.stdout.flush()
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    except OSError as error:
        raise CommandFailedError(f"cannot run {argv[0]!r}: {error.strerror}") from None
    with process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                _echo(line)
                reader.feed(line)
            process.wait()
        except KeyboardInterrupt:
            _interrupt(process)
            raise
    if process.returncode != 0:
        raise CommandFailedError(f"{shlex.join(argv)} {_exit_description(process.returncode)}")
    return reader.results(allow_empty)


def _note(message: str) -> None:
    print(f"schedy: {message}", file=sys.stderr, flush=True)


def _cmd_run(args: argparse.Namespace, store: _Store) -> int:
    templates = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not templates:
        raise UsageError("give the training command to run after the experiment name")
    _expand_command(templates, None)  # a typo fails before a job is claimed
    db = store.open()
    experiment = db.get_experiment(args.experiment)
    while True:
        try:
            job = experiment.next_job(timeout=args.timeout)
        except NoJobError as error:
            _note(str(error))
            return 0
        argv = _expand_command(templates, job)
        _note(f"job {job.id}: {shlex.join(argv)}")
        try:
            with job:
                # update, not replace: a PBT job starts with its parent's results (model_path).
                job.results.update(
                    _run_command(argv, _child_env(db, job), args.allow_empty_results)
                )
        except CommandFailedError as error:
            _note(f"job {job.id} CRASHED: {error}")
            if not args.ignore_errors:
                return 1
        if args.once:
            return 0


# -- the parser -----------------------------------------------------------------

_DIST_HELP = (
    "hyperparameters as HP DIST PARAMS triples: a name, a distribution among {} and its "
    """parameters as JSON, e.g. x normal '{{"mean": 0, "std": 5}}' lr loguniform """
    """'{{"low": 1e-5, "high": 0.1}}' act choice '{{"values": ["relu", "tanh"]}}' """
    "batch_size const 32"
).format(", ".join(_DISTRIBUTION_TYPES))

_RUN_DESCRIPTION = f"""\
Run a training command for each job of an experiment, until there is none left.

The command's arguments may contain:
    %e  the experiment's name
    %j  the job's id
    %h  the hyperparameters, as --name value options (an argument on its own;
        underscores become hyphens: num_layers -> --num-layers; strings are
        passed as they are, other values as JSON; null values are left out)
    %%  a literal %

The command also finds the job in its environment:
    SCHEDY_URL                  the store URL schedy run uses
    SCHEDY_EXPERIMENT           the experiment's name
    SCHEDY_JOB_ID               the job's id
    SCHEDY_JOB_HYPERPARAMETERS  the hyperparameters, as a JSON object
    SCHEDY_JOB_RESULTS          the job's results when it starts, as a JSON
                                object: a PBT job starts with its parent's,
                                e.g. the "model_path" of the checkpoint to load

The command's stdout is passed through. It reports its results by printing a
JSON object between these lines (the last line may be left out if nothing
follows):

    {_RESULTS_START}
    {{"accuracy": 0.93, "model_path": "checkpoints/job-id.pt"}}
    {_RESULTS_END}

They update the job's results. A command that fails (non-zero exit status,
no or invalid results) marks its job CRASHED and stops schedy run, unless
--ignore-errors. Ctrl-C is passed on to the command; its job ends CRASHED.
Options of schedy run go before the experiment's name: everything after it is
the command.

example: schedy run MNIST python train.py --out dump/%j.pt %h
"""


def _common_parser() -> argparse.ArgumentParser:
    """``--db`` accepted after the command too; SUPPRESS keeps it from hiding the global one."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return common


def _setup_add(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "add",
        parents=[common],
        help="create an experiment",
        description="Create an experiment: a manual queue, a random search or PBT.",
    )
    parser.set_defaults(handler=_cmd_add)
    parser.add_argument("experiment", metavar="NAME", help="name of the new experiment")
    parser.add_argument(
        "-s",
        "--status",
        default=Experiment.RUNNING,
        choices=(Experiment.RUNNING, Experiment.DONE),
        help="status of the new experiment (default: RUNNING)",
    )
    schedulers = parser.add_subparsers(
        title="schedulers", dest="scheduler", metavar="SCHEDULER", required=True
    )
    manual = schedulers.add_parser("manual", help="hand out jobs queued by `schedy push`")
    manual.set_defaults(build=_build_manual)

    random_search = schedulers.add_parser("random", help="random search")
    random_search.set_defaults(build=_build_random, takes_triples=True)
    random_search.add_argument(
        "hyperparameters", nargs="+", metavar="HP DIST PARAMS", help=_DIST_HELP
    )
    random_search.add_argument("--seed", type=int, help="make the draws reproducible")

    pbt = schedulers.add_parser(
        "pbt",
        help="Population Based Training",
        description="Population Based Training: the triples are the initial distributions.",
        epilog="""example: schedy add MNIST pbt max accuracy --population-size 20 """
        """--explore learning_rate perturb '{"minFactor": 0.8, "maxFactor": 1.2}' """
        """learning_rate loguniform '{"low": 1e-6, "high": 0.1}' """
        """num_layers choice '{"values": [1, 2, 3]}'""",
    )
    pbt.set_defaults(build=_build_pbt, takes_triples=True)
    pbt.add_argument("objective", choices=(MINIMIZE, MAXIMIZE), help="minimize or maximize")
    pbt.add_argument("result_name", metavar="RESULT_NAME", help="the result members are ranked by")
    pbt.add_argument("hyperparameters", nargs="*", metavar="HP DIST PARAMS", help=_DIST_HELP)
    pbt.add_argument("--population-size", type=int, metavar="N", help="number of members")
    pbt.add_argument(
        "--truncate",
        type=float,
        default=0.2,
        metavar="P",
        help="bottom members (this proportion) copy top ones (default: 0.2)",
    )
    pbt.add_argument("--max-generations", type=int, metavar="N", help="jobs per member")
    pbt.add_argument("--seed", type=int, help="make a single-worker run reproducible")
    pbt.add_argument(
        "--max-member-crashes",
        type=int,
        default=3,
        metavar="N",
        help="crashes in a row after which a member is replaced (default: 3)",
    )
    pbt.add_argument(
        "--explore",
        nargs=3,
        action="append",
        default=[],
        metavar=("HP", "STRATEGY", "PARAMS"),
        help=(
            f"how to vary HP after an exploit: a strategy among "
            f"{', '.join(_EXPLORE_STRATEGIES)} and its JSON parameters, e.g. --explore lr "
            """perturb '{"minFactor": 0.8, "maxFactor": 1.2}' (repeatable)"""
        ),
    )


def _setup_push(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "push",
        parents=[common],
        help="add a job to an experiment",
        description="Add a job (queued, by default) to an experiment. Values are JSON.",
    )
    parser.set_defaults(handler=_cmd_push)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument(
        "-p",
        "--hyperparameters",
        nargs="+",
        required=True,
        metavar="NAME VALUE",
        help="""hyperparameters as name/value pairs, e.g. -p lr 0.01 layers '[512, 256]'""",
    )
    parser.add_argument(
        "-r",
        "--results",
        nargs="+",
        metavar="NAME VALUE",
        help="""results as name/value pairs, e.g. -r accuracy 0.9 loss '[0.9, 0.8]'""",
    )
    parser.add_argument(
        "-s",
        "--status",
        default=Job.QUEUED,
        choices=(Job.QUEUED, Job.RUNNING, Job.DONE, Job.CRASHED, Job.PRUNED),
        help="status of the job (default: QUEUED)",
    )


def _setup_list(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "list",
        parents=[common],
        help="list experiments, or the jobs of one",
        description="List the experiments or, given NAME, its jobs.",
    )
    parser.set_defaults(handler=_cmd_list)
    parser.add_argument("experiment", nargs="?", metavar="NAME", help="list this experiment's jobs")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("-t", "--table", action="store_true", help="every field, as a table")
    view.add_argument(
        "-p", "--paragraph", action="store_true", help="every field, one paragraph per row"
    )
    parser.add_argument(
        "-s",
        "--sort",
        action="append",
        metavar="FIELD",
        help="sort by FIELD (repeatable: the first is the main key); missing values go last",
    )
    parser.add_argument("-d", "--decreasing", action="store_true", help="sort in decreasing order")
    parser.add_argument(
        "-f",
        "--field",
        action="append",
        metavar="FIELD",
        help="show only FIELD (repeatable); spell it category.name when ambiguous, e.g. result.x",
    )


def _setup_show(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "show",
        parents=[common],
        help="describe an experiment (with its PBT population) or a job",
        description="Describe an experiment — for PBT with its population and the best "
        "job's hyperparameter schedule — or one job. --watch follows a running experiment.",
    )
    parser.set_defaults(handler=_cmd_show)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument(
        "job",
        nargs="?",
        metavar="JOB",
        help="the id of one of its jobs (for PBT, shown with its hyperparameter schedule)",
    )
    parser.add_argument(
        "-w",
        "--watch",
        nargs="?",
        type=float,
        const=5.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 5) until the experiment is DONE",
    )


def _setup_rm(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "rm",
        parents=[common],
        help="remove an experiment or a job",
        description="Remove an experiment and all its jobs, or one job.",
    )
    parser.set_defaults(handler=_cmd_rm)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument("job", nargs="?", metavar="JOB", help="remove only this job")
    parser.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")


def _setup_run(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "run",
        parents=[common],
        help="run a training command for each job",
        description=_RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=_cmd_run)
    parser.add_argument("--once", action="store_true", help="run one job only")
    parser.add_argument(
        "--allow-empty-results",
        action="store_true",
        help="accept a command that prints no results",
    )
    parser.add_argument(
        "--ignore-errors",
        action="store_true",
        help="go on with the next job when the command fails",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="how long to wait while every PBT member is busy (default: as long as it takes)",
    )
    parser.add_argument("experiment", metavar="NAME", help="the experiment to pull jobs from")
    parser.add_argument(
        "cmd", nargs=argparse.REMAINDER, metavar="COMMAND …", help="the training command"
    )


def _cmd_worker(args: argparse.Namespace, store: _Store) -> int:
    """Launch N copies of a worker command on one experiment, until it is done."""
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError(
            "worker needs the worker command, e.g. schedy worker NAME -- python train.py"
        )
    db = store.open()
    db.get_experiment(args.experiment)  # fail early, with the usual message, on a typo
    gpus = None if args.gpus is None else [g for g in args.gpus.split(",") if g and g != "none"]
    return run_workers(
        command, args.experiment, workers=args.workers, db=db.url, gpus=gpus, grace=args.grace
    )


def _setup_worker(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "worker",
        parents=[common],
        help="run N local worker processes of a command",
        description=(
            "Start --workers copies of COMMAND, a worker that pulls jobs itself "
            "(e.g. a script looping on experiment.next_job()), and wait until they end. "
            "Each gets SCHEDY_URL, SCHEDY_EXPERIMENT, SCHEDY_WORKER_INDEX and, on a machine "
            "with GPUs, its own CUDA_VISIBLE_DEVICES. Ctrl-C stops them all; their jobs end "
            "CRASHED, none stays RUNNING."
        ),
    )
    parser.set_defaults(handler=_cmd_worker)
    parser.add_argument("--workers", type=int, default=2, help="number of processes (default 2)")
    parser.add_argument(
        "--gpus",
        metavar="IDS",
        default=None,
        help="GPU ids to spread workers over, e.g. 0,1 ('none': no GPU; default: detected)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after Ctrl-C, how long workers may take to stop before being killed",
    )
    parser.add_argument("experiment", metavar="NAME", help="the experiment the workers serve")
    parser.add_argument(
        "cmd", nargs="*", metavar="-- COMMAND …", help="the worker command, after --"
    )


def _cmd_server(args: argparse.Namespace, store: _Store) -> int:
    """Serve the store named by --db to workers on other machines."""
    if _scheme(store.url) in ("http", "https"):
        raise UsageError(
            f"--db {store.url} is a schedy server: `schedy server` serves a database; "
            "give it sqlite:///path.db or postgresql://…"
        )
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {args.port}")
    try:
        from .server import serve
    except ImportError as error:
        raise UsageError(str(error)) from None
    token = args.token or os.environ.get("SCHEDY_TOKEN") or None
    try:
        serve(
            store.open(create=True),
            host=args.host,
            port=args.port,
            token=token,
            log_level=args.log_level,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            announce=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: not a failure
        print("schedy server: stopped", file=sys.stderr)
    return 0


def _setup_server(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "server",
        parents=[common],
        help="serve the store over HTTP to workers on other machines",
        description=(
            "Serve the store given by --db (SQLite or PostgreSQL) over a REST API, so "
            "workers elsewhere use SchedyDB('http://HOST:PORT') with the token in "
            "$SCHEDY_TOKEN instead of database credentials. Scheduling runs here, exactly "
            "as on the database. Without a token it only listens on this machine."
        ),
    )
    parser.set_defaults(handler=_cmd_server)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free)")
    parser.add_argument(
        "--token",
        default=None,
        help="the token clients must send (default: $SCHEDY_TOKEN); required beyond loopback",
    )
    parser.add_argument(
        "--ssl-certfile",
        metavar="PEM",
        help="serve HTTPS with this certificate (with --ssl-keyfile), so tokens travel encrypted",
    )
    parser.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log level (default warning; info logs every request)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schedy",
        description="Schedy: hyperparameter scheduling, centred on Population Based Training.",
    )
    parser.add_argument("--version", action="version", version=f"schedy {__version__}")
    parser.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help=f"the store: sqlite:///path.db, postgresql://… or http(s)://host:port "
        f"(default: $SCHEDY_URL, else {DEFAULT_URL})",
    )
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    common = _common_parser()
    for setup in (
        _setup_add,
        _setup_push,
        _setup_list,
        _setup_show,
        _setup_rm,
        _setup_run,
        _setup_worker,
        _setup_server,
    ):
        setup(commands, common)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting HP DIST PARAMS triples follow options (argparse alone would not)."""
    parser = _build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    worker_command: list[str] = []
    if "--" in words and "worker" in words[: words.index("--")]:
        # argparse drops a subcommand's `--`; keep the worker command apart.
        split = words.index("--")
        words, worker_command = words[:split], words[split + 1 :]
    args, extras = parser.parse_known_args(words)
    if worker_command:
        args.cmd = list(args.cmd) + worker_command
    if extras:
        # A '*' positional is consumed once, so triples after an option land here.
        looks_like_option = [word for word in extras if re.match(r"-[^\d.]", word)]
        if not getattr(args, "takes_triples", False) or looks_like_option:
            parser.error(f"unrecognized arguments: {shlex.join(extras)}")
        args.hyperparameters = list(args.hyperparameters) + extras
    return args


class _Store:
    """The store a command works on, opened only when the command needs it.

    Arguments are checked first, so a typo never touches the store; and only
    ``add`` may create a SQLite file: any other command on a missing file
    (a mistyped --db, or run from the wrong folder) is an error, instead of
    an empty database left behind.
    """

    def __init__(self, url: str | None) -> None:
        self.url = _resolve_url(url)
        self._db: SchedyDB | None = None

    def open(self, create: bool = False) -> SchedyDB:
        if self._db is None:
            path = _sqlite_file(self.url)
            if not create and path is not None and not os.path.exists(path):
                raise SchedyError(
                    f"no schedy store at {path}: create an experiment there "
                    "with `schedy add`, or name your store with --db URL or $SCHEDY_URL"
                )
            self._db = SchedyDB(self.url)
        return self._db

    def __enter__(self) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._db is not None:
            self._db.close()


def _error(message: str) -> None:
    one_line = " ".join(message.split()) or "unknown error"
    print(f"schedy: error: {one_line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``schedy`` command; return its exit status (the console script exits with it)."""
    try:
        args = _parse(argv)
    except SystemExit as done:  # --help, --version, or argparse's usage error
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    try:
        with _Store(args.db) as store:
            return int(args.handler(args, store))
    except UsageError as error:
        _error(str(error))
        return 2
    except (SchedyError, ValueError, TypeError) as error:
        _error(str(error))
        return 1
    except KeyboardInterrupt:
        print("schedy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `schedy list | head` closed our stdout: stop quietly, and keep Python's
        # shutdown flush from complaining too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
