"""``schedy token``: the tokens a ``schedy server`` accepts, made, listed and revoked.

Each worker machine, dashboard or person gets a token of its own with the
least role it needs -- ``read`` (look only), ``worker`` (claim jobs, renew
leases, report results, add jobs) or ``admin`` (everything) -- so that a
leaked worker token cannot delete an experiment, and one token can be
revoked without restarting the server or touching the others.

These commands work on the server's *database* (``schedy --db
postgresql://… token create``), never through the server: the database
keeps only each secret's SHA-256 (``_wire.hash_secret``), so the secret is
printed once, at creation, alone on stdout (``export SCHEDY_TOKEN=$(schedy
token create --name gpu-1)``). A running server sees a new or revoked token
within a few seconds.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable
from datetime import datetime

from tabulate import tabulate

from .. import _wire
from .._records import TokenRole
from ..db import _scheme
from ..storage._base import Storage
from ._base import Commands, Store, UsageError, emit

__all__ = ["setup"]


def _tokens(store: Store, create: bool = False) -> Storage:
    """The storage of ``store``, checked to be a database: a server does not hand
    out its tokens."""
    if _scheme(store.url) in ("http", "https"):
        raise UsageError(
            f"--db {store.url} is a schedy server: `schedy token` works on the server's "
            "database, so run it against the server's database (schedy --db "
            "postgresql://… token …, or the sqlite:/// file the server serves)"
        )
    return store.open(create=create)._storage


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")


def _create(args: argparse.Namespace, store: Store) -> int:
    """Make a token and print its secret, once."""
    role = TokenRole(args.role)
    name = args.name or f"{role}-{secrets.token_hex(3)}"
    secret = _wire.new_secret()
    _tokens(store, create=True).create_token(name, role, _wire.hash_secret(secret))
    print(secret, flush=True)
    print(
        f"schedy: created {role} token {name!r}. Its secret, printed on stdout, is shown "
        "this once and not stored: hand it over as $SCHEDY_TOKEN (a worker machine, a "
        f"dashboard); revoke it with `schedy token revoke {name}`",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace, store: Store) -> int:
    """Every token, revoked ones included, oldest first (never their secrets)."""
    tokens = _tokens(store).list_tokens()
    rows = [
        [token.name, token.role, _when(token.created_at), _when(token.revoked_at)]
        for token in tokens
    ]
    if rows:
        emit(tabulate(rows, ["name", "role", "created", "revoked"], tablefmt="plain"))
    return 0


def _revoke(args: argparse.Namespace, store: Store) -> int:
    """Revoke a token for good: servers refuse it within a few seconds."""
    _tokens(store).revoke_token(args.name)
    print(f"schedy: revoked token {args.name!r}", file=sys.stderr)
    return 0


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace, Store], int]:
    def handler(args: argparse.Namespace, store: Store) -> int:
        raise UsageError(f"{parser.prog} needs a command: create, list or revoke")

    return handler


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy token`` (create, list, revoke) to ``commands``."""
    parser = commands.add_parser(
        "token",
        parents=[common],
        help="make, list and revoke the tokens a schedy server accepts",
        description=(
            "Tokens of a schedy server, kept in its database (give --db the database the "
            "server serves, not the server's URL). Roles: read (look only), worker (claim "
            "jobs, renew leases, report results, add jobs), admin (everything)."
        ),
    )
    parser.set_defaults(handler=_usage(parser))
    actions = parser.add_subparsers(title="commands", metavar="COMMAND")
    create = actions.add_parser(
        "create",
        parents=[common],
        help="make a token and print its secret (once)",
        description="Make a token and print its secret on stdout, once: it is not stored.",
    )
    create.set_defaults(handler=_create)
    create.add_argument("--name", help="a name to list and revoke it by (default: ROLE-xxxxxx)")
    create.add_argument(
        "--role",
        choices=[role.value for role in TokenRole],
        default=TokenRole.WORKER.value,
        help="what it may do (default worker)",
    )
    listing = actions.add_parser(
        "list", parents=[common], help="list tokens: name, role, created, revoked"
    )
    listing.set_defaults(handler=_list)
    revoke = actions.add_parser(
        "revoke", parents=[common], help="revoke a token for good (servers refuse it in seconds)"
    )
    revoke.set_defaults(handler=_revoke)
    revoke.add_argument("name", metavar="NAME", help="the token's name (see `schedy token list`)")
