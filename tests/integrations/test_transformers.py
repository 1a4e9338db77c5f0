"""HuggingFace Transformers: SchedyCallback and train() with real Trainers on a tiny BERT.

The model is built from a config (no download): 2 layers, hidden size 32, on
a synthetic task it learns in a few steps (the label is whether the first
token is in the upper half of the vocabulary). Dropout is off, so a resumed
run can be compared with an uninterrupted one exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
safetensors_torch = pytest.importorskip("safetensors.torch")

import schedy  # noqa: E402  (after the importorskips)
from schedy.integrations import MissingMetricError  # noqa: E402
from schedy.integrations import _checkpoints as schedy_checkpoints  # noqa: E402
from schedy.integrations import transformers as schedy_hf  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

Job = Callable[..., Any]
VOCAB, LENGTH = 16, 8
BATCH = 16
TRAIN, EVAL = 64, 32  # 4 optimizer steps per epoch
STEPS_PER_EPOCH = TRAIN // BATCH
TOTAL_EPOCHS = 50  # the schedule spans the lineage: 200 steps


class Toy(torch.utils.data.Dataset):  # type: ignore[misc]
    def __init__(self, ids: Any) -> None:
        self.ids = ids
        self.labels = (ids[:, 0] >= VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[i],
        }


_IDS = torch.randint(1, VOCAB, (TRAIN + EVAL, LENGTH), generator=torch.Generator().manual_seed(0))
TRAIN_SET, EVAL_SET = Toy(_IDS[:TRAIN]), Toy(_IDS[TRAIN:])


def make_model() -> Any:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def accuracy(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def arguments(folder: Path, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "output_dir": str(folder / "out"),
        "learning_rate": 1e-3,
        "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": EVAL,
        "num_train_epochs": TOTAL_EPOCHS,
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "logging_strategy": "epoch",
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": 0,
        "warmup_steps": 6,
        "dataloader_num_workers": 0,
    }
    settings.update(overrides)
    return transformers.TrainingArguments(**settings)


class Probe(transformers.TrainerCallback):  # type: ignore[misc]
    """What the Trainer holds when training starts, and the lr of every optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[tuple[int, float]] = []
        self.at_start: dict[str, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer, scheduler = kwargs["optimizer"], kwargs["lr_scheduler"]
        self.at_start = {
            "step": state.global_step,
            "epoch": state.epoch,
            "weights": {k: v.detach().clone() for k, v in kwargs["model"].state_dict().items()},
            "groups": [
                {k: v for k, v in group.items() if k != "params"}
                for group in optimizer.param_groups
            ],
            "base_lrs": list(scheduler.base_lrs),
        }

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.lrs.append((state.global_step, kwargs["optimizer"].param_groups[0]["lr"]))


def run(
    job: Any,
    folder: Path,
    *,
    monitor: str = "eval_accuracy",
    callback_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[Any, Probe]:
    probe = Probe()
    callback = schedy_hf.SchedyCallback(
        job, monitor, checkpoint_dir=folder / "ckpt", **(callback_options or {})
    )
    trainer = transformers.Trainer(
        model_init=make_model,
        args=arguments(folder, **overrides),
        train_dataset=TRAIN_SET,
        eval_dataset=EVAL_SET,
        compute_metrics=accuracy,
        callbacks=[callback, probe],
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    schedy_hf.train(trainer, job)
    return trainer, probe


def linear_warmup(step: int, warmup: int, total: int = TOTAL_EPOCHS * STEPS_PER_EPOCH) -> float:
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / (total - warmup))


def saved_weights(path: str) -> dict[str, Any]:
    with schedy_hf.checkpoint_folder(path) as folder:
        return dict(safetensors_torch.load_file(os.path.join(folder, "model.safetensors")))


def assert_same_weights(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(expected) <= set(actual)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0, msg=name)


# -- arguments -----------------------------------------------------------------
def test_arguments_are_validated_at_construction(make_job: Job) -> None:
    job = make_job("j")
    with pytest.raises(ValueError, match="not both"):
        schedy_hf.SchedyCallback(job, "eval_loss", epochs_per_job=1, steps_per_job=2)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="steps_per_job"):
            schedy_hf.SchedyCallback(job, "eval_loss", steps_per_job=bad)
    with pytest.raises(ValueError, match="epochs_per_job"):
        schedy_hf.SchedyCallback(job, "eval_loss", epochs_per_job=0)
    with pytest.raises(ValueError, match="schedy writes itself"):
        schedy_hf.SchedyCallback(job, "step")
    with pytest.raises(ValueError, match="not among"):
        schedy_hf.SchedyCallback(job, "eval_loss", optimizer_hyperparameters={"m": "momentum"})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("deepspeed", "ds.json", "DeepSpeed"), ("fsdp", "full_shard", "FSDP")],
)
def test_deepspeed_and_fsdp_are_refused(
    make_job: Job, field: str, value: str, message: str
) -> None:
    from types import SimpleNamespace

    callback = schedy_hf.SchedyCallback(make_job("j"), "eval_loss")
    with pytest.raises(ValueError, match=message):
        callback.on_init_end(SimpleNamespace(**{field: value}), None, None)


def test_load_best_model_at_end_is_refused_when_the_trainer_is_built(
    make_job: Job, tmp_path: Path
) -> None:
    args = arguments(tmp_path, load_best_model_at_end=True, save_strategy="epoch")
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        transformers.Trainer(
            model=make_model(),
            args=args,
            train_dataset=TRAIN_SET,
            eval_dataset=EVAL_SET,
            callbacks=[schedy_hf.SchedyCallback(make_job("j"), "eval_loss")],
        )


def test_processes_holding_different_jobs_are_refused(make_job: Job) -> None:
    from types import SimpleNamespace

    callback = schedy_hf.SchedyCallback(make_job("j"), "eval_loss")
    state = SimpleNamespace(global_step=0, epoch=0.0, max_steps=10)
    args = SimpleNamespace(world_size=2, process_index=1)
    with pytest.raises(RuntimeError, match="one job per"):
        callback.on_train_begin(args, state, None)


def test_train_needs_exactly_one_callback(make_job: Job, tmp_path: Path) -> None:
    trainer = transformers.Trainer(
        model=make_model(), args=arguments(tmp_path, eval_strategy="no"), train_dataset=TRAIN_SET
    )
    with pytest.raises(ValueError, match="0 SchedyCallback"):
        schedy_hf.train(trainer, make_job("j"))
    with pytest.raises(TypeError, match="resumes from the job's checkpoint"):
        schedy_hf.train(trainer, resume_from_checkpoint="x")


# -- checkpoint files ------------------------------------------------------------
def test_a_missing_checkpoint_is_named(make_job: Job, tmp_path: Path) -> None:
    job = make_job("child", results={"model_path": str(tmp_path / "gone.tar")})
    callback = schedy_hf.SchedyCallback(job, "eval_loss")
    with pytest.raises(FileNotFoundError, match=r"gone\.tar"), callback.resume_checkpoint():
        pass


def test_an_archive_reaching_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    (tmp_path / "payload").write_text("x")
    with tarfile.open(evil, "w") as archive:
        archive.add(tmp_path / "payload", arcname="../payload")
    with pytest.raises(ValueError, match="not a plain file"), schedy_hf.checkpoint_folder(evil):
        pass
    (tmp_path / "not.tar").write_text("not a tar")
    with (
        pytest.raises(ValueError, match="not a checkpoint"),
        schedy_hf.checkpoint_folder(tmp_path / "not.tar"),
    ):
        pass


# -- training ----------------------------------------------------------------------
def test_jobs_continue_the_lineage_and_train_with_the_perturbed_values(
    make_job: Job, tmp_path: Path
) -> None:
    first = make_job("first")
    _, probe = run(first, tmp_path, weight_decay=0.0)
    path = first.results["model_path"]
    assert path == str(tmp_path / "ckpt" / "first.tar")
    assert first.results["epoch"] == 1
    assert first.results["step"] == STEPS_PER_EPOCH
    assert set(first.results["history"]["eval_accuracy"]) <= {first.results["eval_accuracy"]}
    assert first.pushed and first.pushed[-1]["model_path"] == path
    with schedy_hf.checkpoint_folder(path) as folder:
        names = set(os.listdir(folder))
        state = json.loads(Path(folder, "schedy.json").read_text())
    assert {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt"} <= names
    assert {"rng_state.pth", "trainer_state.json", "schedy.json"} <= names
    assert state["job_id"] == "first"
    assert state["optimizer"]["lr"] == 1e-3
    assert probe.lrs[0] == (0, 0.0)  # warm-up from 0

    # The child: learning rate doubled, weight decay and betas/eps perturbed, a longer warm-up.
    child = make_job("child", results=dict(first.results))
    lr, warmup = 2e-3, 10
    child_trainer, child_probe = run(
        child,
        tmp_path,
        learning_rate=lr,
        weight_decay=0.1,
        adam_beta1=0.8,
        adam_beta2=0.99,
        adam_epsilon=1e-6,
        warmup_steps=warmup,
    )
    start = child_probe.at_start
    # Trainer restored the parent's weights and counters ...
    assert_same_weights(start["weights"], saved_weights(path))
    assert start["step"] == STEPS_PER_EPOCH
    assert start["epoch"] == 1
    # ... and schedy's values replaced the restored optimizer's, decay groups only.
    decay, no_decay = start["groups"]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.8, 0.99) and decay["eps"] == 1e-6
    assert start["base_lrs"] == [pytest.approx(lr)] * 2
    assert [group["initial_lr"] for group in start["groups"]] == [pytest.approx(lr)] * 2
    # Every optimizer step used the new rate on the new schedule (no snap back).
    assert [step for step, _ in child_probe.lrs] == list(range(4, 8))
    for step, used in child_probe.lrs:
        assert used == pytest.approx(lr * linear_warmup(step, warmup)), step
    assert child_trainer.optimizer.state  # Adam moments came along
    assert child.results["epoch"] == 2
    assert child.results["step"] == 2 * STEPS_PER_EPOCH
    assert child.results["history"]["epoch"] == [1, 2]
    assert child.results["history"]["step"] == [4, 8]
    assert child.results["model_path"] == str(tmp_path / "ckpt" / "child.tar")


def test_two_jobs_train_exactly_like_one_uninterrupted_run(make_job: Job, tmp_path: Path) -> None:
    first = make_job("a")
    run(first, tmp_path)
    second = make_job("b", results=dict(first.results))
    run(second, tmp_path)
    whole = make_job("whole")
    run(whole, tmp_path, callback_options={"epochs_per_job": 2})
    assert whole.results["step"] == second.results["step"] == 8
    assert second.results["eval_loss"] == pytest.approx(whole.results["eval_loss"], abs=1e-6)
    resumed = saved_weights(second.results["model_path"])
    for name, tensor in saved_weights(whole.results["model_path"]).items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_a_budget_of_steps_resumes_mid_epoch(make_job: Job, tmp_path: Path) -> None:
    first = make_job("first")
    run(first, tmp_path, callback_options={"steps_per_job": 3})
    assert first.results["step"] == 3
    assert first.results["epoch"] == 0.75
    assert first.results["history"]["step"] == [3]  # evaluated once, not again at the epoch's end
    assert "eval_accuracy" in first.results  # evaluated where the job stopped
    child = make_job("child", results=dict(first.results))
    _, probe = run(child, tmp_path, callback_options={"steps_per_job": 3})
    assert probe.at_start["step"] == 3
    assert [step for step, _ in probe.lrs] == [3, 4, 5]
    assert child.results["history"]["step"] == [3, 4, 6]  # 4: the epoch's own evaluation
    assert child.results["epoch"] == 1.5


def test_missing_monitor_lists_the_metrics_that_exist(make_job: Job, tmp_path: Path) -> None:
    job = make_job("j")
    with pytest.raises(MissingMetricError, match="eval_accuracy") as caught:
        run(job, tmp_path, monitor="eval_acc", callback_options={"steps_per_job": 1})
    assert "eval_loss" in caught.value.available
    assert "model_path" not in job.results


def test_pruning_is_asked_for_with_keep_top_k(
    make_job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, str, Any]] = []
    monkeypatch.setattr(
        schedy_checkpoints,
        "prune_checkpoints",
        lambda experiment, folder, keep_top_k: calls.append((experiment, folder, keep_top_k)),
    )
    job = make_job("j")
    job.experiment = "the experiment"
    run(job, tmp_path, callback_options={"steps_per_job": 1, "keep_top_k": 2})
    assert calls == [("the experiment", str(tmp_path / "ckpt"), 2)]


# -- import hygiene ------------------------------------------------------------------
def test_importing_schedy_imports_neither_transformers_nor_torch() -> None:
    code = (
        "import sys, schedy, schedy.integrations, schedy.integrations._core\n"
        "print(sorted({'torch', 'transformers', 'accelerate'} & set(sys.modules)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


# -- end to end --------------------------------------------------------------------------
_WORKER = """
import sys
import transformers
sys.path.insert(0, {tests!r})
import test_transformers as t
from pathlib import Path
from schedy.integrations import transformers as schedy_hf

transformers.logging.set_verbosity_error()

def train(job):
    hp = job.hyperparameters
    t.run(job, Path({folder!r}), learning_rate=hp["learning_rate"],
          callback_options={{"steps_per_job": 2}})

if __name__ == "__main__":
    import schedy
    raise SystemExit(schedy.run_workers(train, "hf", workers=2, db=sys.argv[1], gpus=[]))
"""


@pytest.mark.slow
def test_population_based_training_with_two_worker_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with schedy.SchedyDB(url) as db:
        db.add_experiment(
            schedy.PopulationBasedTraining(
                "hf",
                schedy.pbt.MAXIMIZE,
                "eval_accuracy",
                exploit=schedy.pbt.Truncate(0.5),
                explore={"learning_rate": schedy.pbt.Perturb(0.5, 0.6)},
                population_size=2,
                max_generations=3,
                # Synchronous generations: the bottom member is always compared with a
                # finished peer, so an exploit happens and every member trains each
                # generation once (asynchronous PBT's count depends on timing).
                synchronous=True,
                seed=0,
            )
        )
        experiment = db.get_experiment("hf")
        for lr in (1e-6, 3e-3):  # a member that barely learns, and one that does
            experiment.add_job({"learning_rate": lr})
        script = tmp_path / "worker.py"
        script.write_text(_WORKER.format(tests=str(Path(__file__).parent), folder=str(tmp_path)))
        done = subprocess.run(
            [sys.executable, str(script), url],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        jobs = list(experiment.all_jobs())
        assert len(jobs) == 6, [(j.member, j.generation, j.exploited_from) for j in jobs]
        assert all(job.status == schedy.Job.DONE for job in jobs), [j.error for j in jobs]
        exploits = 0
        for job in jobs:
            assert job.results["model_path"].endswith(f"{job.id}.tar")
            if job.parent_id is None:
                assert job.results["step"] == 2
                continue
            parent = experiment.get_job(job.parent_id)
            assert job.results["step"] == parent.results["step"] + 2
            assert job.results["history"]["step"] == [
                *parent.results["history"]["step"],
                job.results["step"],
            ]
            if job.exploited_from is not None:
                exploits += 1
                ratio = (
                    job.hyperparameters["learning_rate"] / parent.hyperparameters["learning_rate"]
                )
                assert 0.5 <= ratio <= 0.6
        assert exploits
        # Pruned as it went: members' heads kept, at most population + in flight + top-k left.
        left = {name.split(".", 1)[0] for name in os.listdir(tmp_path / "ckpt")}
        heads = {member.head_id for member in experiment.population()}
        assert heads <= left
        assert len(left) <= 2 + 2 + 1
