"""``schedy server``: serve a database to workers that should hold no credentials for it.

Workers on other machines then use ``SchedyDB('http://HOST:PORT')`` and a
token; scheduling still runs next to the database, in the server. FastAPI
and uvicorn are an optional extra, so they are imported only here, when the
command runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..db import _scheme
from ._base import Commands, Store, UsageError

__all__ = ["setup"]


def _server(args: argparse.Namespace, store: Store) -> int:
    """Serve the store named by --db to workers on other machines."""
    if _scheme(store.url) in ("http", "https"):
        raise UsageError(
            f"--db {store.url} is a schedy server: `schedy server` serves a database; "
            "give it sqlite:///path.db or postgresql://…"
        )
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {args.port}")
    try:
        from ..server import serve
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


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy server`` to ``commands``."""
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
    parser.set_defaults(handler=_server)
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
