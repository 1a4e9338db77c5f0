"""``schedy server``: the REST server workers on many machines talk to.

It serves one SQL store (SQLite, PostgreSQL or MariaDB/MySQL) over HTTP,
so that workers hold a URL and a token instead of database credentials.
Each request runs the same :class:`~schedy.storage._base.Storage` method
the SQL backend runs in-process -- the scheduling decision included -- so a
worker behind the server schedules exactly like one on the database.

Start it with ``schedy --db postgresql://… server --port 8080`` (its admin
token from ``$SCHEDY_TOKEN`` or ``--token-file``), give each worker machine
a token of its own with ``schedy --db postgresql://… token create --role
worker``, and point workers at it with ``SchedyDB('http://host:8080')``
(token from ``$SCHEDY_TOKEN``). The API is described at ``/docs``
(OpenAPI; behind the token like the API). ``create_app(storage, token)``
gives the ASGI application, to run under another server or behind a proxy.
"""

from __future__ import annotations

from ._app import create_app, serve

__all__ = ["create_app", "serve"]
