"""PBT with a HuggingFace ``Trainer``: a tiny BERT, built from a config, on a synthetic task.

    python examples/pbt_transformers/train.py [--db sqlite:///hf.db] [--workers 2]

It creates the experiment (population 4, learning rate and weight decay
explored) and runs local workers; each job is ``Trainer.train`` resumed from
the job's checkpoint by ``schedy.integrations.transformers.train``, with the
job's perturbed ``TrainingArguments`` re-applied over the restored optimizer
and schedule. No download: the model comes from a ``BertConfig`` and the data
(is the first token in the upper half of the vocabulary?) is made up.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import schedy
from schedy.errors import NotFoundError

NAME = "transformers PBT"
VOCAB, LENGTH = 32, 12


def make_experiment(population: int, generations: int) -> schedy.PopulationBasedTraining:
    return schedy.PopulationBasedTraining(
        NAME,
        schedy.pbt.MAXIMIZE,
        "eval_accuracy",
        exploit=schedy.pbt.Truncate(),
        explore={"learning_rate": schedy.pbt.Perturb(), "weight_decay": schedy.pbt.Perturb()},
        initial_distributions={
            "learning_rate": schedy.random.LogUniform(1e-5, 1e-2),
            "weight_decay": schedy.random.LogUniform(1e-4, 1e-1),
        },
        population_size=population,
        max_generations=generations,
        seed=0,
    )


def train_job(job: schedy.Job) -> None:
    """One job: imports here, so the launcher process never loads torch."""
    import torch
    import transformers

    from schedy.integrations import transformers as schedy_hf

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    ids = torch.randint(1, VOCAB, (640, LENGTH), generator=torch.Generator().manual_seed(0))
    labels = (ids[:, 0] >= VOCAB // 2).long()
    rows = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]
    train_set, eval_set = rows[:512], rows[512:]

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
        return {
            "accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())
        }

    hp = job.hyperparameters
    args = transformers.TrainingArguments(
        output_dir="trainer_output",  # Trainer's own files; schedy's go to ./checkpoints
        learning_rate=hp["learning_rate"],
        weight_decay=hp["weight_decay"],
        warmup_steps=20,
        num_train_epochs=100,  # the lineage's length: the LR schedule spans it
        per_device_train_batch_size=32,
        eval_strategy="epoch",
        save_strategy="no",  # schedy saves one checkpoint per job
        logging_strategy="epoch",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model_init=model_init,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        compute_metrics=accuracy,
        callbacks=[schedy_hf.SchedyCallback(job, monitor="eval_accuracy", epochs_per_job=1)],
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    schedy_hf.train(trainer, job)
    print(f"job {job.id}: lr={hp['learning_rate']:.2e} accuracy={job.results['eval_accuracy']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite:///transformers_pbt.db")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    args = parser.parse_args()
    db = schedy.SchedyDB(args.db)
    with contextlib.suppress(NotFoundError):
        db.get_experiment(NAME).delete()
    db.add_experiment(make_experiment(args.population, args.generations))
    schedy.run_workers(train_job, NAME, workers=args.workers, db=args.db, gpus=[])
    best = db.get_experiment(NAME).best()
    if best is not None:
        print(f"best: job {best.id}, eval_accuracy {best.results['eval_accuracy']:.3f}")


if __name__ == "__main__":
    main()
