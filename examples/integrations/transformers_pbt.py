"""PBT with a HuggingFace ``Trainer``: a tiny BERT built from a config, synthetic data.

    python examples/integrations/transformers_pbt.py --create   # the experiment
    schedy worker "transformers PBT" --workers 2 -- python examples/integrations/transformers_pbt.py

Explored: ``learning_rate`` and ``weight_decay``, given to ``TrainingArguments``;
after Trainer restores the job's checkpoint the callback writes both back over
the restored optimizer and schedule. No download: the model comes from a
``BertConfig``; the task (is the first token in the upper half of the
vocabulary?) is made up. Each job is logged to TensorBoard (``tb``).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch
import transformers

import schedy
from schedy.errors import ResourceExistsError
from schedy.integrations import transformers as schedy_hf
from schedy.integrations.trackers import TensorBoard

NAME = "transformers PBT"
VOCAB, LENGTH = 32, 12


def create(db: schedy.SchedyDB) -> None:
    experiment = schedy.PopulationBasedTraining(
        NAME,
        schedy.pbt.MAXIMIZE,
        "eval_accuracy",
        exploit=schedy.pbt.Truncate(),
        explore={"learning_rate": schedy.pbt.Perturb(), "weight_decay": schedy.pbt.Perturb()},
        initial_distributions={
            "learning_rate": schedy.random.LogUniform(1e-4, 1e-2),
            "weight_decay": schedy.random.LogUniform(1e-4, 1e-1),
        },
        population_size=4,
        max_generations=3,
        # Members compared at equal generations: with 4 members and 2 workers an
        # asynchronous run may end before a bottom member meets a finished peer.
        synchronous=True,
    )
    with contextlib.suppress(ResourceExistsError):  # made by another worker already
        db.add_experiment(experiment)


def model_init() -> Any:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def accuracy(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def main() -> None:
    db = schedy.SchedyDB()  # $SCHEDY_URL (schedy worker sets it), else ./schedy.db
    if "--create" in sys.argv:
        create(db)
        return
    experiment = db.get_experiment(NAME)
    transformers.logging.set_verbosity_error()
    ids = torch.randint(1, VOCAB, (384, LENGTH), generator=torch.Generator().manual_seed(0))
    labels = (ids[:, 0] >= VOCAB // 2).long()
    rows = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]
    with TensorBoard("tb") as tensorboard:
        for job in experiment.jobs():  # until the experiment is DONE
            with job:
                args = transformers.TrainingArguments(
                    output_dir="trainer_output",  # schedy's checkpoints go to ./checkpoints
                    learning_rate=job.hyperparameters["learning_rate"],
                    weight_decay=job.hyperparameters["weight_decay"],
                    num_train_epochs=100,  # the lineage's length: the LR schedule spans it
                    per_device_train_batch_size=32,
                    eval_strategy="epoch",
                    save_strategy="no",  # schedy saves one checkpoint per job
                    report_to=[],
                    disable_tqdm=True,
                    use_cpu=True,
                )
                trainer = transformers.Trainer(
                    model_init=model_init,
                    args=args,
                    train_dataset=rows[:320],
                    eval_dataset=rows[320:],
                    compute_metrics=accuracy,
                    callbacks=[
                        schedy_hf.SchedyCallback(job, monitor="eval_accuracy", trackers=tensorboard)
                    ],
                )
                schedy_hf.train(trainer, job)  # resumes the job's checkpoint


if __name__ == "__main__":
    main()
