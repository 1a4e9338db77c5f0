"""JSON values: what hyperparameters and results may hold (no store needed)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from schedy import _values


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ({"a": (1, 2.5, None, True)}, {"a": [1, 2.5, None, True]}),
        ({"n": math.nan, "i": -math.inf}, {"n": math.nan, "i": -math.inf}),
        ({"big": 2**1000}, {"big": 2**1000}),
    ],
)
def test_json_values_are_stored(value: dict[str, Any], stored: dict[str, Any]) -> None:
    text = _values.dumps(_values.normalize_mapping(value, "results"))
    assert _values.canonical(_values.loads(text)) == _values.canonical(stored)


def _self_referencing() -> dict[str, Any]:
    loop: dict[str, Any] = {"x": 1}
    loop["self"] = loop
    return loop


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "where", "reason"),
    [
        ({"k": object()}, r"results\['k'\]", "cannot be stored"),
        ({"k": {"inner": [1, {2}]}}, r"results\['k'\]\['inner'\]\[1\]", "cannot be stored"),
        ({"k": {1: 2}}, r"results\['k'\]", "non-string key"),
        ({"k": 10**400}, r"results\['k'\]", "too large"),
        ({"k": 10**5000}, r"results\['k'\]", "too large"),
        ({"k": _self_referencing()}, r"results\['k'\](\['self'\])+", "contain itself"),
        ({"k": _deep(5000)}, r"results\['k'\](\[0\])+", "deeper than"),
        ({"k": 1j}, r"results\['k'\]", "cannot be stored"),
    ],
    ids=["object", "nested-set", "int-key", "1e400", "1e5000", "cycle", "deep", "complex"],
)
def test_an_unstorable_value_is_a_type_error_naming_its_key(
    value: dict[str, Any], where: str, reason: str
) -> None:
    with pytest.raises(TypeError, match=where + r" .*" + reason):
        _values.normalize_mapping(value, "results")


def test_the_storable_part_leaves_out_only_what_cannot_be_stored() -> None:
    kept, left_out = _values.storable_part(
        {"loss": 0.5, "bad": {1, 2}, "nested": {"ok": [1, object()], "big": 10**400}}, "results"
    )
    assert kept == {"loss": 0.5, "nested": {"ok": [1, None]}}
    assert len(left_out) == 3
    assert any(message.startswith("results['bad'] ") for message in left_out)
    assert any(message.startswith("results['nested']['ok'][1] ") for message in left_out)


def test_numpy_values() -> None:
    np = pytest.importorskip("numpy")
    value = {
        "f": np.float32(0.5),
        "i": np.int64(3),
        "zero_d": np.array(2.0),
        "matrix": np.arange(6).reshape(2, 3),
        "bools": np.array([True, False]),
    }
    assert _values.normalize_mapping(value, "results") == {
        "f": 0.5,
        "i": 3,
        "zero_d": 2.0,
        "matrix": [[0, 1, 2], [3, 4, 5]],
        "bools": [True, False],
    }
    with pytest.raises(TypeError, match=r"results\['c'\]\[0\]"):
        _values.normalize_mapping({"c": np.array([1 + 2j])}, "results")


def test_torch_tensors_of_any_shape() -> None:
    torch = pytest.importorskip("torch")
    value = {
        "scalar": torch.tensor(0.25),
        "vector": torch.tensor([1, 2]),
        "grad": torch.ones(2, requires_grad=True) * 2,
        "cube": torch.arange(8).reshape(2, 2, 2),
        "half": torch.tensor([[0.5, 1.5]], dtype=torch.bfloat16),
        "empty": torch.zeros(2, 0, 3),
        "grad_matrix": torch.ones(2, 2, requires_grad=True) * 3,
    }
    assert _values.normalize_mapping(value, "results") == {
        "scalar": 0.25,
        "vector": [1, 2],
        "grad": [2.0, 2.0],
        "cube": [[[0, 1], [2, 3]], [[4, 5], [6, 7]]],
        "half": [[0.5, 1.5]],
        "empty": [[], []],
        "grad_matrix": [[3.0, 3.0], [3.0, 3.0]],
    }
    with pytest.raises(TypeError, match=r"results\['complex'\]"):
        _values.normalize_mapping({"complex": torch.ones(2, dtype=torch.complex64)}, "results")
