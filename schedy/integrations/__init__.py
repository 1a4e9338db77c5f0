"""Framework integrations: each imports its framework lazily; nothing below the CLI imports them.

- :mod:`schedy.integrations.lightning`: ``SchedyCallback`` runs the whole PBT
  worker loop inside a Lightning ``Trainer`` (``lightning`` or
  ``pytorch_lightning``);
- :mod:`schedy.integrations.keras`: the same ``SchedyCallback`` for Keras 3's
  ``model.fit``;
- :mod:`schedy.integrations.torch`: ``restore``/``save``/``report``/
  ``apply_hyperparameters`` for a hand-written torch loop;
- :mod:`schedy.integrations.transformers`: ``SchedyCallback`` and ``train``
  for a HuggingFace ``Trainer``;
- :mod:`schedy.integrations.trackers`: TensorBoard and MLflow, one continuing
  curve per member (``schedy export``), on :mod:`._tracking` (what a tracker
  is given for a finished job, pure data);
- :mod:`schedy.integrations._distributed`: one job shared by every rank of a
  ``torch.distributed`` run; :mod:`._lightning_defaults`: Lightning's own logs
  and checkpoints named after jobs;
- :mod:`schedy.integrations._core`: the framework-agnostic logic they share
  (metrics, epoch budget, optimizer hyperparameters, checkpoint paths,
  reporting, and ``JobCallback``, the half of a callback that does not
  depend on its framework), for writing another integration;
- :mod:`schedy.integrations._checkpoints`: pruning checkpoints no job needs;
- :mod:`schedy.integrations._files`: checkpoint files, local or at an fsspec
  URL (atomic writes, local copies, listing, the missing-checkpoint error).

Imports go one way, ``_files`` <- ``_checkpoints`` <- ``_core`` <- the
framework modules, and importing this package imports no framework.
"""

from __future__ import annotations

from ._core import MissingMetricError

__all__ = ["MissingMetricError"]
