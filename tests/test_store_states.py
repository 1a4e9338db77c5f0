"""No sequence of calls a user can make leaves a store that breaks.

Hypothesis drives random sequences of what the Python API offers -- creating
experiments of every kind, adding jobs (in any status, with any results),
claiming and ending them (DONE, crashed, abandoned), editing jobs and
experiments by hand, deleting either -- over every backend. Each call may
be refused, but only with one of the errors a user is told to expect
(``ValueError``, ``TypeError``, ``NotFoundError``, ``NoJobError``, ...),
never a ``StorageError`` or anything else; and after every step the whole
store must still list, show every population, give every job's lineage, and
answer a claim for every experiment (a job, or a clear ``NoJobError``).
Derandomized and bounded, so it fails the same way twice.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import schedy
from schedy.errors import (
    NoJobError,
    NotFoundError,
    ResourceExistsError,
    UnsafeUpdateError,
)

#: What a user may be told; anything else escaping a call is a defect.
_EXPECTED = (ValueError, TypeError, NotFoundError, NoJobError, ResourceExistsError)
_STATUSES = ["QUEUED", "RUNNING", "DONE", "CRASHED", "PRUNED", "BOGUS", ""]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["checkpoint.pt", "\x00", "\ud800"]),
)
_RESULTS = st.dictionaries(st.sampled_from(["acc", "loss", "model_path", "x"]), _VALUES, max_size=3)
_names = itertools.count()


def _experiment(kind: str, name: str) -> schedy.Experiment:
    if kind == "manual":
        return schedy.ManualSearch(name)
    if kind == "random":
        return schedy.RandomSearch(name, {"lr": schedy.random.LogUniform(1e-4, 1e-1)}, seed=1)
    return schedy.PopulationBasedTraining(
        name,
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.5),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.LogUniform(1e-4, 1e-1)},
        population_size=2,
        max_generations=3,
        seed=2,
        synchronous=kind == "pbt-sync",
    )


class _StoreStates(RuleBasedStateMachine):
    """One store, many experiments: each run of the machine uses fresh names."""

    db: schedy.SchedyDB

    def __init__(self) -> None:
        super().__init__()
        self.experiments: list[str] = []
        self.held: list[schedy.Job] = []  # claimed, not ended (a worker gone quiet)

    @initialize(kind=st.sampled_from(["pbt", "pbt-sync"]))
    def create_first(self, kind: str) -> None:
        self.create(kind)
        self.create("manual")

    def _call(self, call: Any) -> Any:
        try:
            return call()
        except UnsafeUpdateError:
            return None  # a write under a lease that is gone: refused, as documented
        except _EXPECTED:
            return None

    def _experiment_named(self, index: int) -> schedy.Experiment:
        return self.db.get_experiment(self.experiments[index % len(self.experiments)])

    # -- experiments ---------------------------------------------------------
    @rule(kind=st.sampled_from(["manual", "random", "pbt", "pbt-sync"]))
    def create(self, kind: str) -> None:
        name = f"e{next(_names)}"
        self.db.add_experiment(_experiment(kind, name))
        self.experiments.append(name)

    @precondition(lambda self: self.experiments)
    @rule(index=st.integers(0, 20), status=st.sampled_from(["RUNNING", "DONE", "BOGUS"]))
    def set_status(self, index: int, status: str) -> None:
        experiment = self._experiment_named(index)

        def push() -> None:
            experiment.status = status
            experiment.push_updates()

        self._call(push)

    @precondition(lambda self: len(self.experiments) > 1)
    @rule(index=st.integers(0, 20))
    def delete_experiment(self, index: int) -> None:
        name = self.experiments[index % len(self.experiments)]
        self.held = [job for job in self.held if job.experiment.name != name]
        self.db.get_experiment(name).delete()
        self.experiments.remove(name)

    # -- jobs ----------------------------------------------------------------
    @precondition(lambda self: self.experiments)
    @rule(
        index=st.integers(0, 20),
        status=st.sampled_from(_STATUSES),
        results=_RESULTS,
        lr=st.one_of(st.floats(1e-4, 1e-1), st.just(5.0), st.text(max_size=3)),
    )
    def add_job(self, index: int, status: str, results: dict[str, Any], lr: Any) -> None:
        experiment = self._experiment_named(index)
        self._call(lambda: experiment.add_job({"lr": lr}, status=status, results=results))

    @precondition(lambda self: self.experiments)
    @rule(index=st.integers(0, 20), jobs=st.integers(1, 4), acc=st.floats(0, 1))
    def train(self, index: int, jobs: int, acc: float) -> None:
        """Workers doing their job: a few claims ended DONE (lineages grow)."""
        for _ in range(jobs):
            self.claim(index, "done", acc)

    @precondition(lambda self: self.experiments)
    @rule(
        index=st.integers(0, 20),
        ending=st.sampled_from(["crash", "hold", "unstorable", "done"]),
        acc=_VALUES,
    )
    def claim(self, index: int, ending: str, acc: Any) -> None:
        experiment = self._experiment_named(index)
        job = self._call(lambda: experiment.next_job(timeout=0))
        if job is None:
            return
        if ending == "hold":
            self.held.append(job)
            return

        def run() -> None:
            with job:
                job.results["acc"] = acc
                if ending == "crash":
                    raise RuntimeError("training diverged")
                if ending == "unstorable":
                    job.results["conf"] = object()

        try:
            run()
        except RuntimeError as error:
            assert str(error) == "training diverged"
        except _EXPECTED:
            pass

    @precondition(lambda self: self.held)
    @rule(which=st.integers(0, 20), ending=st.sampled_from(["done", "crash"]))
    def end_held(self, which: int, ending: str) -> None:
        job = self.held.pop(which % len(self.held))

        def end() -> None:
            job.status = "DONE" if ending == "done" else "CRASHED"
            job.put()

        self._call(end)

    @precondition(lambda self: self.experiments)
    @rule(
        index=st.integers(0, 20),
        pick=st.integers(0, 50),
        status=st.sampled_from(_STATUSES),
        results=_RESULTS,
        safe=st.booleans(),
    )
    def edit_job(
        self, index: int, pick: int, status: str, results: dict[str, Any], safe: bool
    ) -> None:
        experiment = self._experiment_named(index)
        jobs = list(experiment.all_jobs())
        if not jobs:
            return
        job = jobs[pick % len(jobs)]

        def edit() -> None:
            job.status = status
            job.results = dict(results)
            job.put(safe=safe)

        self._call(edit)

    @precondition(lambda self: self.experiments)
    @rule(index=st.integers(0, 20), pick=st.integers(0, 50))
    def delete_job(self, index: int, pick: int) -> None:
        experiment = self._experiment_named(index)
        jobs = list(experiment.all_jobs())
        if jobs:
            self._call(lambda: jobs[pick % len(jobs)].delete())

    @precondition(lambda self: self.experiments)
    @rule(index=st.integers(0, 20), pick=st.integers(0, 50))
    def delete_a_parent(self, index: int, pick: int) -> None:
        """What cuts lineages if allowed: deleting a job others continue from."""
        experiment = self._experiment_named(index)
        jobs = {job.id: job for job in experiment.all_jobs()}
        parents = sorted({job.parent_id for job in jobs.values() if job.parent_id in jobs})
        if parents:
            self._call(lambda: jobs[parents[pick % len(parents)]].delete())

    # -- what must always hold -------------------------------------------------
    @invariant()
    def the_store_still_works(self) -> None:
        listed = {experiment.name: experiment for experiment in self.db.get_experiments()}
        assert set(self.experiments) <= set(listed)
        for name in self.experiments:
            experiment = self.db.get_experiment(name)
            assert experiment.unreadable is None, experiment.unreadable
            members = experiment.population()
            jobs = {job.id: job for job in experiment.all_jobs()}
            for job in jobs.values():
                assert job.parent_id is None or job.parent_id in jobs, job  # no dangling parent
                chain = job.lineage()
                assert chain[-1].id == job.id
                assert all(step.id in jobs for step in chain)
            for member in members:  # the population's summary agrees with its jobs
                if member.head_id is not None:  # where the member resumes: a DONE job
                    assert jobs[member.head_id].status == "DONE", (member, jobs[member.head_id])
                if member.busy_id is not None:
                    assert jobs[member.busy_id].status in {"QUEUED", "RUNNING"}, member
            experiment.best()


#: Sequences per backend; ``SCHEDY_STATE_EXAMPLES=200`` for a deep run by hand.
#: Over the server every lineage step is a request, and it runs the same SQL
#: storage, so it gets fewer.
EXAMPLES = int(os.environ.get("SCHEDY_STATE_EXAMPLES", "8"))


def test_no_call_sequence_breaks_the_store(store_url: str) -> None:
    examples = max(1, EXAMPLES // 4) if store_url.startswith("http") else EXAMPLES
    with schedy.SchedyDB(store_url, lease_seconds=60) as db:
        _StoreStates.db = db
        run_state_machine_as_test(
            _StoreStates,
            settings=settings(
                max_examples=examples,
                stateful_step_count=30,
                derandomize=True,
                deadline=None,
                # No shrinking: each step's store state makes it slow, and the
                # sequence Hypothesis prints is readable as it is.
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            ),
        )
