"""Checkpoint clean-up: bounded disk use, and no job ever loses its parent's checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import schedy
from schedy.integrations._checkpoints import prune_checkpoints


def _experiment(db: schedy.SchedyDB, population: int) -> schedy.Experiment:
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "pbt",
            schedy.pbt.MAXIMIZE,
            "acc",
            exploit=schedy.pbt.Truncate(0.25),
            explore={"lr": schedy.pbt.Perturb()},
            initial_distributions={"lr": schedy.random.Uniform(0.1, 1.0)},
            population_size=population,
            max_generations=25,
            seed=5,
        )
    )
    return db.get_experiment("pbt")


def _start(job: schedy.Job, folder: Path) -> float:
    """What a worker does first: load the parent's checkpoint, which must exist."""
    if "model_path" not in job.results:
        return 0.0
    path = Path(job.results["model_path"])
    assert path.exists(), f"job {job.id} lost its parent's checkpoint {path}"
    return float(path.read_text())


@pytest.mark.parametrize("keep_top_k", [0, 1, 3])
def test_pruning_bounds_disk_and_keeps_every_needed_checkpoint(
    store_url: str, tmp_path: Path, keep_top_k: int
) -> None:
    population, concurrent = 4, 3
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a checkpoint")  # never touched
    experiment = _experiment(schedy.SchedyDB(store_url), population)
    rng = random.Random(0)
    running: list[tuple[schedy.Job, float]] = []
    done = 0
    while True:
        while len(running) < concurrent:
            try:
                job = experiment.next_job(timeout=0)
            except schedy.errors.NoJobError:
                break
            running.append((job, _start(job, folder)))
        if not running:
            break
        job, weight = running.pop(rng.randrange(len(running)))  # finish in random order
        weight += job.hyperparameters["lr"]
        path = folder / f"{job.id}.ckpt"
        path.write_text(repr(weight))
        job.results = {"acc": weight + rng.random(), "model_path": str(path)}
        job.put()
        prune_checkpoints(experiment, folder, keep_top_k=keep_top_k)
        job.status = schedy.Job.DONE
        job.put()
        done += 1
        checkpoints = [p for p in folder.iterdir() if p.suffix == ".ckpt"]
        # member heads + jobs in flight (+ this one, now a head) + the best ones
        assert len(checkpoints) <= population + len(running) + 1 + keep_top_k
    assert done > 50
    assert (folder / "notes.txt").exists()
    for best in experiment.best_jobs(keep_top_k):
        assert Path(best.results["model_path"]).exists()


def test_keep_all_and_other_experiments_files(tmp_path: Path) -> None:
    db = schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db")
    experiment = _experiment(db, 2)
    other = schedy.ManualSearch("other")
    db.add_experiment(other)
    foreign = tmp_path / f"{other.add_job(hyperparameters={}).id}.ckpt"
    foreign.write_text("0")
    for _ in range(6):
        with experiment.next_job() as job:
            path = tmp_path / f"{job.id}.ckpt"
            path.write_text("1")
            job.results = {"acc": 1.0, "model_path": str(path)}
    assert prune_checkpoints(experiment, tmp_path, keep_top_k=None) == []  # keeps everything
    with pytest.raises(ValueError, match="keep_top_k must be an int >= 0"):
        prune_checkpoints(experiment, tmp_path, keep_top_k=-1)  # was "keep all" as keep_top
    removed = prune_checkpoints(experiment, tmp_path, keep_top_k=0)
    assert len(removed) == 4 and foreign.exists()
    assert prune_checkpoints(experiment, tmp_path / "missing") == []


def test_fsspec_url_folder(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    db = schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db")
    experiment = _experiment(db, 1)
    for _ in range(3):
        with experiment.next_job() as job:
            url = f"memory://ckpt/{job.id}.ckpt"
            with fs.open(url, "w") as handle:
                handle.write("1")
            job.results = {"acc": 1.0, "model_path": url}
    removed = prune_checkpoints(experiment, "memory://ckpt", keep_top_k=0)
    assert len(removed) == 2
    assert fs.ls("memory://ckpt", detail=False) == [f"/ckpt/{job.id}.ckpt"]
