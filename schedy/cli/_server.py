"""``schedy server``: serve a database to workers that should hold no credentials for it.

Workers on other machines then use ``SchedyDB('http://HOST:PORT')`` and a
token; scheduling still runs next to the database, in the server. FastAPI
and uvicorn are an optional extra, so they are imported only here, when the
command runs.

The bootstrap token (admin) comes from ``--token-file`` or
``$SCHEDY_TOKEN``, which other users of the machine cannot read; ``--token``
still works but is visible to all of them in ``ps``, so it warns. Whitespace
around a token (the newline ending a file, say) is no part of it. Tokens
made with ``schedy token create`` need no restart.

Artifacts (the checkpoints of workers that share no file system) are kept in
``--artifacts DIR|URL``; over a SQLite file the default is a folder next to
it (``<file stem>-artifacts``), like the store itself one machine's; over
PostgreSQL there is none unless given, since the server's replicas must
share it (an fsspec URL, or a folder they all mount).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from .._wire import DEFAULT_MAX_BODY_BYTES
from ..db import _scheme, _sqlite_file
from ._base import Commands, Store, UsageError

__all__ = ["setup"]


def _token(args: argparse.Namespace) -> str | None:
    """The bootstrap token: from --token-file, --token (with a warning) or
    $SCHEDY_TOKEN, without surrounding whitespace; None when there is none."""
    if args.token is not None and args.token_file is not None:
        raise UsageError("give the server's token with --token or --token-file, not both")
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                found = file.read().strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise UsageError(f"cannot read the token file {args.token_file}: {reason}") from None
        if not found:
            raise UsageError(f"the token file {args.token_file} is empty")
        return found
    if args.token is not None:
        print(
            "schedy: warning: --token is visible to every user of this machine (ps, "
            "/proc); give it as $SCHEDY_TOKEN or --token-file instead",
            file=sys.stderr,
        )
        return str(args.token).strip()
    return os.environ.get("SCHEDY_TOKEN", "").strip() or None


def _artifacts(args: argparse.Namespace, url: str) -> str | None:
    """Where artifacts are kept: --artifacts, else next to a SQLite file, else nowhere."""
    if args.artifacts is not None:
        return str(args.artifacts) or None  # --artifacts '' turns them off
    path = _sqlite_file(url)
    if path is None:
        return None
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(os.path.dirname(os.path.abspath(path)), f"{stem}-artifacts")


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
    if not (math.isfinite(args.max_body_mb) and args.max_body_mb * 2**20 >= 1):
        raise UsageError(f"--max-body-mb must be a positive number, not {args.max_body_mb:g}")
    token = _token(args)
    from ..server._artifacts import parse_size

    try:
        max_artifact_bytes = parse_size(args.max_artifact_size)
    except ValueError as error:
        raise UsageError(f"--max-artifact-size: {error}") from None
    if args.artifact_keep_top_k < 0:
        raise UsageError(f"--artifact-keep-top-k must be >= 0, not {args.artifact_keep_top_k}")
    try:
        serve(
            store.open(create=True),
            host=args.host,
            port=args.port,
            token=token,
            log_level=args.log_level,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            max_body_bytes=int(args.max_body_mb * 2**20),
            announce=lambda line: print(line, file=sys.stderr, flush=True),
            artifacts=_artifacts(args, store.url),
            max_artifact_bytes=max_artifact_bytes,
            artifact_keep_top_k=args.artifact_keep_top_k,
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
            "workers elsewhere use SchedyDB('http://HOST:PORT') with a token in "
            "$SCHEDY_TOKEN instead of database credentials. Scheduling runs here, exactly "
            "as on the database. The admin token comes from $SCHEDY_TOKEN or --token-file; "
            "give workers tokens of their own with `schedy token create`. Without any "
            "token it only listens on this machine."
        ),
    )
    parser.set_defaults(handler=_server)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free)")
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="read the server's admin token from this file (default: $SCHEDY_TOKEN); a "
        "token, or tokens made by `schedy token create`, is required beyond loopback",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="the server's admin token on the command line: visible to other users in ps, "
        "so prefer $SCHEDY_TOKEN or --token-file",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_BYTES / 2**20,
        metavar="MB",
        help=f"the largest request body, in MiB (default {DEFAULT_MAX_BODY_BYTES // 2**20})",
    )
    parser.add_argument(
        "--artifacts",
        metavar="DIR|URL",
        help="keep the checkpoints of workers that share no file system in this folder or "
        "fsspec URL (s3://bucket/dir); default: a folder next to a SQLite file "
        "(<stem>-artifacts), none over PostgreSQL; '' turns them off",
    )
    parser.add_argument(
        "--max-artifact-size",
        default="10G",
        metavar="SIZE",
        help="the largest artifact (checkpoint) accepted, e.g. 512M or 20G (default 10G)",
    )
    parser.add_argument(
        "--artifact-keep-top-k",
        type=int,
        default=1,
        metavar="K",
        help="after each upload, keep the artifacts a job may continue from and those of "
        "the K best jobs, deleting the rest (default 1)",
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
