"""Framework integrations: each imports its framework lazily; nothing in the core imports them.

- :mod:`schedy.integrations.lightning`: ``SchedyCallback`` runs the whole PBT
  worker loop inside a Lightning ``Trainer`` (``lightning`` or
  ``pytorch_lightning``);
- :mod:`schedy.integrations.torch`: ``restore``/``save``/``report``/
  ``apply_hyperparameters`` for a hand-written torch loop;
- :mod:`schedy.integrations._core`: the framework-agnostic logic they share
  (metrics, epoch budget, optimizer hyperparameters, checkpoint paths,
  reporting), for writing another integration;
- :mod:`schedy.integrations._checkpoints`: pruning checkpoints no job needs.
"""

from __future__ import annotations

from ._core import MissingMetricError

__all__ = ["MissingMetricError"]
