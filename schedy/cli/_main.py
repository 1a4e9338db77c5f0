"""The ``schedy`` command line as a whole: one parser of all commands, and one way to fail.

Each command module adds its own subparser; what they share is here: the
global ``--db``, the reading of words argparse alone cannot place (HP DIST
PARAMS triples after options; the command of ``run`` and ``worker``, which
starts after their own options, wherever those stand), and the promise that
a mistake ends as one ``schedy: error: …`` line and a non-zero exit status
(2 for a malformed command line, 1 otherwise), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Sequence

from .. import __version__
from ..db import DEFAULT_URL
from ..errors import SchedyError
from . import (
    _add,
    _export,
    _lineage,
    _list,
    _push,
    _replay,
    _report,
    _rm,
    _run,
    _server,
    _show,
    _token,
    _top,
    _worker,
)
from ._base import Commands, Store, UsageError

__all__ = ["main"]

#: Every command, in the order ``schedy --help`` lists them.
_COMMANDS = (
    *(_add, _push, _list, _show, _lineage, _top, _report, _replay),
    *(_rm, _export, _run, _worker, _server, _token),
)


def _common_parser() -> argparse.ArgumentParser:
    """``--db`` accepted after the command too; SUPPRESS keeps it from hiding the global one."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return common


def _build_parser() -> tuple[argparse.ArgumentParser, Commands]:
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
    for command in _COMMANDS:
        command.setup(commands, common)
    return parser, commands


# -- where the command of run and worker starts ---------------------------------

#: Words argparse reads as a (negative) number rather than an option.
_NUMBER = re.compile(r"-\d+|-\d*\.\d+")


def _is_option(word: str) -> bool:
    """Whether argparse would read ``word`` as an option (``--`` aside)."""
    return word.startswith("-") and word != "-" and not _NUMBER.fullmatch(word)


def _values_taken(parser: argparse.ArgumentParser, word: str) -> int | None:
    """How many words after ``word`` argparse gives to this option of ``parser``.

    None when ``word`` is none of its options. As argparse does, a long
    option may be abbreviated to a unique prefix, and ``--name=value``
    carries its value; an ambiguous prefix counts as an option of no value,
    so that argparse itself says what it could mean.
    """
    actions = parser._option_string_actions
    name, equals, _ = word.partition("=") if word.startswith("--") else (word, "", "")
    action = actions.get(name)
    if action is None and name.startswith("--") and parser.allow_abbrev:
        matches = {actions[option] for option in actions if option.startswith(name)}
        if len(matches) > 1:
            return 0
        action = matches.pop() if matches else None
    if action is None:
        return None
    if equals:
        return 0
    if action.nargs is None:
        return 1
    if isinstance(action.nargs, int):
        return action.nargs
    raise TypeError(f"{word}: an option before a command must take a fixed number of values")


def _command_index(parser: argparse.ArgumentParser, words: Sequence[str]) -> int | None:
    """The index of the COMMAND word (``run``, ``list``…), skipping global options."""
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            return None
        if not _is_option(word):
            return index
        index += 1 + (_values_taken(parser, word) or 0)
    return None


def _split_command(
    parser: argparse.ArgumentParser, words: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Split the words after ``run`` / ``worker`` into schedy's (options, NAME) and the command.

    Options may come before or after NAME. The command starts at the first
    word after NAME that is not one of ``parser``'s options (whose values go
    with them), or right after ``--``: from there on, every word is the
    command's. Unknown options before NAME are left for argparse to reject;
    after NAME, one would be taken for the command, so it is refused here.
    """
    ours: list[str] = []
    named = False
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            if named:
                return ours, list(words[index + 1 :])
            # `run [OPTIONS] -- NAME COMMAND…`: a name that starts with a dash.
            ours += words[index : index + 2]
            return ours, list(words[index + 2 :])
        if _is_option(word):
            taken = _values_taken(parser, word)
            if taken is None and named:
                raise UsageError(
                    f"unknown option {word!r} of schedy {parser.prog.split()[-1]}: its "
                    f"options go before the command; a command that starts with '-' goes "
                    f"after --, e.g. {parser.prog} NAME -- {shlex.quote(word)} …"
                )
            ours += words[index : index + 1 + (taken or 0)]
            index += 1 + (taken or 0)
        elif named:
            return ours, list(words[index:])
        else:
            ours.append(word)
            named = True
            index += 1
    return ours, []


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, placing what argparse alone cannot: the command of run and worker
    (see :func:`_split_command`) and HP DIST PARAMS triples that follow options."""
    parser, commands = _build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    at = _command_index(parser, words)
    if at is not None:
        subparser = commands.choices.get(words[at])
        if subparser is not None and subparser.get_default("takes_command"):
            ours, command = _split_command(subparser, words[at + 1 :])
            words = [*words[: at + 1], *ours]
    args, extras = parser.parse_known_args(words)
    if command is not None:
        args.cmd = command
    if extras:
        # A '*' positional is consumed once, so triples after an option land here.
        looks_like_option = [word for word in extras if re.match(r"-[^\d.]", word)]
        if not getattr(args, "takes_triples", False) or looks_like_option:
            parser.error(f"unrecognized arguments: {shlex.join(extras)}")
        args.hyperparameters = list(args.hyperparameters) + extras
    return args


# -- running it -------------------------------------------------------------------


def _error(message: str) -> None:
    one_line = " ".join(message.split()) or "unknown error"
    print(f"schedy: error: {one_line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``schedy`` command; return its exit status (the console script exits with it)."""
    try:
        args = _parse(argv)
        with Store(args.db) as store:
            return int(args.handler(args, store))
    except SystemExit as done:  # --help, --version, or argparse's usage error
        return done.code if isinstance(done.code, int) else int(done.code is not None)
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
