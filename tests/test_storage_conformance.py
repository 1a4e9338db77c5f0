"""The storage conformance suite: every backend must pass every test here.

Tests go through the public API (``SchedyDB``, experiments, jobs) so that
they check what users see; ``store_url`` (conftest) binds them to each
backend.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import schedy
from schedy.errors import NoJobError, NotFoundError, ResourceExistsError, UnsafeUpdateError


@pytest.fixture
def db(store_url: str) -> schedy.SchedyDB:
    handle = schedy.SchedyDB(store_url)
    yield handle
    handle.close()


def _pbt(
    name: str = "pbt", population: int = 4, **kwargs: object
) -> schedy.PopulationBasedTraining:
    objective = kwargs.pop("objective", schedy.pbt.MAXIMIZE)
    options: dict[str, object] = dict(
        exploit=schedy.pbt.Truncate(0.25),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.LogUniform(1e-4, 1e-1)},
        population_size=population,
        seed=1,
    )
    options.update(kwargs)
    return schedy.PopulationBasedTraining(name, objective, "acc", **options)  # type: ignore[arg-type]


# -- experiments -------------------------------------------------------------


@pytest.mark.parametrize(
    "experiment",
    [
        schedy.ManualSearch("manual"),
        schedy.RandomSearch(
            "random", {"x": schedy.random.Normal(0, 5), "c": schedy.random.Choice(["a", "b"])}
        ),
        _pbt("pbt", max_generations=3),
    ],
    ids=["manual", "random", "pbt"],
)
def test_experiment_round_trip(db: schedy.SchedyDB, experiment: schedy.Experiment) -> None:
    db.add_experiment(experiment)
    again = db.get_experiment(experiment.name)
    assert type(again) is type(experiment)
    assert again._config() == experiment._config()
    assert again.status == schedy.Experiment.RUNNING
    assert [e.name for e in db.get_experiments()] == [experiment.name]


def test_add_existing_experiment_raises(db: schedy.SchedyDB) -> None:
    db.add_experiment(schedy.ManualSearch("same"))
    with pytest.raises(ResourceExistsError, match="already exists"):
        db.add_experiment(schedy.ManualSearch("same"))


def test_unknown_experiment_raises(db: schedy.SchedyDB) -> None:
    with pytest.raises(NotFoundError, match="no experiment named 'nope'"):
        db.get_experiment("nope")


def test_delete_experiment_removes_jobs(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("gone")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    experiment.delete()
    with pytest.raises(NotFoundError):
        db.get_experiment("gone")
    with pytest.raises(NotFoundError):
        experiment.delete()
    db.add_experiment(schedy.ManualSearch("gone"))
    assert list(db.get_experiment("gone").all_jobs()) == []


def test_push_updates_done_stops_next_job(db: schedy.SchedyDB) -> None:
    db.add_experiment(schedy.RandomSearch("r", {"x": schedy.random.Uniform(0, 1)}))
    experiment = db.get_experiment("r")
    experiment.status = schedy.Experiment.DONE
    experiment.push_updates()
    assert db.get_experiment("r").status == schedy.Experiment.DONE
    with pytest.raises(NoJobError, match="DONE"):
        experiment.next_job()


# -- jobs --------------------------------------------------------------------


def test_manual_queue_fifo_then_no_job(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    first = experiment.add_job(hyperparameters={"x": 1, "y": 2})
    second = experiment.add_job(hyperparameters={"x": 3, "y": 4})
    with experiment.next_job() as job:
        assert job.id == first.id and job.status == schedy.Job.RUNNING
        job.results["result"] = 5
    with experiment.next_job() as job:
        assert job.id == second.id
    with pytest.raises(NoJobError, match="queue is empty"):
        experiment.next_job()
    stored = experiment.get_job(first.id)
    assert stored.status == schedy.Job.DONE
    assert stored.results == {"result": 5}
    assert stored.job_id == stored.id


def test_add_job_with_status_and_results(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    job = experiment.add_job(
        status=schedy.Job.DONE, hyperparameters={"x": 1}, results={"result": 5}
    )
    assert experiment.get_job(job.id).results == {"result": 5}
    with pytest.raises(NoJobError):
        experiment.next_job()


def test_all_jobs_pages_in_creation_order(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    ids = [experiment.add_job(hyperparameters={"i": i}).id for i in range(7)]
    assert [job.id for job in experiment.all_jobs()] == ids
    paged = list(db._storage.iter_jobs("m", page_size=3))
    assert [job.id for job in paged] == ids


def test_job_delete_and_not_found(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    job = experiment.add_job(hyperparameters={"x": 1})
    job.delete()
    with pytest.raises(NotFoundError, match="has no job"):
        experiment.get_job(job.id)
    with pytest.raises(NotFoundError):
        job.delete()


def test_exception_in_with_marks_crashed_and_keeps_results(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    with pytest.raises(RuntimeError, match="boom"), experiment.next_job() as job:
        job.results["partial"] = 0.5
        raise RuntimeError("boom")
    stored = experiment.get_job(job.id)
    assert stored.status == schedy.Job.CRASHED
    assert stored.results == {"partial": 0.5}
    assert "RuntimeError: boom" in (stored.error or "")


def test_keyboard_interrupt_does_not_leave_job_running(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    with pytest.raises(KeyboardInterrupt), experiment.next_job() as job:
        raise KeyboardInterrupt
    assert experiment.get_job(job.id).status == schedy.Job.CRASHED


# -- values ------------------------------------------------------------------


def test_special_floats_round_trip(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    job = experiment.add_job(
        hyperparameters={"a": float("inf"), "b": [1, (2, 3)]},
        results={"loss": float("nan"), "neg": float("-inf"), "nested": {"k": [None, True]}},
    )
    stored = experiment.get_job(job.id)
    assert stored.hyperparameters == {"a": math.inf, "b": [1, [2, 3]]}
    assert math.isnan(stored.results["loss"])
    assert stored.results["neg"] == -math.inf
    assert stored.results["nested"] == {"k": [None, True]}


def test_numpy_scalars_are_accepted(db: schedy.SchedyDB) -> None:
    np = pytest.importorskip("numpy")
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"lr": np.float32(0.5), "n": np.int64(3)})
    with experiment.next_job() as job:
        job.results["acc"] = np.float64(0.25)
        job.results["arr0d"] = np.array(2.0)
    stored = experiment.get_job(job.id)
    assert stored.hyperparameters == {"lr": 0.5, "n": 3}
    assert stored.results == {"acc": 0.25, "arr0d": 2.0}
    assert type(stored.results["acc"]) is float


def test_unstorable_value_names_key_and_writes_nothing(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    with pytest.raises(TypeError, match=r"hyperparameters\['bad'\]"):
        experiment.add_job(hyperparameters={"ok": 1, "bad": object()})
    assert list(experiment.all_jobs()) == []
    experiment.add_job(hyperparameters={"x": 1})
    with experiment.next_job() as job:
        job.results["fine"] = 1.0
        job.put()
        job.results["model"] = [1, {1, 2}]
        with pytest.raises(TypeError, match=r"results\['model'\]\[1\]"):
            job.put()  # a put is all or nothing
        assert experiment.get_job(job.id).results == {"fine": 1.0}
        del job.results["model"]
    assert experiment.get_job(job.id).status == schedy.Job.DONE


def test_an_unstorable_value_at_exit_keeps_every_other_result(db: schedy.SchedyDB) -> None:
    # The loss and checkpoint path of a finished training must not be lost
    # because one more value cannot be stored: it is left out and named.
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    with pytest.raises(TypeError, match=r"results\['conf'\]"), experiment.next_job() as job:
        job.results["loss"] = 0.5
        job.results["model_path"] = "checkpoints/a.pt"
        job.results["conf"] = {1, 2}
        job.results["nested"] = {"ok": 1, "bad": object()}
    stored = experiment.get_job(job.id)
    assert stored.status == schedy.Job.CRASHED
    assert stored.results == {"loss": 0.5, "model_path": "checkpoints/a.pt", "nested": {"ok": 1}}
    assert "results['conf']" in (stored.error or "")
    assert "results['nested']['bad']" in (stored.error or "")


def test_numpy_arrays_are_stored_as_nested_lists(db: schedy.SchedyDB) -> None:
    np = pytest.importorskip("numpy")
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"layers": np.array([64, 32])})
    with experiment.next_job() as job:
        job.results["conf"] = np.ones(3)
        job.results["matrix"] = np.arange(4, dtype=np.int32).reshape(2, 2)
        job.results["empty"] = np.zeros((0, 2))
    stored = experiment.get_job(job.id)
    assert stored.status == schedy.Job.DONE
    assert stored.hyperparameters == {"layers": [64, 32]}
    assert stored.results == {"conf": [1.0, 1.0, 1.0], "matrix": [[0, 1], [2, 3]], "empty": []}


def test_torch_tensors_are_stored_as_nested_lists(db: schedy.SchedyDB) -> None:
    torch = pytest.importorskip("torch")
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    with experiment.next_job() as job:
        job.results["loss"] = torch.tensor(0.5)
        job.results["weights"] = torch.arange(6, dtype=torch.float32).reshape(1, 2, 3)
        job.results["grad"] = torch.ones(2, requires_grad=True) * 2
    stored = experiment.get_job(job.id)
    assert stored.status == schedy.Job.DONE
    assert stored.results == {
        "loss": 0.5,
        "weights": [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]],
        "grad": [2.0, 2.0],
    }


def test_a_retried_first_job_starts_from_what_it_was_created_with(db: schedy.SchedyDB) -> None:
    # The original client's worker pattern writes the checkpoint path before
    # saving: a crash in between must not hand the retry a file never written.
    experiment = _pbt(population=2)
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"lr": 0.01}, results={"model_path": "pretrained.pt"})
    crashed = {}
    for _ in range(2):
        with pytest.raises(RuntimeError), experiment.next_job() as job:
            crashed[job.member] = job.results.copy()
            job.results["model_path"] = f"never-saved-{job.id}.pt"
            job.results["acc"] = 0.5
            job.put()
            raise RuntimeError("killed before saving")
    assert crashed == {0: {"model_path": "pretrained.pt"}, 1: {}}
    retries = {job.member: job for job in (experiment.next_job(), experiment.next_job())}
    assert retries[0].results == {"model_path": "pretrained.pt"}  # the hand-queued results
    assert retries[1].results == {}  # a sampled member starts with none
    assert retries[0].hyperparameters == {"lr": 0.01}
    for job in retries.values():
        assert job.generation == 0 and job.parent_id is None
        job.results["acc"] = 0.1
        job.status = schedy.Job.DONE
        job.put()


def test_a_crashed_copy_is_never_continued(db: schedy.SchedyDB) -> None:
    # A member that keeps crashing copies a top member; when the copy crashes
    # too, the next one starts from the source again, never from the crash.
    experiment = _pbt(population=2, max_member_crashes=1)
    db.add_experiment(experiment)
    with experiment.next_job() as good:
        good.results.update(acc=0.9, model_path="good.pt")
    with pytest.raises(RuntimeError), experiment.next_job() as bad:
        raise RuntimeError("first job of member 1")
    held = experiment.next_job()  # member 0 continues (it waited longest) and stays busy
    assert held.member == good.member
    for _ in range(2):
        with pytest.raises(RuntimeError), experiment.next_job() as copy:
            assert copy.member == bad.member and copy.exploited_from == good.id
            assert copy.results["model_path"] == "good.pt"
            copy.results["model_path"] = "never-saved.pt"
            copy.put()
            raise RuntimeError("the copy crashes too")
    held.status = schedy.Job.DONE
    held.put()


# -- claims and leases -------------------------------------------------------


def test_concurrent_claims_are_exclusive(db: schedy.SchedyDB, store_url: str) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    for i in range(40):
        experiment.add_job(hyperparameters={"i": i})
    claimed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        own = schedy.SchedyDB(store_url).get_experiment("m")
        while True:
            try:
                job = own.next_job()
            except NoJobError:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 40
    assert len(set(claimed)) == 40


def test_expired_lease_crashes_job_and_refuses_late_put(db: schedy.SchedyDB) -> None:
    experiment = db.get_experiment("m") if False else schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    experiment.add_job(hyperparameters={"x": 2})
    lost = experiment.next_job(lease=0.05)
    time.sleep(0.1)
    experiment.next_job()  # the next claim expires the stale lease
    stored = experiment.get_job(lost.id)
    assert stored.status == schedy.Job.CRASHED
    assert "lease expired" in (stored.error or "")
    lost.results["acc"] = 1.0
    lost.status = schedy.Job.DONE
    with pytest.raises(UnsafeUpdateError, match="no longer yours"):
        lost.put()
    assert experiment.get_job(lost.id).results == {}


def test_heartbeat_keeps_lease_alive(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    experiment.add_job(hyperparameters={"x": 2})
    with experiment.next_job(lease=0.3) as job:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # several lease lengths
            time.sleep(0.05)
        experiment.next_job()  # would expire the job without heartbeats
        job.results["acc"] = 1.0
    assert experiment.get_job(job.id).status == schedy.Job.DONE


def test_renew_lease_reports_a_lost_lease(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    job = experiment.next_job()
    assert job._lease_token is not None
    assert db._storage.renew_lease("m", job.id, job._lease_token, 10)
    assert not db._storage.renew_lease("m", job.id, "not-the-token", 10)


# -- PBT ---------------------------------------------------------------------


def _finish(job: schedy.Job, acc: float) -> None:
    job.results["acc"] = acc
    job.status = schedy.Job.DONE
    job.put()


def test_pbt_fills_population_then_continues(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=3))
    experiment = db.get_experiment("pbt")
    first = [experiment.next_job() for _ in range(3)]
    assert [job.member for job in first] == [0, 1, 2]
    assert all(job.generation == 0 and job.parent_id is None for job in first)
    with pytest.raises(NoJobError, match="busy"):
        experiment.next_job(timeout=0)
    _finish(first[1], 0.5)
    following = experiment.next_job(timeout=0)
    assert following.member == 1 and following.generation == 1
    assert following.parent_id == first[1].id
    members = {m.index: m for m in experiment.population()}
    assert members[1].busy_id == following.id and members[1].head_id == first[1].id


def test_pbt_bottom_member_exploits_top(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=4))
    experiment = db.get_experiment("pbt")
    jobs = [experiment.next_job() for _ in range(4)]
    for job, acc in zip(jobs, [0.9, 0.5, 0.4, 0.1]):
        job.results["model_path"] = f"ckpt/{job.id}"
        _finish(job, acc)
    seen = {}
    for _ in range(4):
        job = experiment.next_job(timeout=0)
        seen[job.member] = job
    worst = seen[3]
    assert worst.exploited_from == jobs[0].id and worst.parent_id == jobs[0].id
    assert worst.results["model_path"] == f"ckpt/{jobs[0].id}"
    assert worst.hyperparameters["lr"] != jobs[0].hyperparameters["lr"]
    best = seen[0]
    assert best.exploited_from is None and best.hyperparameters == jobs[0].hyperparameters
    assert [j.id for j in worst.lineage()] == [jobs[0].id, worst.id]


def test_pbt_nan_and_missing_rank_worst(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=4))
    experiment = db.get_experiment("pbt")
    jobs = [experiment.next_job() for _ in range(4)]
    _finish(jobs[0], float("nan"))
    jobs[1].status = schedy.Job.DONE
    jobs[1].put()  # no "acc" at all
    _finish(jobs[2], 0.1)
    _finish(jobs[3], 0.2)
    # member 0 finished first and is ready first; with NaN it is bottom.
    job = experiment.next_job(timeout=0)
    assert job.member == 0 and job.exploited_from == jobs[3].id


def test_pbt_max_generations_ends_experiment(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=2, max_generations=2))
    experiment = db.get_experiment("pbt")
    count = 0
    while True:
        try:
            job = experiment.next_job(timeout=0)
        except NoJobError as error:
            assert "finished" in str(error)
            break
        _finish(job, 0.1 * count)
        count += 1
    assert count == 4
    assert db.get_experiment("pbt").status == schedy.Experiment.DONE
    assert {(j.member, j.generation) for j in experiment.all_jobs()} == {
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    }


def test_pbt_hand_queued_jobs_become_members_first(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=3))
    experiment = db.get_experiment("pbt")
    queued = experiment.add_job(hyperparameters={"lr": 0.5})
    job = experiment.next_job()
    assert job.id == queued.id and job.member == 0 and job.generation == 0
    with pytest.raises(ValueError, match="explores 'lr'"):
        experiment.add_job(hyperparameters={"other": 1})


def test_pbt_crashed_member_resumes_from_last_good_job(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=1))
    experiment = db.get_experiment("pbt")
    first = experiment.next_job()
    _finish(first, 0.3)
    crashed = experiment.next_job(lease=0.05)
    time.sleep(0.1)
    again = experiment.next_job(timeout=0)
    assert experiment.get_job(crashed.id).status == schedy.Job.CRASHED
    assert again.member == 0 and again.parent_id == first.id and again.generation == 1
    assert experiment.population()[0].crashes == 1


def test_pbt_member_that_keeps_crashing_copies_a_top_member(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=4, max_member_crashes=2))
    experiment = db.get_experiment("pbt")
    jobs = [experiment.next_job() for _ in range(4)]
    for job, acc in zip(jobs, [0.9, 0.8, 0.7, 0.6]):
        _finish(job, acc)
    job = experiment.next_job(timeout=0)  # member 0 (best) continues
    assert job.member == 0 and job.exploited_from is None
    for _ in range(2):
        job.status = schedy.Job.CRASHED
        job.put()
        job = experiment.next_job(timeout=0)
        while job.member != 0:  # let other members run
            _finish(job, 0.5)
            job = experiment.next_job(timeout=0)
    assert job.exploited_from is not None  # crashed twice: replaced by a copy


def test_a_retired_straggler_keeps_why_it_ended(db: schedy.SchedyDB) -> None:
    # Member 1 is in the bottom at generation 0 while member 0 has finished its
    # schedule: nothing to copy, so PBT ends it -- and says why, in population().
    db.add_experiment(_pbt(population=2, exploit=schedy.pbt.Truncate(0.5), max_generations=2))
    experiment = db.get_experiment("pbt")
    scores = iter([0.9, 0.1, 0.95])
    with pytest.raises(NoJobError):
        while True:
            _finish(experiment.next_job(timeout=0), next(scores))
    members = {member.index: member for member in experiment.population()}
    assert members[0].ended and members[0].ended_reason is None  # its schedule's normal end
    assert members[1].ended and members[1].head_generation == 0
    assert members[1].ended_reason is not None
    assert members[1].ended_reason.startswith("straggler: in the bottom at generation 0")
    assert "every better member has finished" in members[1].ended_reason


def test_a_member_retired_for_crashing_keeps_why_it_ended(db: schedy.SchedyDB) -> None:
    # PBT from a hand-queued job only (no initial_distributions): a member whose
    # first job keeps crashing has nothing to start afresh from, so it is retired.
    db.add_experiment(_pbt(population=None, initial_distributions=None, max_member_crashes=2))
    experiment = db.get_experiment("pbt")
    experiment.add_job(hyperparameters={"lr": 0.01})
    for _ in range(2):
        with pytest.raises(RuntimeError), experiment.next_job(timeout=0):
            raise RuntimeError("out of memory")
    with pytest.raises(NoJobError):
        experiment.next_job(timeout=0)
    (member,) = experiment.population()
    assert member.ended and member.crashes == 2
    assert member.ended_reason == (
        "its first job crashed 2 times in a row (max_member_crashes=2) and nothing can "
        "replace it (no initial_distributions)"
    )


def test_a_pruned_member_keeps_why_it_ended(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=1))
    experiment = db.get_experiment("pbt")
    job = experiment.next_job()
    job.status = schedy.Job.PRUNED
    job.put()
    (member,) = experiment.population()
    assert member.ended and member.ended_reason == f"its job {job.id} was pruned"


def test_delete_member_job_frees_member(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=1))
    experiment = db.get_experiment("pbt")
    job = experiment.next_job()
    job.delete()
    again = experiment.next_job(timeout=0)
    assert again.member == 0 and again.generation == 0


def test_best_jobs_and_jobs_in_use(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=3))
    experiment = db.get_experiment("pbt")
    first = [experiment.next_job() for _ in range(3)]
    for job, acc in zip(first, [0.2, 0.9, float("nan")]):
        _finish(job, acc)
    assert [job.id for job in experiment.best_jobs(5)] == [first[1].id, first[0].id]
    running = experiment.next_job(timeout=0)
    queued = experiment.add_job(hyperparameters={"lr": 0.01})
    in_use = {job.id for job in db._storage.jobs_in_use("pbt", top_k=1)}
    # heads of the three members, the running and the queued job; the best is a head anyway
    assert in_use == {job.id for job in first} | {running.id, queued.id}
    _finish(running, 0.95)
    in_use = {job.id for job in db._storage.jobs_in_use("pbt", top_k=2)}
    heads = {member.head_id for member in experiment.population()}
    assert heads <= in_use and first[1].id in in_use  # top-2: the new head and first[1]
    assert running.id in in_use and queued.id in in_use
    assert schedy.ManualSearch("m")._scheduler.score({"acc": 1}) is None


def test_best_jobs_minimize(db: schedy.SchedyDB) -> None:
    db.add_experiment(_pbt(population=3, objective=schedy.pbt.MINIMIZE))
    experiment = db.get_experiment("pbt")
    jobs = [experiment.next_job() for _ in range(3)]
    for job, loss in zip(jobs, [0.5, 0.1, 0.3]):
        _finish(job, loss)
    assert [job.id for job in experiment.best_jobs(2)] == [jobs[1].id, jobs[2].id]


# -- the same decisions everywhere -------------------------------------------------


def _seeded_run(db: schedy.SchedyDB) -> list[tuple[object, ...]]:
    """A single-worker seeded PBT run to the end, as (member, generation,
    hyperparameters, parent position, exploited-from position) per job."""
    db.add_experiment(
        _pbt(
            "seeded",
            population=4,
            seed=5,
            max_generations=5,
            explore={"lr": schedy.pbt.Perturb(), "layers": schedy.pbt.Shift([1, 2, 3, 4])},
            initial_distributions={
                "lr": schedy.random.LogUniform(1e-4, 1e-1),
                "layers": schedy.random.Choice([1, 2, 3, 4]),
            },
        )
    )
    experiment = db.get_experiment("seeded")
    position: dict[str, int] = {}
    trace: list[tuple[object, ...]] = []
    while True:
        try:
            job = experiment.next_job(timeout=0)
        except NoJobError:
            break
        with job:
            lr, layers = job.hyperparameters["lr"], job.hyperparameters["layers"]
            job.results["acc"] = round(-abs(math.log10(lr) + 2) + 0.1 * layers, 9)
        trace.append(
            (
                job.member,
                job.generation,
                job.hyperparameters,
                position.get(job.parent_id or ""),
                position.get(job.exploited_from or ""),
            )
        )
        position[job.id] = len(trace) - 1
    assert experiment.status == schedy.Experiment.DONE
    return trace


def test_a_seeded_run_decides_the_same_on_every_backend(
    db: schedy.SchedyDB, tmp_path: object
) -> None:
    # The decision is one pure function of the stored state and the seed:
    # whichever backend stores that state, a single worker sees the same run.
    with schedy.SchedyDB(f"sqlite:///{tmp_path}/reference.db") as reference:
        expected = _seeded_run(reference)
    assert any(step[4] is not None for step in expected)  # it did exploit
    assert _seeded_run(db) == expected


# -- no edit through the API may break listing, claiming or lineage ----------


@pytest.mark.parametrize(
    ("kind", "status", "config", "match"),
    [
        ("no-such-kind", "RUNNING", {}, "unknown kind"),
        ("pbt", "RUNNING", {}, "needs 'objective'"),
        ("pbt", "RUNNING", {"objective": "max", "result_name": "acc", "exploit": "x"}, "exploit"),
        ("random", "RUNNING", {"distributions": {"x": {"nope": {}}}}, "distribution"),
        ("manual", "PAUSED", {}, "status"),
        ("random", "RUNNING", [], "must be an object|valid dictionary"),
    ],
)
def test_an_invalid_experiment_definition_is_refused_and_nothing_is_stored(
    db: schedy.SchedyDB, kind: str, status: str, config: object, match: str
) -> None:
    from schedy._records import ExperimentRecord

    db.add_experiment(schedy.ManualSearch("fine"))
    record = ExperimentRecord("poison", kind, status, config)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        db._storage.create_experiment(record)
    assert [experiment.name for experiment in db.get_experiments()] == ["fine"]
    schedy.ManualSearch("fine")  # listing and removing still work
    db.get_experiment("fine").delete()


@pytest.mark.parametrize(
    "name", ["", "   ", "x" * 256, "nul\x00byte"], ids=["empty", "blank", "256", "nul"]
)
def test_names_no_backend_can_store_are_refused_alike(db: schedy.SchedyDB, name: str) -> None:
    from schedy._records import ExperimentRecord

    with pytest.raises(ValueError, match="experiment name"):
        db._storage.create_experiment(ExperimentRecord(name, "manual", "RUNNING", {}))
    with pytest.raises(NotFoundError):
        db.get_experiment(name)
    db.add_experiment(schedy.ManualSearch("x" * 255))  # the longest name is fine
    experiment = db.get_experiment("x" * 255)
    with pytest.raises(NotFoundError):
        experiment.get_job("nul\x00id")


@pytest.mark.parametrize("lease", [math.inf, math.nan, 0, -1, 1e308])
def test_a_lease_must_be_finite_and_positive(db: schedy.SchedyDB, lease: float) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    with pytest.raises(ValueError, match="lease"):
        experiment.next_job(lease=lease)
    with pytest.raises(ValueError, match="lease"):
        db._storage.claim_job("m", lease)
    with experiment.next_job() as job, pytest.raises(ValueError, match="lease"):
        db._storage.renew_lease("m", job.id, job._lease_token or "", lease)


def test_a_renewal_names_its_own_experiment(db: schedy.SchedyDB) -> None:
    for name in ("a", "b"):
        experiment = schedy.ManualSearch(name)
        db.add_experiment(experiment)
        experiment.add_job(hyperparameters={"x": 1})
    job = db.get_experiment("a").next_job()
    assert not db._storage.renew_lease("b", job.id, job._lease_token or "", 30)
    assert db._storage.renew_lease("a", job.id, job._lease_token or "", 30)
    job.status = schedy.Job.DONE
    job.put()


def test_a_job_is_not_added_running(db: schedy.SchedyDB) -> None:
    # A RUNNING job nobody holds a lease on would never expire.
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    with pytest.raises(ValueError, match="RUNNING"):
        experiment.add_job(hyperparameters={"x": 1}, status=schedy.Job.RUNNING)
    assert list(experiment.all_jobs()) == []


def test_a_queued_job_run_by_hand_holds_a_lease(db: schedy.SchedyDB) -> None:
    # The original client's `with job:` on a job it added itself.
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    job = experiment.add_job(hyperparameters={"x": 1})
    with job:
        assert job._lease_token is not None
        job.results["y"] = 2
    assert experiment.get_job(job.id).status == schedy.Job.DONE
    with pytest.raises(NoJobError):
        experiment.next_job(timeout=0)


def test_a_members_finished_job_keeps_its_status(db: schedy.SchedyDB) -> None:
    # Marking a member's resume point CRASHED by hand would make the next job
    # continue a CRASHED parent: refused, nothing written.
    experiment = _pbt(population=1)
    db.add_experiment(experiment)
    with experiment.next_job() as job:
        job.results["acc"] = 0.5
    stored = experiment.get_job(job.id)
    stored.status = schedy.Job.CRASHED
    with pytest.raises(ValueError, match="finished job"):
        stored.put()
    stored = experiment.get_job(job.id)
    assert stored.status == schedy.Job.DONE
    stored.results["note"] = "results may still be annotated"
    stored.put()
    following = experiment.next_job()
    assert following.parent_id == job.id
    following.status = schedy.Job.DONE
    following.put()


def test_a_job_with_descendants_is_not_deleted(db: schedy.SchedyDB) -> None:
    experiment = _pbt(population=1)
    db.add_experiment(experiment)
    with experiment.next_job() as first:
        first.results["acc"] = 0.5
    with experiment.next_job() as second:
        second.results["acc"] = 0.6
    with pytest.raises(ValueError, match="parent of job"):
        experiment.get_job(first.id).delete()
    assert [job.id for job in experiment.get_job(second.id).lineage()] == [first.id, second.id]
    experiment.get_job(second.id).delete()  # a leaf may go
    experiment.get_job(first.id).delete()  # and then its parent


@pytest.mark.parametrize(
    ("kind", "config", "reason"),
    [
        ("hyperband-9000", "{}", "unknown kind 'hyperband-9000'"),
        ("pbt", "not json{", "configuration must be an object (in JSON), not 'not json{'"),
        ("pbt", "[1, 2]", "configuration must be an object (in JSON), not '[1,2]'"),
    ],
    ids=["unknown-kind", "not-json", "not-an-object"],
)
def test_a_store_holding_an_unreadable_experiment_still_lists_and_removes(
    db: schedy.SchedyDB, store_url: str, tmp_path: Path, kind: str, config: str, reason: str
) -> None:
    # Written by a newer schedy, or by hand: the rest of the store stays usable.
    import sqlalchemy as sa

    db.add_experiment(schedy.ManualSearch("fine"))
    served = f"sqlite:///{tmp_path}/served.db"  # the server's own store (conftest)
    engine = sa.create_engine(served if store_url.startswith("http") else store_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO schedy_experiments (name, kind, status, config, claims, created_at) "
                "VALUES ('future', :kind, 'RUNNING', :config, 0, 0)"
            ),
            {"kind": kind, "config": config},
        )
    engine.dispose()
    listed = {experiment.name: experiment for experiment in db.get_experiments()}
    assert set(listed) == {"fine", "future"}
    assert listed["fine"].unreadable is None
    assert reason in (listed["future"].unreadable or "")
    with pytest.raises(NoJobError, match="cannot be read"):
        db.get_experiment("future").next_job()
    db.get_experiment("future").delete()
    assert [experiment.name for experiment in db.get_experiments()] == ["fine"]


@pytest.mark.parametrize("bad", ["huge", "cycle", "deep"])
def test_a_value_no_json_can_hold_ends_the_job_never_running(db: schedy.SchedyDB, bad: str) -> None:
    loop: dict[str, object] = {}
    loop["self"] = loop
    deep: list[object] = []
    for _ in range(2000):
        deep = [deep]
    value = {"huge": 10**400, "cycle": loop, "deep": deep}[bad]
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    with pytest.raises(TypeError, match=r"results\['bad'\]"), experiment.next_job() as job:
        job.results["loss"] = 0.5
        job.results["bad"] = value
    stored = experiment.get_job(job.id)
    assert stored.status == schedy.Job.CRASHED
    assert stored.results == {"loss": 0.5}


# -- search kinds beyond vanilla PBT (tests/test_search_kinds.py has their decisions) ------


def _search_kind(kind: str) -> schedy.Experiment:
    space = {"x": schedy.random.Uniform(0.0, 1.0)}
    if kind == "successive_halving":
        return schedy.SuccessiveHalving(
            kind, schedy.pbt.MAXIMIZE, "acc", space, max_budget=9, max_configurations=9, seed=3
        )
    if kind == "hyperband":
        return schedy.Hyperband(
            kind, schedy.pbt.MAXIMIZE, "acc", space, max_budget=9, max_configurations=9, seed=3
        )
    if kind == "pb2":
        return schedy.PB2(
            kind,
            schedy.pbt.MAXIMIZE,
            "acc",
            {"x": (0.0, 1.0), "n": (1, 4)},
            exploit=schedy.pbt.Truncate(0.34),
            population_size=3,
            max_generations=4,
            seed=3,
        )
    raise AssertionError(kind)


SEARCH_KINDS = ["successive_halving", "hyperband", "pb2"]


@pytest.mark.parametrize("kind", SEARCH_KINDS)
def test_each_search_kind_runs_to_completion(db: schedy.SchedyDB, kind: str) -> None:
    """A small experiment of each kind, through next_job, to DONE: the kind round-trips,
    lineage holds (each job continues its parent's results) and a crash is retried."""
    experiment = _search_kind(kind)
    db.add_experiment(experiment)
    stored = db.get_experiment(kind)
    assert type(stored) is type(experiment) and stored._config() == experiment._config()
    jobs = exploits = 0
    crashed = False
    while True:
        try:
            job = stored.next_job(timeout=0)
        except NoJobError:
            break
        jobs += 1
        assert jobs < 200
        if job.parent_id is not None:
            parent = stored.get_job(job.parent_id)
            assert parent.status == schedy.Job.DONE
            assert parent.member == job.member or job.exploited_from == parent.id
            assert job.results.get("model_path") == parent.results.get("model_path")
            exploits += job.exploited_from is not None
        if not crashed and job.generation:
            crashed = True
            with pytest.raises(RuntimeError), job:
                raise RuntimeError("boom")
            continue
        with job:
            if job.budget is not None:
                job.results["epoch"] = job.budget
            job.results["model_path"] = f"ckpt/{job.id}"
            job.results["acc"] = job.hyperparameters.get("x", 0.0) + 0.01 * (job.generation or 0)
    assert db.get_experiment(kind).status == schedy.Experiment.DONE
    assert crashed and (exploits > 0) == (kind == "pb2")
    best = stored.best()
    assert best is not None and best.status == schedy.Job.DONE
    assert stored.lineage()[0]["generation"] == 0


def test_synchronous_pbt_waits_for_a_generation_and_a_lost_worker_releases_it(
    db: schedy.SchedyDB,
) -> None:
    """synchronous=True: nobody starts generation g+1 before all finished g; a worker
    lost mid-job (its lease expires) does not deadlock the barrier."""
    db.add_experiment(_pbt("sync", population=2, max_generations=3, synchronous=True))
    experiment = db.get_experiment("sync")
    assert experiment.synchronous is True
    first, second = experiment.next_job(timeout=0), experiment.next_job(timeout=0)
    _finish(first, 0.9)
    # The first member finished generation 0, the second not: the barrier holds.
    with pytest.raises(NoJobError, match="synchronous"):
        experiment.next_job(timeout=0)
    # The second worker is lost: its short lease expires; its member is retried
    # first (it holds the barrier), then the population moves on.
    db._storage.renew_lease("sync", second.id, second._lease_token or "", 0.05)
    time.sleep(0.3)
    retry = experiment.next_job(timeout=0)
    assert retry.member == second.member and retry.generation == 0
    assert experiment.get_job(second.id).status == schedy.Job.CRASHED
    _finish(retry, 0.1)
    generations = []
    while True:
        try:
            job = experiment.next_job(timeout=0)
        except NoJobError:
            break
        generations.append(job.generation)
        _finish(job, 0.5)
    assert generations == sorted(generations)  # generation by generation
    assert db.get_experiment("sync").status == schedy.Experiment.DONE


def test_paging_after_an_id_no_backend_could_store_finds_nothing(db: schedy.SchedyDB) -> None:
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    with pytest.raises(NotFoundError):
        db._storage.list_jobs("m", after="nul\x00id")


#: Strings no backend can store alike: a NUL (PostgreSQL refuses it), a lone
#: surrogate (no UTF-8 form: JSON's "\ud800" escape decodes to one), too long.
_UNSTORABLE_STRINGS = ["nul\x00", "lone\ud800", "x" * 300]


@pytest.mark.parametrize("bad", _UNSTORABLE_STRINGS, ids=["nul", "surrogate", "long"])
def test_no_string_argument_reaches_the_database_unchecked(db: schedy.SchedyDB, bad: str) -> None:
    # Each call either refuses clearly (ValueError naming what, not a codec's
    # error), finds nothing, or answers "no" -- never a database error (a 503
    # on the server) and never a different answer on another backend.
    from schedy._records import ExperimentRecord, JobUpdate
    from schedy.storage._http import HTTPStorage

    storage = db._storage
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    job = experiment.next_job()
    token = job._lease_token or ""

    def outcome(call: Any) -> str:
        try:
            answer = call()
        except NotFoundError:
            return "not found"
        except UnsafeUpdateError:
            return "unsafe"
        except UnicodeError as error:  # a ValueError too, but says nothing useful
            return f"codec error: {error}"
        except ValueError:
            return "refused"
        return f"answered {answer!r}"

    calls: dict[str, Any] = {
        "create_experiment": lambda: storage.create_experiment(
            ExperimentRecord(bad, "manual", "RUNNING", {})
        ),
        "get_experiment": lambda: storage.get_experiment(bad),
        "delete_experiment": lambda: storage.delete_experiment(bad),
        "get_job": lambda: storage.get_job("m", bad),
        "delete_job": lambda: storage.delete_job("m", bad),
        "update_job": lambda: storage.update_job("m", bad, JobUpdate(status="DONE")),
        "update_job token": lambda: storage.update_job("m", job.id, JobUpdate(), bad),
        "add_job value": lambda: storage.add_job("m", "QUEUED", {"x": bad}, {}),
        "add_job key": lambda: storage.add_job("m", "QUEUED", {bad: 1}, {}),
        "renew_lease job": lambda: storage.renew_lease("m", bad, token, 30),
        "renew_lease token": lambda: storage.renew_lease("m", job.id, bad, 30),
        "renew_lease experiment": lambda: storage.renew_lease(bad, job.id, token, 30),
        "claim_job request": lambda: storage.claim_job("m", 30, bad),
        "claim_job experiment": lambda: storage.claim_job(bad, 30),
        "top_jobs": lambda: storage.top_jobs(bad, 1),
        "get_members": lambda: storage.get_members(bad),
    }
    if not isinstance(storage, HTTPStorage):  # tokens are kept by the server's store
        calls["revoke_token"] = lambda: storage.revoke_token(bad)
        calls["find_token"] = lambda: storage.find_token(bad)
    outcomes = {name: outcome(call) for name, call in calls.items()}
    allowed = {"not found", "refused", "unsafe", "answered False", "answered None"}
    allowed |= {o for o in outcomes.values() if o.startswith("answered JobRecord")}
    assert {name: o for name, o in outcomes.items() if o not in allowed} == {}
    with job:  # the job itself is untouched by all of that
        job.results["loss"] = 1.0
    assert experiment.get_job(job.id).status == "DONE"


def test_an_error_no_database_can_store_as_it_is_still_ends_the_job(db: schedy.SchedyDB) -> None:
    # The traceback is text the user's code made: a lone surrogate (no UTF-8
    # form) or a NUL (PostgreSQL refuses it) must not leave the job RUNNING.
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    with pytest.raises(RuntimeError), experiment.next_job() as job:
        job.results["loss"] = 0.5
        raise RuntimeError("bad \ud800 and \x00 text")
    stored = experiment.get_job(job.id)
    assert stored.status == "CRASHED"
    assert stored.results == {"loss": 0.5}
    assert "bad \\ud800 and \\x00 text" in (stored.error or "")
