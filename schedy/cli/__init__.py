"""The ``schedy`` command: create experiments, queue jobs, watch them and run workers.

Every command is a thin layer over the public API (``SchedyDB``, experiments,
jobs), one module each (``_add``, ``_push``, ``_list``, ``_show``, ``_rm``,
``_run``, ``_worker``, ``_server``, ``_token``, ``_top``, ``_lineage``,
``_replay``, ``_report``, ``_export``) on what they all share (:mod:`._base`:
the store a command opens, its usage error); :mod:`._main` assembles them
into one parser. What ``list`` and ``show`` print is built by one table model
(:mod:`._table`), and command-line values are read by one small language
(:mod:`._args`), so every command names, renders and rejects things alike.
"""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
