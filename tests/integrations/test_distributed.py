"""Members bigger than one GPU: rank 0 claims, every rank trains the same job.

Unit tests run two "ranks" as threads over a fake process group whose
broadcast pickles what it carries (as torch.distributed does); the slow tests
run two real processes over gloo: a plain torchrun loop and Lightning's own
DDP launcher.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import schedy
from schedy.errors import NoJobError, SchedyError
from schedy.integrations import _distributed
from schedy.integrations._distributed import JobSnapshot, ReplicaJob

torch = pytest.importorskip("torch")
from schedy.integrations.torch import report, save  # noqa: E402

JOIN_SECONDS = 30


class FakeGroup:
    """A process group of ``size`` threads: rank 0's value, pickled, reaches every rank."""

    def __init__(self, size: int = 2) -> None:
        self._barrier = threading.Barrier(size, timeout=JOIN_SECONDS)
        self._sent: bytes = b""
        self.sent: list[Any] = []

    def broadcast(self, rank: int) -> Callable[[Any], Any]:
        def broadcast(value: Any) -> Any:
            if rank == 0:
                self._sent = pickle.dumps(value)  # a Job would refuse: only snapshots travel
                self.sent.append(value)
            self._barrier.wait()
            received = pickle.loads(self._sent)
            self._barrier.wait()  # every rank has read before rank 0 sends again
            return received

        return broadcast


def run_ranks(*bodies: Callable[[], Any]) -> list[Any]:
    """Run one body per rank in threads; their results, or re-raise the first error."""
    outcomes: list[Any] = [None] * len(bodies)

    def run(index: int) -> None:
        try:
            outcomes[index] = ("ok", bodies[index]())
        except BaseException as error:
            outcomes[index] = ("error", error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
        assert not thread.is_alive(), "a rank hangs"
    return outcomes


def _pbt(db: schedy.SchedyDB, generations: int = 2) -> None:
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "dist",
            schedy.pbt.MINIMIZE,
            "loss",
            exploit=schedy.pbt.Truncate(),
            explore={"lr": schedy.pbt.Perturb()},
            initial_distributions={"lr": schedy.random.LogUniform(1e-3, 1e-1)},
            population_size=2,
            max_generations=generations,
        )
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[schedy.SchedyDB]:
    with schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db") as handle:
        yield handle


def test_rank_0_claims_and_every_rank_trains_the_same_jobs(db: schedy.SchedyDB) -> None:
    _pbt(db)
    group = FakeGroup()

    def rank(number: int) -> list[tuple[str, str, dict[str, Any], Any]]:
        experiment = db.get_experiment("dist")
        seen = []
        for job in _distributed.jobs(experiment, broadcast=group.broadcast(number), rank=number):
            with job:
                seen.append(
                    (type(job).__name__, job.id, job.hyperparameters, job.results.get("loss"))
                )
                job.results["loss"] = float(number) + 1.0  # only rank 0's reaches the store
                job.results["rank"] = number
        return seen

    (status0, zero), (status1, one) = run_ranks(lambda: rank(0), lambda: rank(1))
    assert (status0, status1) == ("ok", "ok"), (zero, one)
    assert [entry[0] for entry in zero] == ["Job"] * len(zero)
    assert [entry[0] for entry in one] == ["ReplicaJob"] * len(one)
    assert [entry[1:] for entry in zero] == [entry[1:] for entry in one]  # same ids, values
    jobs = list(db.get_experiment("dist").all_jobs())
    assert sorted(job.id for job in jobs) == sorted(entry[1] for entry in zero)  # 1 claim each
    assert {job.status for job in jobs} == {schedy.Job.DONE}
    assert {job.results["rank"] for job in jobs} == {0}
    assert db.get_experiment("dist").status == schedy.Experiment.DONE
    # What travelled: snapshots, then the news that nothing is left.
    assert all(isinstance(value, JobSnapshot) for value in group.sent[:-1])
    assert isinstance(group.sent[-1], _distributed._NoJob)


def test_a_finished_experiment_stops_every_rank(db: schedy.SchedyDB) -> None:
    db.add_experiment(schedy.ManualSearch("queue"))  # empty: nothing can come
    group = FakeGroup()

    def rank(number: int) -> Any:
        experiment = db.get_experiment("queue")
        return _distributed.next_job(experiment, broadcast=group.broadcast(number), rank=number)

    outcomes = run_ranks(lambda: rank(0), lambda: rank(1))
    for status, error in outcomes:
        assert status == "error" and isinstance(error, NoJobError), error
    assert str(outcomes[0][1]) == str(outcomes[1][1])


class FakeExperiment:
    """Rank 0's experiment, whose next_job runs ``claims`` in turn."""

    name = "dist"

    def __init__(self, *claims: Callable[[float | None], Any]) -> None:
        self.claims = list(claims)
        self.timeouts: list[float | None] = []

    def next_job(self, timeout: float | None = None, lease: float | None = None) -> Any:
        self.timeouts.append(timeout)
        return self.claims.pop(0)(timeout)


def test_a_failed_claim_on_rank_0_stops_the_other_ranks_with_its_reason() -> None:
    def fail(timeout: float | None) -> Any:
        raise ConnectionError("the store is away")

    group = FakeGroup()
    outcomes = run_ranks(
        lambda: _distributed.next_job(FakeExperiment(fail), broadcast=group.broadcast(0), rank=0),
        lambda: _distributed.next_job(FakeExperiment(), broadcast=group.broadcast(1), rank=1),
    )
    assert isinstance(outcomes[0][1], ConnectionError)
    assert isinstance(outcomes[1][1], SchedyError)
    assert "rank 0 could not claim a job" in str(outcomes[1][1])
    assert "the store is away" in str(outcomes[1][1])


def test_a_long_wait_for_a_busy_population_keeps_the_other_ranks_waiting(
    monkeypatch: pytest.MonkeyPatch, make_job: Callable[..., Any]
) -> None:
    # The other ranks wait inside a collective, which the process group's
    # timeout would cut: rank 0 waits in chunks and says it still waits.
    monkeypatch.setattr(_distributed, "WAIT_CHUNK_SECONDS", 0.05)
    job = make_job("j", {"lr": 0.1}, results={"model_path": "/c/parent.pt"})
    job.experiment = FakeExperiment()

    def busy(timeout: float | None) -> Any:
        threading.Event().wait(timeout)
        raise NoJobError("No job within the timeout: every member is busy")

    experiment = FakeExperiment(busy, busy, lambda timeout: job)
    group = FakeGroup()
    (_, zero), (status, one) = run_ranks(
        lambda: _distributed.next_job(experiment, broadcast=group.broadcast(0), rank=0),
        lambda: _distributed.next_job(FakeExperiment(), broadcast=group.broadcast(1), rank=1),
    )
    assert zero is job
    assert status == "ok" and isinstance(one, ReplicaJob)
    assert (one.id, one.hyperparameters, one.results) == ("j", {"lr": 0.1}, job.results)
    assert [type(value).__name__ for value in group.sent] == [
        "_StillWaiting",
        "_StillWaiting",
        "JobSnapshot",
    ]
    assert experiment.timeouts == [0.05, 0.05, 0.05]


def test_a_user_timeout_still_bounds_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_distributed, "WAIT_CHUNK_SECONDS", 0.05)

    def busy(timeout: float | None) -> Any:
        threading.Event().wait(timeout)
        raise NoJobError("No job within the timeout")

    experiment = FakeExperiment(*[busy] * 50)
    group = FakeGroup()
    outcomes = run_ranks(
        lambda: _distributed.next_job(
            experiment, timeout=0.12, broadcast=group.broadcast(0), rank=0
        ),
        lambda: _distributed.next_job(FakeExperiment(), broadcast=group.broadcast(1), rank=1),
    )
    assert all(isinstance(error, NoJobError) for _, error in outcomes)
    assert 2 <= len(experiment.timeouts) <= 4  # 0.05 + 0.05 + what is left


def test_a_job_sent_to_another_process_points_to_distributed_jobs(db: schedy.SchedyDB) -> None:
    _pbt(db)
    with db.get_experiment("dist").next_job() as job:
        with pytest.raises(TypeError, match=r"cannot be pickled .*distributed_jobs"):
            pickle.dumps(job)
        assert pickle.loads(pickle.dumps(JobSnapshot.of(job))).id == job.id  # what travels


def _replica(results: dict[str, Any] | None = None) -> ReplicaJob:
    snapshot = JobSnapshot("dist", "j", "RUNNING", {"lr": 0.1}, dict(results or {}), budget=3.0)
    return ReplicaJob(snapshot, FakeExperiment())  # type: ignore[arg-type]


def test_a_replica_job_stores_nothing(tmp_path: Path) -> None:
    job = _replica()
    with job as entered:
        assert entered is job
        report(job, {"loss": 0.5}, epoch=1)  # recorded here, pushed by rank 0 only
        path = save(job, torch.nn.Linear(1, 1), checkpoint_dir=tmp_path, epoch=1)
    assert job.status == schedy.Job.DONE  # here only: rank 0 ends the stored job
    assert job.results["loss"] == 0.5
    assert path == str(tmp_path / "j.pt") and job.results["model_path"] == path
    assert not os.path.exists(path)  # rank 0 writes the one checkpoint
    assert (job.job_id, job.budget) == ("j", 3.0)
    for call in (job.delete, job.try_run):
        with pytest.raises(SchedyError, match=r"rank other than 0 .* call it there"):
            call()


class StubStrategy:
    """Lightning's collectives as DDP returns them: rank 0's object, and whether all agreed."""

    def __init__(self, first: Any, all_agree: bool = True) -> None:
        self.first, self.all_agree = first, all_agree

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.first

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision and self.all_agree


def test_setup_gives_every_rank_rank_0s_results() -> None:
    job = _replica({"model_path": "/c/old.ckpt"})
    moved_on = JobSnapshot("dist", "j", "RUNNING", {"lr": 0.1}, {"model_path": "/c/new.ckpt"})
    _distributed.agree(job, StubStrategy(moved_on), rank=1, world_size=2)
    assert job.results == {"model_path": "/c/new.ckpt"}


@pytest.mark.parametrize(
    ("rank", "first_id", "first_lr", "all_agree", "refused"),
    [
        (1, "j", 0.1, True, None),  # every rank holds rank 0's job
        (1, "k", 0.1, False, "hold different jobs"),  # this rank claimed one of its own
        (0, "j", 0.1, False, "hold different jobs"),  # rank 0 agrees; another rank does not
        (1, "j", 0.2, False, "with different hyperparameters"),
    ],
)
def test_ranks_that_cannot_be_made_consistent_are_refused(
    make_job: Callable[..., Any],
    rank: int,
    first_id: str,
    first_lr: float,
    all_agree: bool,
    refused: str | None,
) -> None:
    pytest.importorskip("lightning")
    from schedy.integrations.lightning import SchedyCallback

    callback = SchedyCallback(make_job("j", {"lr": 0.1}), "val_acc")
    first = JobSnapshot("dist", first_id, "RUNNING", {"lr": first_lr}, {})
    trainer: Any = SimpleNamespace(
        world_size=2,
        global_rank=rank,
        strategy=StubStrategy(first, all_agree),
        loggers=[],
        callbacks=[],
    )
    if refused is None:
        callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
        return
    with pytest.raises(RuntimeError, match=rf"{refused} .*distributed_jobs.* one worker per GPU"):
        callback.setup(trainer, None, "fit")  # type: ignore[arg-type]


def test_one_process_claims_and_leaves_the_job_for_the_ranks_it_launches(
    db: schedy.SchedyDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lightning's launcher starts the other ranks from rank 0's fit, before any
    # process group: they inherit the job's id, and read the job from the store.
    _pbt(db)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", _distributed.HANDOFF_ENV):
        monkeypatch.delenv(name, raising=False)
    experiment = db.get_experiment("dist")
    with _distributed.next_job(experiment) as job:
        note = json.loads(os.environ[_distributed.HANDOFF_ENV])
        assert note == {"pid": os.getpid(), "experiment": "dist", "job": job.id}
        # In a child of this process started with LOCAL_RANK=1:
        monkeypatch.setattr(os, "getppid", os.getpid)
        monkeypatch.setenv("LOCAL_RANK", "1")
        child = _distributed.next_job(experiment)
        assert isinstance(child, ReplicaJob)
        assert (child.id, child.hyperparameters) == (job.id, job.hyperparameters)
        # Not our parent's note (inherited from further up): not honoured.
        monkeypatch.setattr(os, "getppid", lambda: 1)
        other = _distributed.next_job(experiment)
        assert isinstance(other, schedy.Job) and other.id != job.id
        other.__exit__(None, None, None)
        monkeypatch.setattr(os, "getppid", os.getpid)
        db.add_experiment(schedy.ManualSearch("other"))
        with pytest.raises(SchedyError, match="every rank must ask for the same experiment"):
            _distributed.next_job(db.get_experiment("other"))


# -- two real processes over gloo --------------------------------------------
def _run(command: list[str], tmp_path: Path) -> None:
    outer = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SCHEDY_URL")
    env = {k: v for k, v in os.environ.items() if k not in outer}
    env.pop(_distributed.HANDOFF_ENV, None)
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _check_one_run(db: schedy.SchedyDB, logs: list[list[dict[str, Any]]]) -> None:
    """Both ranks trained the same jobs from the same checkpoints; each job claimed and
    reported once, by rank 0; the experiment completed."""
    zero, one = logs
    assert [entry["type"] for entry in zero] == ["Job"] * len(zero)
    assert [entry["type"] for entry in one] == ["ReplicaJob"] * len(one)
    strip = [{k: v for k, v in entry.items() if k not in ("type", "rank")} for entry in zero]
    assert strip == [{k: v for k, v in entry.items() if k not in ("type", "rank")} for entry in one]
    experiment = db.get_experiment("dist")
    jobs = {job.id: job for job in experiment.all_jobs()}
    assert sorted(jobs) == sorted(entry["job"] for entry in zero)  # one claim per job
    assert {job.status for job in jobs.values()} == {schedy.Job.DONE}
    assert {job.results["rank"] for job in jobs.values()} == {0}  # only rank 0 reported
    assert experiment.status == schedy.Experiment.DONE
    restored = [entry for entry in zero if entry["from"]]
    assert restored, "no job continued from a checkpoint"
    for entry in restored:  # restored what the parent saved, on both ranks
        parent = jobs[entry["from"].rsplit("/", 1)[-1].split(".")[0]]
        assert entry["from"] == parent.results["model_path"]
    for job in jobs.values():  # one history entry per epoch: nobody reported twice
        assert job.results["history"]["epoch"] == list(range(1, job.results["epoch"] + 1))


TORCHRUN_LOOP = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    import schedy
    from schedy.integrations.torch import distributed_jobs, report, restore, save

    experiment = schedy.SchedyDB(sys.argv[1]).get_experiment("dist")
    log = []
    for job in distributed_jobs(experiment):  # rank 0 claims; rank 1 gets the same job
        with job:
            parent = job.results.get("model_path")
            torch.manual_seed(0)
            model = torch.nn.Linear(4, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=job.hyperparameters["lr"])
            start = restore(job, model, optimizer).get("epoch", 0)
            weights = float(sum(p.detach().sum() for p in model.parameters()))
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            inputs = torch.randn(16, 4, generator=torch.Generator().manual_seed(dist.get_rank()))
            loss = torch.nn.functional.mse_loss(ddp(inputs), inputs.sum(1, keepdim=True))
            loss.backward()
            optimizer.step()
            dist.all_reduce(loss.detach())
            report(job, {"loss": loss.item()}, epoch=start + 1)
            save(job, model, optimizer, checkpoint_dir=sys.argv[2], epoch=start + 1)
            job.results["rank"] = dist.get_rank()
            log.append({"job": job.id, "hp": job.hyperparameters, "from": parent,
                        "start": start, "weights": weights, "type": type(job).__name__})
    with open(f"rank{dist.get_rank()}.json", "w") as file:
        json.dump(log, file)
    """
)


@pytest.mark.slow
def test_a_torchrun_loop_trains_each_job_on_both_ranks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with schedy.SchedyDB(url) as db:
        _pbt(db)
        (tmp_path / "loop.py").write_text(TORCHRUN_LOOP)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        _run([*torchrun, "--nproc-per-node", "2", "loop.py", url, "ckpt"], tmp_path)
        logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
        _check_one_run(db, logs)


LIGHTNING_LOOP = textwrap.dedent(
    """
    import json, os, sys
    import lightning.pytorch as pl
    import torch
    import schedy
    from schedy.integrations.lightning import SchedyCallback, distributed_jobs


    class Net(pl.LightningModule):
        def __init__(self, lr):
            super().__init__()
            torch.manual_seed(0)
            self.lr, self.layer = lr, torch.nn.Linear(4, 1)

        def training_step(self, batch, index):
            inputs, targets = batch
            return torch.nn.functional.mse_loss(self.layer(inputs), targets)

        def validation_step(self, batch, index):
            inputs, targets = batch
            loss = torch.nn.functional.mse_loss(self.layer(inputs), targets)
            self.log("val_loss", loss, sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)


    class Probe(pl.Callback):
        def on_train_start(self, trainer, module):
            self.weights = float(sum(p.detach().sum() for p in module.parameters()))
            self.lr = trainer.optimizers[0].param_groups[0]["lr"]


    inputs = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(inputs, inputs.sum(1, keepdim=True))
    experiment = schedy.SchedyDB(sys.argv[1]).get_experiment("dist")
    log, rank = [], None
    for job in distributed_jobs(experiment):  # rank 1 is started by rank 0's first fit
        with job:
            parent, probe = job.results.get("model_path"), Probe()
            schedy_callback = SchedyCallback(job, "val_loss", checkpoint_dir=sys.argv[2])
            trainer = pl.Trainer(
                accelerator="cpu", devices=2, strategy="ddp", max_epochs=100, logger=False,
                enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, callbacks=[schedy_callback, probe],
            )
            loader = torch.utils.data.DataLoader(data, batch_size=8)
            trainer.fit(Net(job.hyperparameters["lr"]), loader, loader)
            rank = trainer.global_rank
            job.results["rank"] = rank
            log.append({"job": job.id, "hp": job.hyperparameters, "from": parent,
                        "restored_from": schedy_callback.restored_from,
                        "weights": probe.weights, "lr": probe.lr, "type": type(job).__name__})
    with open(f"rank{rank}.json", "w") as file:
        json.dump(log, file)
    """
)


@pytest.mark.slow
def test_lightning_ddp_trains_each_job_on_both_ranks(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    url = f"sqlite:///{tmp_path}/s.db"
    with schedy.SchedyDB(url) as db:
        _pbt(db)
        (tmp_path / "loop.py").write_text(LIGHTNING_LOOP)
        _run([sys.executable, "loop.py", url, str(tmp_path / "ckpt")], tmp_path)
        logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
        _check_one_run(db, logs)
        for entry in logs[0]:
            assert entry["restored_from"] == entry["from"]
            assert entry["lr"] == pytest.approx(entry["hp"]["lr"])


REFUSED_LOOP = LIGHTNING_LOOP.replace(
    "for job in distributed_jobs(experiment):", "for job in experiment.jobs():"
)


@pytest.mark.slow
def test_ddp_processes_that_claimed_their_own_jobs_are_refused(tmp_path: Path) -> None:
    # Lightning's strategy='ddp' re-runs the script per device: with
    # experiment.next_job() every process claims a job. Silently, one model
    # would train with two jobs' learning rates and the second job end DONE
    # without results; instead both fail, saying what to use.
    pytest.importorskip("lightning")
    url = f"sqlite:///{tmp_path}/s.db"
    with schedy.SchedyDB(url) as db:
        _pbt(db)
        (tmp_path / "loop.py").write_text(REFUSED_LOOP)
        outer = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SCHEDY_URL")
        env = {k: v for k, v in os.environ.items() if k not in outer}
        done = subprocess.run(
            [sys.executable, "loop.py", url, str(tmp_path / "ckpt")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode != 0, done.stdout + done.stderr
        assert "hold different jobs" in done.stderr
        jobs = list(db.get_experiment("dist").all_jobs())
        assert len(jobs) == 2
        for job in jobs:
            assert job.status == schedy.Job.CRASHED
            assert "distributed_jobs(experiment)" in (job.error or "")
            assert "one worker per GPU" in (job.error or "")
