"""THE scheduling decision: what a claim hands out and what every event does to a member.

One module per experiment kind behind one small protocol (``_protocol``):
``_manual`` (a queue), ``_random_search``, ``_pbt`` (Population Based
Training), ``_pb2`` (PBT exploring by a GP bandit), ``_halving`` (asynchronous
successive halving and Hyperband) and ``_replay`` (retrain a found schedule). Pure: a function of a
compact state and a seeded RNG, run by the storage backends inside their
claim transaction; nothing here touches a store. Adding a kind is one module defining a registered
:class:`Scheduler` subclass, imported below.
"""

from __future__ import annotations

from ._halving import HyperbandScheduler, SuccessiveHalvingScheduler
from ._manual import ManualScheduler
from ._pb2 import PB2Scheduler
from ._pbt import PBTScheduler
from ._protocol import (
    ClaimPlan,
    CreateJob,
    Decision,
    EndMember,
    Exhausted,
    Scheduler,
    SchedulingState,
    TakeQueued,
    UnknownKindError,
    UnreadableScheduler,
    Wait,
    lease_expired_error,
    register,
    scheduler_for,
)
from ._random_search import RandomScheduler
from ._replay import ReplayScheduler

__all__ = [
    "ClaimPlan",
    "CreateJob",
    "Decision",
    "EndMember",
    "Exhausted",
    "HyperbandScheduler",
    "ManualScheduler",
    "PB2Scheduler",
    "PBTScheduler",
    "RandomScheduler",
    "ReplayScheduler",
    "Scheduler",
    "SchedulingState",
    "SuccessiveHalvingScheduler",
    "TakeQueued",
    "UnknownKindError",
    "UnreadableScheduler",
    "Wait",
    "lease_expired_error",
    "register",
    "scheduler_for",
]
