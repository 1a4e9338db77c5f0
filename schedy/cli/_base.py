"""What every command module stands on: the store it opens, its usage error, its setup's shape.

The command modules import this and never :mod:`._main`, which imports them:
the parser's assembly sits above the commands and this sits below them, so
the package has no import cycle.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TypeAlias

from ..db import SchedyDB, _resolve_url, _sqlite_file
from ..errors import SchedyError

__all__ = ["Commands", "Store", "UsageError", "emit", "note"]


class UsageError(Exception):
    """The command line itself is wrong (exit status 2)."""


class Store:
    """The store a command works on, opened only when the command needs it.

    Arguments are checked first, so a typo never touches the store; and only
    ``add`` and ``server`` may create a SQLite file: any other command on a
    missing file (a mistyped --db, or run from the wrong folder) is an error,
    instead of an empty database left behind. They alone pass ``create`` to
    :class:`SchedyDB`, so an existing empty (truncated) file, or another
    program's SQLite database, is refused by every other command.
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
            self._db = SchedyDB(self.url, create=create)
        return self._db

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._db is not None:
            self._db.close()


#: The ``schedy COMMAND`` subparsers, to which each command module's ``setup`` adds its own.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def emit(text: str) -> None:
    """Print ``text`` unless it is empty (an empty table prints nothing, not a blank line)."""
    if text:
        print(text)


def note(message: str) -> None:
    """A progress line of a long-running command, on stderr so stdout stays the command's."""
    print(f"schedy: {message}", file=sys.stderr, flush=True)
