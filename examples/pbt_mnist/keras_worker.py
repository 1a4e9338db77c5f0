"""A Keras 3 PBT worker (torch backend): the whole job loop is one callback.

    python examples/pbt_mnist/keras_worker.py --dataset digits

``SchedyCallback`` restores the weights and optimizer state the job's
results name, re-applies the job's possibly perturbed learning rate, stops
``model.fit`` after ``--epochs-per-job`` epochs, saves ``<job id>.weights.h5``,
reports the logged metrics and prunes old checkpoints.
"""

from __future__ import annotations

import os
import tempfile

# Keras 3 picks its backend at import: torch here, never TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(), "schedy-keras"))

import _common
import keras
import torch

from schedy.integrations.keras import SchedyCallback

args = _common.worker_arguments(__doc__ or "")
torch.set_num_threads(args.threads)


def make_model(num_features: int, num_classes: int, hyperparameters: dict) -> keras.Model:  # type: ignore[type-arg]
    layers: list[keras.layers.Layer] = [keras.Input(shape=(num_features,))]
    for _ in range(int(hyperparameters["num_layers"])):
        layers.append(keras.layers.Dense(64, activation=hyperparameters["activations"]))
        layers.append(keras.layers.Dropout(float(hyperparameters["dropout_rate"])))
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(float(hyperparameters["learning_rate"])),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train_job(job, data) -> None:  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(hash(job.id) % 2**31)
    model = make_model(data.num_features, data.num_classes, job.hyperparameters)
    callback = SchedyCallback(
        job,
        monitor="val_accuracy",
        epochs_per_job=args.epochs_per_job,
        checkpoint_dir=args.checkpoint_dir,
        keep_top_k=args.keep_top,
    )
    model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        batch_size=args.batch_size,
        epochs=1000,  # the callback stops after --epochs-per-job
        callbacks=[callback],
        verbose=0,
    )
    _common.record_max_accuracy(job, job.results["val_accuracy"])


if __name__ == "__main__":
    _common.job_loop(args, train_job)
