"""Profiling on a shared machine: bracketing reference normalization, calibration on held-out networks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnasdsl.latency import parse_lut
from mnasdsl.latency import profile as prof

from .test_latency import run

TINY_SPACE = ("space tiny:\n  input 32x32x3\n  classes 10\n  stem cv_k3_s22_o8\n  blocks\n"
              "    {ds,mb_e3}_r1_k{3,5}_s22_o16_se0_noskip\n    mb_e3_r1_k3_s11_o16_se{0,0.25}_id\n"
              "  head cv_k1_o32 fixed\n")


class _FakeReference(prof.Reference):
    """A reference whose readings follow a script (no XLA): 1, 2, 4, 8, ... ms."""

    def __init__(self) -> None:  # noqa: D107 - deliberately skips compiling the reference op
        self.baseline_ms, self.readings = 1.0, iter(2.0 ** np.arange(100))

    def now_ms(self) -> float:
        return float(next(self.readings))


def test_reference_brackets_each_item(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each item is divided by the geometric mean of the readings just before and just after it, and
    consecutive items share the reading between them."""
    monkeypatch.setattr(prof, "time_fn", lambda f, *a, **k: (f.ms, 0.0, 1))

    class Item:
        def __init__(self, ms: float) -> None:
            self.ms = ms

    items = [(Item(3.0), None, None), (Item(5.0), None, None)]
    got = prof.time_rounds(items, rounds=1, reference=_FakeReference())  # type: ignore[arg-type]
    # readings 1 | item0 | 2 | item1 | 4
    assert got[0].mean == pytest.approx(3.0 / np.sqrt(1 * 2))
    assert got[1].mean == pytest.approx(5.0 / np.sqrt(2 * 4))


def test_each_item_uses_its_own_kind_of_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ops are normalized by the reference op and networks by the reference network, each bracketed
    by its own readings (a network under cache pressure slows unlike a small op)."""
    monkeypatch.setattr(prof, "time_fn", lambda f, *a, **k: (f.ms, 0.0, 1))

    class Item:
        def __init__(self, ms: float) -> None:
            self.ms = ms

    op_ref, net_ref = _FakeReference(), _FakeReference()
    net_ref.baseline_ms, net_ref.readings = 10.0, iter([20.0, 20.0, 40.0, 40.0])
    items = [(Item(3.0), None, None), (Item(30.0), None, None), (Item(5.0), None, None), (Item(60.0), None, None)]
    got = prof.time_rounds(items, rounds=1, reference=[op_ref, net_ref, op_ref, None])  # type: ignore[list-item]
    # op readings 1 | op0 | 2 | op2 | 4;  network readings 20 | net1 | 20;  the last item is raw
    assert got[0].mean == pytest.approx(3.0 / np.sqrt(1 * 2))
    assert got[1].mean == pytest.approx(30.0 * 10.0 / 20.0)
    assert got[2].mean == pytest.approx(5.0 / np.sqrt(2 * 4))
    assert got[3].mean == pytest.approx(60.0)


def test_profile_calibrates_on_held_out_networks(capsys: Any, tmp_path: Path) -> None:
    pytest.importorskip("flax")
    space = tmp_path / "tiny.mnas"
    space.write_text(TINY_SPACE)
    out = tmp_path / "t.json"
    code, _, err = run(capsys, "profile", str(space), "--sample", "2", "--seed", "0", "--calibrate", "4",
                       "-o", str(out), "--repeats", "2", "--rounds", "1")
    assert code == 0, err
    lut = parse_lut(out.read_text())
    cal = lut.provenance["calibration"]
    assert cal["seed"] == 1 and cal["networks"] == 4 and len(cal["measured_ms"]) == 4
    assert lut.model is not None and lut.model.fit["networks"] == 4
    assert lut.model.fit["calibration_terms"] == ["scale"] and lut.model.calibration.scale > 0
    code, res, err = run(capsys, "lut", "check", "--lut", str(out), "--measure", str(space), "--sample", "2",
                         "--seed", "0", "--repeats", "2", "--rounds", "1", "--json")
    assert code == 0, err
    d = json.loads(res)
    assert all(n["coverage"] == 1.0 for n in d["networks"])
    code, _, err = run(capsys, "profile", str(space), "--sample", "2", "--seed", "3", "--calibrate", "2",
                       "--calibration-seed", "3", "-o", str(tmp_path / "u.json"))
    assert code == 2 and "--calibration-seed" in err
    net = tmp_path / "net.mnas"
    net.write_text("network n:\n  input 32x32x3\n  classes 10\n  stem cv_k3_s22_o8\n  blocks\n"
                   "    r1_k3_s22_e3_o16\n  head cv_k1_o32 fixed\n")
    code, _, err = run(capsys, "profile", str(net), "--calibrate", "2", "-o", str(tmp_path / "v.json"))
    assert code == 2 and "search space" in err


def test_profiled_weights_are_device_resident() -> None:
    """Numpy weights would be copied into every call unless aligned for zero-copy: a random,
    per-process cost that made the same op 2.5x slower in one process than in another."""
    pytest.importorskip("flax")
    import jax

    _, state, x = prof.prepare_layer(prof.REFERENCE_LAYER._replace(in_shape=(8, 8, 8), out_shape=(8, 8, 8), mid=24))
    leaves = jax.tree.leaves(state) + [x]
    assert leaves and all(isinstance(a, jax.Array) for a in leaves)
