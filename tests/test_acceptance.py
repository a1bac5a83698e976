"""Published parameter and multiply-add counts, reproduced exactly by the cost model."""

from __future__ import annotations

import csv

import pytest

import mnasdsl
from mnasdsl import cost, load

from .conftest import SPECS

# (spec, params) — equal to timm's / torchvision's models of the same architecture.
PUBLISHED_PARAMS = [
    ("mnasnet-a1", None, 3_887_038),
    ("mnasnet-b1", None, 4_383_312),
    ("mnasnet-small", None, 2_030_264),
    ("mobilenet-v2", None, 3_504_872),
    ("mnasnet-a1", 0.75, 2_912_278),
    ("mnasnet-a1", 1.4, 6_105_992),
]


@pytest.mark.parametrize("spec,width,params", PUBLISHED_PARAMS)
def test_published_params(spec: str, width: float | None, params: int) -> None:
    net = load(SPECS / f"{spec}.mnas")
    assert cost(net, width=width).params == params


def test_mnasnet_a1_macs_match_paper() -> None:
    macs = cost(load(SPECS / "mnasnet-a1.mnas")).macs
    assert abs(macs - 312.18e6) / 312.18e6 < 0.005


def test_mobilenet_v2_macs() -> None:
    assert round(cost(load(SPECS / "mobilenet-v2.mnas")).macs / 1e6, 2) == 300.77


def test_mobilenet_v2_table_macs(shared_data) -> None:  # type: ignore[no-untyped-def]
    net = load(SPECS / "mobilenet-v2.mnas")
    rows = list(csv.DictReader(open(shared_data / "pixel1_mobilenet_v2.csv")))
    assert len(rows) >= 20
    for row in rows:
        macs = cost(net, width=float(row["width"]), resolution=int(row["resolution"])).macs / 1e6
        ref = float(row["macs_m"])
        assert abs(macs - ref) <= max(0.03 * ref, 1.0), (row, macs)


def test_every_reference_spec_loads_and_lowers() -> None:
    for path in sorted(SPECS.glob("*.mnas")):
        net = load(path)
        low = mnasdsl.lower(net)
        assert low.layers[0].kind == "stem" and low.layers[-1].kind == "classifier"
        assert low.layers[-1].out_shape == (1, 1, net.classes)


def test_mnasnet_small_first_block_is_identity_ds() -> None:
    low = mnasdsl.lower(load(SPECS / "mnasnet-small.mnas"))
    first = low.layers[1]
    assert first.op == "ds" and first.in_shape[2] == 8 and first.skip == "identity"


def test_d1_320_resolution() -> None:
    net = load(SPECS / "mnasnet-d1-320.mnas")
    assert net.input == (320, 320, 3)
    assert mnasdsl.lower(net).layers[-2].out_shape == (10, 10, 1280)
