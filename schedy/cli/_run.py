"""``schedy run``: any training command becomes a worker, without importing schedy.

A script that already takes its hyperparameters as options and prints its
metrics needs no change: run claims a job, expands ``%e %j %h`` in the
command, runs it, reads its results from a ``--- RESULTS ---`` block and
records the job DONE, or CRASHED if the command fails; then the next job.
Ctrl-C is passed on to the command through :mod:`schedy._processes` (as
``schedy worker`` passes it on), so its job ends CRASHED, never RUNNING.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._processes import GRACE_SECONDS, describe_exit, stop
from ..db import SchedyDB
from ..errors import NoJobError
from ..jobs import Job
from ._base import Commands, Store, UsageError, note
from ._table import text

__all__ = ["setup"]

_RESULTS_START = "--- RESULTS ---"
_RESULTS_END = "--- END RESULTS ---"


class CommandFailedError(Exception):
    """The training command of ``schedy run`` failed; its job is marked CRASHED."""


# -- the command's arguments ------------------------------------------------------

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
            args += ["--" + name.replace("_", "-"), text(value)]
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


# -- running it -------------------------------------------------------------------


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


def _echo(output: bytes) -> None:
    """Pass the command's output through (as bytes: it need not be UTF-8)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # stdout replaced by a text stream, e.g. redirect_stdout
        sys.stdout.write(output.decode(errors="replace"))
        sys.stdout.flush()
    else:
        buffer.write(output)
        buffer.flush()


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
            # Pass Ctrl-C on, echo the command's last words, end it if it lingers.
            stop([process], GRACE_SECONDS, output=_echo)
            raise
    if process.returncode != 0:
        raise CommandFailedError(f"{shlex.join(argv)} {describe_exit(process.returncode)}")
    return reader.results(allow_empty)


def _run(args: argparse.Namespace, store: Store) -> int:
    templates: list[str] = args.cmd
    if not templates:
        raise UsageError("give the training command to run after the experiment name")
    _expand_command(templates, None)  # a typo fails before a job is claimed
    db = store.open()
    experiment = db.get_experiment(args.experiment)
    while True:
        try:
            job = experiment.next_job(timeout=args.timeout)
        except NoJobError as error:
            note(str(error))
            return 0
        argv = _expand_command(templates, job)
        note(f"job {job.id}: {shlex.join(argv)}")
        try:
            with job:
                # update, not replace: a PBT job starts with its parent's results (model_path).
                job.results.update(
                    _run_command(argv, _child_env(db, job), args.allow_empty_results)
                )
        except CommandFailedError as error:
            note(f"job {job.id} CRASHED: {error}")
            if not args.ignore_errors:
                return 1
        if args.once:
            return 0


_DESCRIPTION = f"""\
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

Options of schedy run may come before or after the experiment's name. The
command starts at the first word after the name that is not one of them (an
option's value goes with it), or after --; from there on every word is the
command's, even one spelled like an option of schedy run.

examples:
  schedy run MNIST python train.py --out dump/%j.pt %h
  schedy run MNIST --once --timeout 60 python train.py %h
  schedy run MNIST --once -- ./train.sh --once   # ./train.sh gets --once
"""


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy run`` to ``commands``."""
    parser = commands.add_parser(
        "run",
        parents=[common],
        help="run a training command for each job",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # takes_command: _main splits the command off before argparse reads the rest.
    parser.set_defaults(handler=_run, takes_command=True)
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
        "cmd",
        nargs="*",
        metavar="COMMAND",
        help="the training command and its arguments (after the options, or after --)",
    )
