"""The network the workers train: an MLP shaped by the seed's hyperparameters.

``num_layers`` hidden layers of ``HIDDEN`` units with ``activations`` and
``dropout_rate`` — an MLP rather than the original's convolutions, so the
example also trains in seconds on a CPU (and on the 8x8 digits set).
"""

from __future__ import annotations

from typing import Any

HIDDEN = 64


def torch_mlp(num_features: int, num_classes: int, hyperparameters: dict[str, Any]) -> Any:
    import torch

    activation = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[hyperparameters["activations"]]
    layers: list[torch.nn.Module] = []
    width = num_features
    for _ in range(int(hyperparameters["num_layers"])):
        layers += [
            torch.nn.Linear(width, HIDDEN),
            activation(),
            torch.nn.Dropout(float(hyperparameters["dropout_rate"])),
        ]
        width = HIDDEN
    layers.append(torch.nn.Linear(width, num_classes))
    return torch.nn.Sequential(*layers)
