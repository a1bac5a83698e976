"""Optional parts are extras: with one missing, the feature that needs it says which extra to
install (and training, which only loses its TensorBoard events, goes on)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import mnasdsl
from mnasdsl.diagnostics import MnasError

from .test_train import TINY


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError


def test_digits_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from mnasdsl.train.data import digits

    _hide(monkeypatch, "sklearn", "sklearn.datasets")
    with pytest.raises(MnasError, match=r"mnasdsl\[digits\]"):
        digits()


def test_ray_executor_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from mnasdsl.search.evaluators import EvalConfig
    from mnasdsl.search.executors import RayExecutor

    _hide(monkeypatch, "ray")
    with pytest.raises(MnasError, match=r"mnasdsl\[ray\]"):
        RayExecutor(EvalConfig(), 1, None)


def test_training_without_tensorboard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mnasdsl.train import fit

    _hide(monkeypatch, "tensorboardX")
    said: list[str] = []
    out = tmp_path / "run"
    fit(mnasdsl.parse(TINY)[0], "digits", epochs=1, batch=32, out=out, log=said.append)
    assert (out / "metrics.csv").is_file() and not (out / "tb").exists()
    assert any("mnasdsl[tensorboard]" in m for m in said)


def test_core_install_does_not_require_the_extras() -> None:
    """The package's own dependencies name none of the extras' packages."""
    from importlib.metadata import requires

    reqs: Any = requires("mnasdsl") or []
    core = [r for r in reqs if "extra ==" not in r]
    for heavy in ("ray", "tensorboardX", "scikit-learn", "litert-converter", "onnxruntime"):
        assert not any(r.split(">")[0].split("<")[0].split("=")[0].strip() == heavy for r in core), heavy
