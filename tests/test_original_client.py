"""Code written for the original Schedy client keeps working where its meaning exists."""

from __future__ import annotations

import pytest

import schedy
from schedy import errors


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (errors.NoJobError, (errors.ClientRequestError, errors.ClientError, errors.HTTPError)),
        (errors.ResourceExistsError, (errors.ClientRequestError,)),
        (errors.UnsafeUpdateError, (errors.ClientRequestError,)),
        (errors.NotFoundError, (errors.ClientRequestError,)),
        (errors.AuthenticationError, (errors.ClientRequestError, errors.ServerError)),
        (errors.ReauthenticateError, (errors.ClientRequestError,)),
        (errors.UnhandledResponseError, (errors.ClientError,)),
        (errors.ServerError, (errors.HTTPError,)),
    ],
)
def test_the_old_error_tree_still_catches(error: type[Exception], bases: tuple[type, ...]) -> None:
    for base in (*bases, errors.SchedyError):
        assert issubclass(error, base)


def test_an_old_except_clause_catches_no_job(sqlite_url: str) -> None:
    db = schedy.SchedyDB(sqlite_url)
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    try:
        experiment.next_job()
    except schedy.errors.ClientRequestError:  # as in the original client's examples
        caught = True
    assert caught


def test_put_safe_try_run_and_delete_ensure(sqlite_url: str) -> None:
    db = schedy.SchedyDB(sqlite_url)
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    job = experiment.add_job(hyperparameters={"x": 1})
    job.try_run()  # the original worker: try_run, then with job
    assert experiment.get_job(job.id).status == schedy.Job.RUNNING
    with pytest.raises(errors.UnsafeUpdateError, match="RUNNING already"):
        experiment.get_job(job.id).try_run()
    with job:
        job.results["y"] = 2
    assert experiment.get_job(job.id).status == schedy.Job.DONE
    fixed = experiment.get_job(job.id)
    fixed.results["note"] = "by hand"
    fixed.put(safe=False)
    assert experiment.get_job(job.id).results == {"y": 2, "note": "by hand"}
    job.delete()
    job.delete(ensure=False)  # gone already: fine
    with pytest.raises(errors.NotFoundError):
        job.delete()
    experiment.delete()
    experiment.delete(ensure=False)
    with pytest.raises(errors.NotFoundError):
        experiment.delete(ensure=True)


@pytest.mark.parametrize("option", ["config_path", "config_override"])
def test_the_old_configuration_says_to_give_a_url(option: str) -> None:
    with pytest.raises(TypeError, match="takes a store URL"):
        schedy.SchedyDB(**{option: "client.json"})


def test_the_worker_loop_runs_a_whole_experiment(sqlite_url: str) -> None:
    db = schedy.SchedyDB(sqlite_url)
    experiment = schedy.PopulationBasedTraining(
        "loop",
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.5),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.Uniform(0.1, 1.0)},
        population_size=3,
        max_generations=4,
        seed=1,
    )
    db.add_experiment(experiment)
    crashed = 0
    for job in experiment.jobs():
        try:
            with job:
                if job.generation == 1 and job.member == 0 and not crashed:
                    raise RuntimeError("a member crashing once")
                job.results["acc"] = job.hyperparameters["lr"]
        except RuntimeError:
            crashed += 1
    assert crashed == 1
    assert db.get_experiment("loop").status == schedy.Experiment.DONE
    members = experiment.population()
    assert all(m.ended for m in members) and max(m.head_generation or 0 for m in members) == 3
