"""SQL storage on SQLAlchemy: SQLite (the embedded default), PostgreSQL, MariaDB/MySQL.

Four rooms, one query style each:

- ``_schema``: tables, the schema version and the migrations (SQLAlchemy Core);
- ``_statements``: every statement the storage runs, as raw SQL compiled once
  per dialect and run on the DBAPI cursor (the scheduling hot path);
- ``_transactions``: engines, connections, one transaction per call, retries
  on contention and lost connections, driver errors as schedy errors;
- ``_storage``: :class:`SQLStorage`, the ``Storage`` methods, which apply the
  scheduling layer's plans.
"""

from __future__ import annotations

from ._storage import SQLStorage
from ._transactions import CommitLost as _CommitLost
from ._transactions import IntegrityConflict as _IntegrityConflict

__all__ = ["SQLStorage", "_CommitLost", "_IntegrityConflict"]
