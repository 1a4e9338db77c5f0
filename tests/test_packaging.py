"""Packaging: what users install beside their own torch, and one version."""

from __future__ import annotations

import pathlib

import pytest

import schedy

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
ROOT = pathlib.Path(__file__).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_the_license_is_an_spdx_expression_with_its_file() -> None:
    assert PROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert any(c.startswith("Programming Language :: Python :: 3") for c in PROJECT["classifiers"])
    assert PROJECT["urls"]


def test_extras_never_pin_torch() -> None:
    # A pin would fight every user's CUDA build; the tested pin is the repo's.
    for extra, requirements in PROJECT["optional-dependencies"].items():
        for requirement in requirements:
            assert not requirement.replace(" ", "").startswith("torch=="), (extra, requirement)
    assert not any(r.startswith("torch") for r in PROJECT["optional-dependencies"]["keras"])
    constraints = (ROOT / "scripts" / "constraints.txt").read_text(encoding="utf-8")
    assert "torch==2.13.0" in constraints


def test_one_source_for_the_version() -> None:
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    from importlib.metadata import version

    assert version("schedy") == schedy.__version__
