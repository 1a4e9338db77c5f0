"""schedy: a hyperparameter scheduler for machine learning, centred on PBT.

The public API continues the Schedy client's::

    import schedy
    db = schedy.SchedyDB()
    experiment = db.get_experiment('MNIST with PBT')
    with experiment.next_job() as job:
        ...
"""

from __future__ import annotations

from . import errors, pbt, random
from ._workers import run_workers
from .db import SchedyDB
from .experiments import (
    PB2,
    Experiment,
    Hyperband,
    ManualSearch,
    PopulationBasedTraining,
    RandomSearch,
    Replay,
    SuccessiveHalving,
)
from .jobs import Job

__all__ = [
    "PB2",
    "Experiment",
    "Hyperband",
    "Job",
    "ManualSearch",
    "PopulationBasedTraining",
    "RandomSearch",
    "Replay",
    "SchedyDB",
    "SuccessiveHalving",
    "errors",
    "pbt",
    "random",
    "run_workers",
]

__version__ = "0.1.0"
