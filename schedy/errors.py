"""Errors raised by schedy.

Every failure a user can cause raises one of these (or ``ValueError`` /
``TypeError`` for bad arguments), with a message that says what was wrong
and what to do about it::

    SchedyError
    ├── HTTPError                       (the original client's tree, kept so that
    │   ├── ClientError                  its ``except`` clauses catch what they did)
    │   │   ├── ClientRequestError
    │   │   │   ├── NotFoundError        an experiment or job that does not exist
    │   │   │   ├── ResourceExistsError  an experiment name that is already taken
    │   │   │   ├── NoJobError           next_job() has nothing to hand out
    │   │   │   ├── UnsafeUpdateError    a job changed under you (its lease was taken)
    │   │   │   ├── AuthenticationError  the server refused the token (also a ServerError)
    │   │   │   └── ReauthenticateError  (not raised by this schedy)
    │   │   └── UnhandledResponseError   (not raised by this schedy)
    │   └── ServerError                  the schedy server failed (HTTP backend)
    └── StorageError                     the store cannot be reached or is unusable
        └── SchemaVersionError           the store was written by a newer schedy

The ``HTTPError`` branch mirrors the original Schedy client, where every
error came from its web service: old code catching ``ClientRequestError``
still catches ``NoJobError`` and friends.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ClientRequestError",
    "HTTPError",
    "NoJobError",
    "NotFoundError",
    "ReauthenticateError",
    "ResourceExistsError",
    "SchedyError",
    "SchemaVersionError",
    "ServerError",
    "StorageError",
    "UnhandledResponseError",
    "UnsafeUpdateError",
]


class SchedyError(Exception):
    """Base class of every error schedy raises on purpose."""


class HTTPError(SchedyError):
    """The original client's base of errors from a transaction with its service."""


class ClientError(HTTPError):
    """The original client's base of errors caused on the client side."""


class ClientRequestError(ClientError):
    """The original client's base of errors caused by what a request asked."""


class NotFoundError(ClientRequestError):
    """The experiment or job asked for does not exist (or was deleted)."""


class ResourceExistsError(ClientRequestError):
    """An experiment with this name already exists."""


class NoJobError(ClientRequestError):
    """``next_job()`` has no job to hand out.

    Raised at once when nothing can come (empty manual queue, finished
    experiment) and after the timeout when every population member stayed busy.
    """


class UnsafeUpdateError(ClientRequestError):
    """The job was changed by someone else since this worker got it.

    Typically the worker's lease expired (it stopped heartbeating), the job was
    marked CRASHED and its population member handed to another worker.
    """


class ReauthenticateError(ClientRequestError):
    """The original client's "log in again"; schedy's tokens do not expire."""


class UnhandledResponseError(ClientError):
    """The original client's "the answer could not be understood"."""


class StorageError(SchedyError):
    """The store cannot be reached or used (bad URL, database down, locked)."""


class SchemaVersionError(StorageError):
    """The store's schema is newer than this schedy understands."""


class ServerError(HTTPError):
    """A schedy server answered with an unexpected failure."""


class AuthenticationError(ServerError, ClientRequestError):
    """A schedy server refused the request's token (a ``ClientRequestError`` in
    the original client, a ``ServerError`` in this one: both catch it)."""
