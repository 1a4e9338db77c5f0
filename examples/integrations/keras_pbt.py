"""PBT with Keras 3 ``model.fit`` on synthetic data, run by ``schedy worker``.

    python examples/integrations/keras_pbt.py --create          # the experiment
    schedy worker "keras PBT" --workers 2 -- python examples/integrations/keras_pbt.py

Explored: ``learning_rate`` and ``beta_1``; the callback re-applies both after
restoring a checkpoint (``beta_1`` because it is an attribute of the Adam
optimizer). Each job is logged to TensorBoard (``tensorboard --logdir tb``).
Keras runs on torch here unless ``KERAS_BACKEND`` says otherwise.
"""

from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

import schedy
from schedy.errors import ResourceExistsError
from schedy.integrations.keras import SchedyCallback
from schedy.integrations.trackers import TensorBoard

NAME = "keras PBT"


def create(db: schedy.SchedyDB) -> None:
    experiment = schedy.PopulationBasedTraining(
        NAME,
        schedy.pbt.MAXIMIZE,
        "val_accuracy",
        exploit=schedy.pbt.Truncate(),
        explore={"learning_rate": schedy.pbt.Perturb(), "beta_1": schedy.pbt.Perturb(0.9, 1.1)},
        initial_distributions={
            "learning_rate": schedy.random.LogUniform(1e-3, 1e-1),
            "beta_1": schedy.random.Uniform(0.8, 0.95),
        },
        population_size=4,
        max_generations=3,
        # Members compared at equal generations: with 4 members and 2 workers an
        # asynchronous run may end before a bottom member meets a finished peer.
        synchronous=True,
    )
    with contextlib.suppress(ResourceExistsError):  # made by another worker already
        db.add_experiment(experiment)


def make_model(learning_rate: float, beta_1: float) -> keras.Model:
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, beta_1=min(beta_1, 0.999)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main() -> None:
    db = schedy.SchedyDB()  # $SCHEDY_URL (schedy worker sets it), else ./schedy.db
    if "--create" in sys.argv:
        create(db)
        return
    experiment = db.get_experiment(NAME)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(640, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    with TensorBoard("tb") as tensorboard:
        for job in experiment.jobs():  # until the experiment is DONE
            with job:
                model = make_model(**job.hyperparameters)
                model.fit(
                    x[:512],
                    y[:512],
                    batch_size=64,
                    epochs=1000,  # schedy stops each job after epochs_per_job
                    validation_data=(x[512:], y[512:]),
                    verbose=0,
                    callbacks=[SchedyCallback(job, monitor="val_accuracy", trackers=tensorboard)],
                )


if __name__ == "__main__":
    main()
