"""Plain-torch helpers: save/restore/apply round trips with a tiny model, SGD/Adam and StepLR."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from schedy.integrations.torch import (  # noqa: E402  (after the importorskip)
    apply_hyperparameters,
    report,
    restore,
    save,
)

Job = Callable[..., Any]


def make_model(seed: int) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def make_training(
    lr: float, seed: int = 0, *, adam: bool = False, step_size: int = 1
) -> tuple[Any, Any, Any]:
    model = make_model(seed)
    if adam:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.5)
    return model, optimizer, scheduler


def train_epochs(model: Any, optimizer: Any, scheduler: Any, epochs: int) -> None:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(32, 4, generator=generator)
    targets = (inputs[:, 0] > 0).long()
    for _ in range(epochs):
        for batch in range(0, 32, 8):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                model(inputs[batch : batch + 8]), targets[batch : batch + 8]
            )
            loss.backward()
            optimizer.step()
        scheduler.step()


def assert_same_tensors(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def lr_of(optimizer: Any) -> float:
    return float(optimizer.param_groups[0]["lr"])


def test_save_writes_job_named_file_and_records_it(make_job: Job, tmp_path: Path) -> None:
    job = make_job("j1", {"lr": 0.1})
    model, optimizer, scheduler = make_training(0.1)
    path = save(job, model, optimizer, scheduler, checkpoint_dir=tmp_path, epoch=2, step=8)
    assert path == str(tmp_path / "j1.pt")
    assert job.results["model_path"] == path
    assert os.listdir(tmp_path) == ["j1.pt"]  # no temporary file left behind
    checkpoint = torch.load(path, weights_only=True)  # loadable without running pickled code
    assert checkpoint["counters"] == {"epoch": 2, "step": 8}
    assert checkpoint["schedy"] == {"job_id": "j1", "hyperparameters": {"lr": 0.1}}


def test_save_defaults_to_the_environment_folder(
    make_job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDY_CHECKPOINT_DIR", str(tmp_path / "shared"))
    path = save(make_job("j2"), make_model(0))
    assert path == str(tmp_path / "shared" / "j2.pt")
    assert os.path.exists(path)


def test_save_refuses_counters_that_are_not_json(make_job: Job, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="counters\\['when'\\]"):
        save(make_job("j3"), make_model(0), checkpoint_dir=tmp_path, when=object())


def test_restore_without_checkpoint_touches_nothing(make_job: Job) -> None:
    model, optimizer, scheduler = make_training(0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert restore(make_job("fresh", {"lr": 0.5}), model, optimizer, scheduler) == {}
    assert_same_tensors(model.state_dict(), before)
    assert lr_of(optimizer) == 0.1  # the optimizer was built from the job: left alone


def test_continuation_equals_uninterrupted_training(make_job: Job, tmp_path: Path) -> None:
    # Halving every 2 epochs, split after 3: the scheduler's counter must come back too.
    reference = make_training(0.1, step_size=2)
    train_epochs(*reference, epochs=6)

    parent = make_job("parent", {"lr": 0.1})
    first = make_training(0.1, step_size=2)
    train_epochs(*first, epochs=3)
    save(parent, *first, checkpoint_dir=tmp_path, epoch=3)

    child = make_job("child", {"lr": 0.1}, results=parent.results)
    second = make_training(0.1, seed=99, step_size=2)  # other weights: all must come from the file
    counters = restore(child, *second)
    assert counters == {"epoch": 3}
    assert lr_of(second[1]) == pytest.approx(0.05)  # the decayed rate, not reset to 0.1
    train_epochs(*second, epochs=3)

    assert_same_tensors(second[0].state_dict(), reference[0].state_dict())
    assert lr_of(second[1]) == lr_of(reference[1]) == pytest.approx(0.0125)
    assert second[2].last_epoch == reference[2].last_epoch == 6


def test_restore_applies_a_perturbed_rate_on_top_of_the_schedule(
    make_job: Job, tmp_path: Path
) -> None:
    parent = make_job("parent", {"learning_rate": 0.1})
    model, optimizer, scheduler = make_training(0.1)
    train_epochs(model, optimizer, scheduler, epochs=2)  # lr decayed to 0.025
    save(parent, model, optimizer, scheduler, checkpoint_dir=tmp_path)

    child = make_job("child", {"learning_rate": 0.2}, results=parent.results)  # perturbed x2
    model, optimizer, scheduler = make_training(0.2, seed=5)
    restore(child, model, optimizer, scheduler)
    assert lr_of(optimizer) == pytest.approx(0.05)  # same point of the schedule, twice the base
    assert scheduler.base_lrs == [pytest.approx(0.2)]
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.2)
    scheduler.step()  # the scheduler goes on from the new base instead of snapping back
    assert lr_of(optimizer) == pytest.approx(0.025)
    assert optimizer.state_dict()["state"]  # momentum buffers came back with the state


SCHEDULERS: dict[str, Callable[[Any], Any]] = {
    "StepLR": lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 2, gamma=0.5),
    "ExponentialLR": lambda optimizer: torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.7),
    "LambdaLR": lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 1 / (1 + e)
    ),
    "CosineAnnealingLR": lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 8),
    "LinearLR": lambda optimizer: torch.optim.lr_scheduler.LinearLR(optimizer, 0.2, total_iters=6),
    "OneCycleLR": lambda optimizer: torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.1, total_steps=10
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_perturbed_rate_scales_the_rest_of_any_schedule(
    make_job: Job, tmp_path: Path, name: str
) -> None:
    """After a restore with the rate x1.5, every later step's rate is x1.5 too."""

    def run(learning_rate: float) -> list[float]:
        model = make_model(0)
        optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
        scheduler = SCHEDULERS[name](optimizer)
        child = make_job("child", {"lr": learning_rate}, results=parent.results)
        restore(child, model, optimizer, scheduler)
        rates = []
        for _ in range(5):
            rates.append(lr_of(optimizer))
            optimizer.step()
            scheduler.step()
        return rates

    parent = make_job("parent", {"lr": 0.1})
    model = make_model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = SCHEDULERS[name](optimizer)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    save(parent, model, optimizer, scheduler, checkpoint_dir=tmp_path)

    unchanged, perturbed = run(0.1), run(0.15)
    assert unchanged[0] == pytest.approx(scheduler.get_last_lr()[0])  # resumed, not reset
    assert perturbed == pytest.approx([1.5 * rate for rate in unchanged])


@pytest.mark.parametrize(("learning_rate", "expected"), [(0.1, 0.01), (0.2, 0.02)])
def test_a_plateau_reduction_survives_the_restore(
    make_job: Job, tmp_path: Path, learning_rate: float, expected: float
) -> None:
    """ReduceLROnPlateau records no base: the previous job's value is the reference."""
    parent = make_job("parent", {"lr": 0.1})
    model = make_model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=0)
    for _ in range(2):
        plateau.step(1.0)  # no improvement: 0.1 -> 0.01
    assert lr_of(optimizer) == pytest.approx(0.01)
    save(parent, model, optimizer, plateau, checkpoint_dir=tmp_path)

    child = make_job("child", {"lr": learning_rate}, results=parent.results)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=0)
    restore(child, model, optimizer, plateau)
    assert lr_of(optimizer) == pytest.approx(expected)  # kept, or scaled by the perturbation


def test_restore_applies_other_hyperparameters_through_a_mapping(
    make_job: Job, tmp_path: Path
) -> None:
    parent = make_job("parent", {"lr": 0.01, "wd": 0.0})
    model, optimizer, scheduler = make_training(0.01, adam=True, step_size=100)
    train_epochs(model, optimizer, scheduler, epochs=1)
    save(parent, model, optimizer, scheduler, checkpoint_dir=tmp_path, epoch=1)

    child = make_job("child", {"lr": 0.02, "wd": 1e-3}, results=parent.results)
    model, optimizer, scheduler = make_training(0.02, seed=3, adam=True, step_size=100)
    restore(child, model, optimizer, scheduler, mapping={"wd": "weight_decay"})
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.02)
    assert group["weight_decay"] == 1e-3
    assert scheduler.base_lrs == [pytest.approx(0.02)]
    assert optimizer.state_dict()["state"][0]["step"] > 0  # Adam's moments restored

    with pytest.raises(ValueError, match="'momentum'"):
        restore(child, model, optimizer, scheduler, mapping={"momentum": "momentum"})


def test_apply_hyperparameters_sets_every_group(make_job: Job) -> None:
    model = make_model(0)
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters()}],
        lr=0.1,
        momentum=0.9,
    )
    job = make_job("j", {"learning_rate": 0.3, "momentum": 0.5})
    values = apply_hyperparameters(job, optimizer, {"momentum": "momentum"})
    assert values == {"lr": 0.3, "momentum": 0.5}
    assert [group["lr"] for group in optimizer.param_groups] == [0.3, 0.3]
    assert [group["momentum"] for group in optimizer.param_groups] == [0.5, 0.5]


def test_apply_hyperparameters_keeps_the_schedule_progress(make_job: Job) -> None:
    model, optimizer, scheduler = make_training(0.1)
    train_epochs(model, optimizer, scheduler, epochs=1)  # lr 0.05
    apply_hyperparameters(make_job("j", {"lr": 0.4}), optimizer, scheduler=scheduler)
    assert lr_of(optimizer) == pytest.approx(0.2)
    assert scheduler.base_lrs == [pytest.approx(0.4)]


def test_restore_needs_the_state_it_is_asked_for(make_job: Job, tmp_path: Path) -> None:
    parent = make_job("parent", {"lr": 0.1})
    save(parent, make_model(0), checkpoint_dir=tmp_path)  # model only
    model, optimizer, _ = make_training(0.1)
    child = make_job("child", {"lr": 0.1}, results=parent.results)
    assert restore(child, model) == {}
    with pytest.raises(ValueError, match="no optimizer state"):
        restore(child, model, optimizer)


def test_restore_names_the_missing_checkpoint(make_job: Job, tmp_path: Path) -> None:
    job = make_job("orphan", {"lr": 0.1}, results={"model_path": str(tmp_path / "gone.pt")})
    with pytest.raises(FileNotFoundError, match=r"job orphan continues from checkpoint .*gone\.pt"):
        restore(job, make_model(0))


def test_restore_refuses_a_foreign_file(make_job: Job, tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a checkpoint written by"):
        restore(make_job("j", results={"model_path": str(path)}), make_model(0))


def test_round_trip_through_an_fsspec_url(make_job: Job) -> None:
    pytest.importorskip("fsspec")
    parent = make_job("remote", {"lr": 0.1})
    model, optimizer, scheduler = make_training(0.1)
    path = save(parent, model, optimizer, scheduler, checkpoint_dir="memory://schedy/ckpt", epoch=1)
    assert path == "memory://schedy/ckpt/remote.pt"
    copy = make_training(0.1, seed=7)
    assert restore(make_job("next", {"lr": 0.1}, results=parent.results), *copy) == {"epoch": 1}
    assert_same_tensors(copy[0].state_dict(), model.state_dict())


def test_report_records_floats_history_and_pushes(make_job: Job) -> None:
    job = make_job("j", results={"history": {"val_acc": [0.1], "epoch": [1]}, "epoch": 1})
    values = report(job, {"val_acc": torch.tensor(0.5), "loss": 0.25}, epoch=2, step=40)
    assert values == {"val_acc": 0.5, "loss": 0.25}
    assert type(job.results["val_acc"]) is float
    assert job.results["history"] == {
        "val_acc": [0.1, 0.5],
        "epoch": [1, 2],
        "loss": [None, 0.25],
        "step": [None, 40],
    }
    assert len(job.pushed) == 1
    report(job, {"val_acc": 0.6}, epoch=3, push=False)
    assert len(job.pushed) == 1


def test_report_refuses_values_that_are_not_one_number(make_job: Job) -> None:
    with pytest.raises(TypeError, match="'confusion'"):
        report(make_job("j"), {"confusion": torch.zeros(2, 2)}, epoch=1)


def test_restore_reapplies_a_setting_named_like_the_optimizers_own(
    make_job: Job, tmp_path: Path
) -> None:
    parent = make_job("parent", {"lr": 0.01, "weight_decay": 0.0})
    model, optimizer, scheduler = make_training(0.01, adam=True, step_size=100)
    train_epochs(model, optimizer, scheduler, epochs=1)
    save(parent, model, optimizer, scheduler, checkpoint_dir=tmp_path, epoch=1)
    child = make_job("child", {"lr": 0.01, "weight_decay": 4e-3}, results=parent.results)
    model, optimizer, scheduler = make_training(0.01, seed=3, adam=True, step_size=100)
    restore(child, model, optimizer, scheduler)  # no mapping needed
    assert optimizer.param_groups[0]["weight_decay"] == 4e-3
