"""Errors raised by schedy.

Every failure a user can cause raises one of these (or ``ValueError`` /
``TypeError`` for bad arguments), with a message that says what was wrong
and what to do about it::

    SchedyError
    ├── NotFoundError           an experiment or job that does not exist
    ├── ResourceExistsError     an experiment name that is already taken
    ├── NoJobError              next_job() has nothing to hand out
    ├── UnsafeUpdateError       a job changed under you (e.g. its lease was taken)
    ├── StorageError            the store cannot be reached or is unusable
    │   └── SchemaVersionError  the store was written by a newer schedy
    └── ServerError             the schedy server failed (HTTP backend)
        └── AuthenticationError the server refused the token
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "NoJobError",
    "NotFoundError",
    "ResourceExistsError",
    "SchedyError",
    "SchemaVersionError",
    "ServerError",
    "StorageError",
    "UnsafeUpdateError",
]


class SchedyError(Exception):
    """Base class of every error schedy raises on purpose."""


class NotFoundError(SchedyError):
    """The experiment or job asked for does not exist (or was deleted)."""


class ResourceExistsError(SchedyError):
    """An experiment with this name already exists."""


class NoJobError(SchedyError):
    """``next_job()`` has no job to hand out.

    Raised at once when nothing can come (empty manual queue, finished
    experiment) and after the timeout when every population member stayed busy.
    """


class UnsafeUpdateError(SchedyError):
    """The job was changed by someone else since this worker got it.

    Typically the worker's lease expired (it stopped heartbeating), the job was
    marked CRASHED and its population member handed to another worker.
    """


class StorageError(SchedyError):
    """The store cannot be reached or used (bad URL, database down, locked)."""


class SchemaVersionError(StorageError):
    """The store's schema is newer than this schedy understands."""


class ServerError(SchedyError):
    """A schedy server answered with an unexpected failure."""


class AuthenticationError(ServerError):
    """A schedy server refused the request's token."""
