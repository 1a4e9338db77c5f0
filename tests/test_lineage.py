"""Seeing and reusing what PBT found: best(), lineage(), best_schedule(), replay.

A constructed population with known exploit events, on every backend.
"""

from __future__ import annotations

import json

import pytest

import schedy
from schedy.errors import NoJobError


@pytest.fixture
def db(store_url: str) -> schedy.SchedyDB:
    handle = schedy.SchedyDB(store_url)
    yield handle
    handle.close()


def _population(db: schedy.SchedyDB) -> tuple[schedy.PopulationBasedTraining, dict[str, str]]:
    """Two members; member 1 is bad and copies member 0 at generation 2.

    Jobs (member, generation, score): a0 (0,0,.5) b0 (1,0,.1) a1 (0,1,.6)
    b1=copy of a1 (1,2,.8, lr explored) a2 (0,2,.7): the best job is b1,
    whose lineage is a0 -> a1 -> b1.
    """
    experiment = schedy.PopulationBasedTraining(
        "pbt",
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.5),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.LogUniform(1e-3, 1e-1)},
        population_size=2,
        max_generations=3,
        seed=4,
    )
    db.add_experiment(experiment)
    ids: dict[str, str] = {}
    scores = {(0, 0): 0.5, (1, 0): 0.1, (0, 1): 0.6, (1, 2): 0.8, (0, 2): 0.7}
    names = {(0, 0): "a0", (1, 0): "b0", (0, 1): "a1", (1, 2): "b1", (0, 2): "a2"}
    for _ in range(5):
        with experiment.next_job() as job:
            key = (job.member, job.generation)
            job.results["acc"] = scores[key]
            job.results["model_path"] = f"ckpt/{job.id}"
            ids[names[key]] = job.id
    return experiment, ids


def test_best_is_the_best_done_job_ever(db: schedy.SchedyDB) -> None:
    experiment, ids = _population(db)
    best = experiment.best()
    assert best is not None and best.id == ids["b1"]
    assert [job.id for job in experiment.best_jobs(2)] == [ids["b1"], ids["a2"]]
    assert schedy.ManualSearch("m").name == "m"
    manual = schedy.ManualSearch("m")
    db.add_experiment(manual)
    assert manual.best() is None


def test_lineage_and_best_schedule(db: schedy.SchedyDB) -> None:
    experiment, ids = _population(db)
    steps = experiment.best_schedule()
    assert [step["job_id"] for step in steps] == [ids["a0"], ids["a1"], ids["b1"]]
    assert [step["member"] for step in steps] == [0, 0, 1]
    assert [step["generation"] for step in steps] == [0, 1, 2]
    assert [step["score"] for step in steps] == [0.5, 0.6, 0.8]
    assert [step["exploited_from"] for step in steps] == [None, None, ids["a1"]]
    lr = [step["hyperparameters"]["lr"] for step in steps]
    assert lr[0] == lr[1] != lr[2] and 0.8 * lr[1] <= lr[2] <= 1.2 * lr[1]
    json.dumps(steps)  # JSON as it is
    assert experiment.lineage(ids["a2"])[-1]["job_id"] == ids["a2"]
    folded = experiment.best_schedule(compact=True)
    assert [(row["member"], row["generations"], row["jobs"]) for row in folded] == [
        (0, (0, 1), 2),
        (1, (2, 2), 1),
    ]
    assert folded[0]["score"] == 0.6 and folded[0]["last_job_id"] == ids["a1"]


def test_lineage_without_a_scored_job_says_so(db: schedy.SchedyDB) -> None:
    manual = schedy.ManualSearch("m")
    db.add_experiment(manual)
    with pytest.raises(NoJobError, match="give a job id"):
        manual.best_schedule()


def test_to_dataframe_flattens_hyperparameters_and_results(db: schedy.SchedyDB) -> None:
    pytest.importorskip("pandas")
    experiment, ids = _population(db)
    frame = experiment.to_dataframe()
    assert len(frame) == 5
    assert {"id", "status", "member", "generation", "hyperparameters.lr", "results.acc"} <= set(
        frame.columns
    )
    assert frame.set_index("id").loc[ids["b1"], "results.acc"] == 0.8


def test_a_replay_retrains_the_schedule_from_scratch(db: schedy.SchedyDB) -> None:
    experiment, ids = _population(db)
    schedule = experiment.best_schedule()
    replay = experiment.replay("retrain")
    db.add_experiment(replay)
    replay = db.get_experiment("retrain")
    assert isinstance(replay, schedy.Replay)
    assert replay.source == {"experiment": "pbt", "job_id": ids["b1"]}
    trained = []
    while True:
        try:
            job = replay.next_job(timeout=0)
        except NoJobError:
            break
        with job:
            # A deterministic "training": the score follows the step's lr.
            previous = job.results.get("model_path")
            assert previous is None or previous.startswith("replay/")  # its own, never the source's
            job.results["acc"] = schedule[job.generation]["score"]
            job.results["model_path"] = f"replay/{job.id}"
        trained.append(job)
    assert [job.hyperparameters for job in trained] == [s["hyperparameters"] for s in schedule]
    assert [job.generation for job in trained] == [0, 1, 2]
    assert [job.parent_id for job in trained] == [None, trained[0].id, trained[1].id]
    assert db.get_experiment("retrain").status == schedy.Experiment.DONE
    replayed = replay.best_schedule()
    assert [step["score"] for step in replayed] == [step["score"] for step in schedule]


def test_a_crashed_replay_step_is_retried(db: schedy.SchedyDB) -> None:
    experiment, _ = _population(db)
    db.add_experiment(experiment.replay("retrain"))
    replay = db.get_experiment("retrain")
    with replay.next_job() as first:
        first.results["acc"] = 0.1
    with pytest.raises(RuntimeError), replay.next_job() as job:
        raise RuntimeError("lost")
    retry = replay.next_job()
    assert retry.generation == 1 and retry.parent_id == first.id
    assert retry.hyperparameters == job.hyperparameters
