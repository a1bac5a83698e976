"""ONNX export of the folded graph: parity with the Flax eval forward (BN statistics randomized so
folding is exercised), a node count with nothing beyond the network, names after the lowered
layers, dynamic batch, metadata, and clean MnasErrors for files that are not our models."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flax import nnx

import mnasdsl
from mnasdsl.backends import flax as fb

onnx = pytest.importorskip("onnx", reason="ONNX export tests need the onnx package (pip install onnx)")
pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install onnxruntime)")

from mnasdsl.backends.folded import FoldedNetwork, fold  # noqa: E402
from mnasdsl.backends.onnx_export import expected_nodes, load_onnx, to_onnx  # noqa: E402

from .export_nets import (  # noqa: E402
    POOL,
    SPECS,
    TOL,
    built,
    every,
    flax_eval,
    images,
    spec,
)


def export_run(model: fb.MnasNet, x: np.ndarray, tmp_path: Path, **kw: Any) -> tuple[np.ndarray, bytes]:
    """Export, write, load through load_onnx and run: the whole user path."""
    data = to_onnx(fold(model), **kw)
    path = tmp_path / f"{model.lowered.name}.onnx"
    path.write_bytes(data)
    return load_onnx(path).run(x), data


def census(data: bytes) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in onnx.load_model_from_string(data).graph.node)


ALLOWED = {"Transpose", "Conv", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Mul", "Add",
           "AveragePool", "GlobalAveragePool", "Flatten", "Gemm"}


def check_graph(data: bytes, folded: FoldedNetwork, opset: int = 17) -> None:
    """Exactly the expected nodes, only the allowed ops, every name under a lowered layer."""
    model = onnx.load_model_from_string(data)
    ops = census(data)
    assert sum(ops.values()) == len(model.graph.node) == expected_nodes(folded, opset=opset)
    assert set(ops) <= ALLOWED, set(ops) - ALLOWED
    assert not {"BatchNormalization", "Reshape", "Concat"} & set(ops)
    assert ops["Transpose"] == 1 and ops["Gemm"] == 1 and ops["Flatten"] == 1
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    prefixes = {ly.name for ly in folded.lowered.layers} | {"input", "const"}
    for n in model.graph.node:
        assert n.name.split("/")[0] in prefixes, n.name
        if n.op_type == "Conv":
            assert n.input[1] == f"{n.name}/weight" and n.input[2] == f"{n.name}/bias"
            assert len(n.attribute) and "auto_pad" not in {a.name for a in n.attribute}
    for t in model.graph.initializer:
        assert t.name.split("/")[0] in prefixes, t.name
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)


def parity(net: mnasdsl.Network, tmp_path: Path, batch: int = 2, opset: int = 17, var_scale: float = 1.0) -> bytes:
    model = built(net, var_scale=var_scale)
    x = images(model, batch)
    want = np.asarray(flax_eval(model, x))
    got, data = export_run(model, x, tmp_path, batch=batch, opset=opset)
    assert got.shape == want.shape == (batch, model.lowered.classes)
    assert np.abs(want).max() > 0.1  # not a degenerate comparison
    assert batch == 1 or np.ptp(want, axis=0).max() > 1e-3  # the logits depend on the image
    assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()
    check_graph(data, fold(model), opset)
    return data


# --- parity with the Flax forward ------------------------------------------------------------------



@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("resolution", [64, (57, 45)], ids=["64", "57x45"])
def test_spec_parity(name: str, resolution: int | tuple[int, int], tmp_path: Path) -> None:
    parity(spec(name, resolution), tmp_path)


def test_a1_full_resolution(tmp_path: Path) -> None:
    data = parity(spec("mnasnet-a1", 224), tmp_path, batch=1)
    # stem + ds (dw, project) + 15 mb x (expand, dw, project) + head = 49 convs, + 2 per SE (8 layers)
    assert census(data)["Conv"] == 1 + 2 + 15 * 3 + 1 + 8 * 2


@pytest.mark.parametrize("padding", ["same", "symmetric"])
@pytest.mark.parametrize("resolution", [None, (31, 17)], ids=["25x21", "31x17"])
def test_every_feature_parity(padding: str, resolution: tuple[int, int] | None, tmp_path: Path) -> None:
    net = every(padding).scaled(resolution=resolution)
    low = mnasdsl.lower(net)
    skips = {ly.skip for ly in low.blocks}
    assert skips == {"none", "identity", "pool"} and {ly.act for ly in low.layers} >= {"relu", "relu6", "swish",
                                                                                      "hswish"}
    assert any(ly.skip == "pool" and ly.stride == (1, 1) and ly.pool_proj for ly in low.blocks)
    data = parity(net, tmp_path)
    ops = census(data)
    assert ops["AveragePool"] == 5 and ops["HardSwish"] >= 1 and ops["Clip"] >= 1
    if padding == "same":  # the asymmetric TF pads appear on some conv
        model = onnx.load_model_from_string(data)
        pads = [list(a.ints) for n in model.graph.node if n.op_type == "Conv" for a in n.attribute
                if a.name == "pads"]
        assert any(p[:2] != p[2:] for p in pads)


@pytest.mark.parametrize("opset", [11, 13, 14, 21])
def test_other_opsets(opset: int, tmp_path: Path) -> None:
    """Before opset 14 hswish is HardSigmoid * x; the result is the same."""
    data = parity(every(), tmp_path, opset=opset)
    assert ("HardSwish" in census(data)) == (opset >= 14)


@pytest.mark.parametrize("resolution", [(9, 7), (5, 11), (3, 3), (1, 1), (2, 3)])
def test_pool_skip_odd_sizes(resolution: tuple[int, int], tmp_path: Path) -> None:
    """AveragePool with explicit SAME pads and count_include_pad=0 == avg_pool_same."""
    data = parity(mnasdsl.parse(POOL)[0].scaled(resolution=resolution), tmp_path)
    assert census(data)["AveragePool"] == 3


# --- graph shape: no noise, names, I/O, metadata -------------------------------------------------

def test_node_count_per_layer_a1(tmp_path: Path) -> None:
    model = built(spec("mnasnet-a1", 64))
    folded = fold(model)
    graph = onnx.load_model_from_string(to_onnx(folded)).graph
    per = collections.Counter(n.name.split("/")[0] for n in graph.node)
    assert len(graph.node) == expected_nodes(folded) == 143
    assert per["input"] == 1 and per["classifier"] == 3
    assert per["stem"] == 2 and per["head"] == 2  # conv + relu
    assert per["blocks.0.0"] == 3  # ds noskip: dw + relu + project
    assert per["blocks.1.0"] == 5 and per["blocks.1.1"] == 6  # mb, then with the identity add
    assert per["blocks.2.0"] == 11 and per["blocks.2.1"] == 12  # + SE (6 nodes)


def test_io_and_metadata(tmp_path: Path) -> None:
    model = built(spec("mnasnet-small", 64))
    meta = {"network": "mnasnet_small", "mnasdsl.note": "a=b, ü"}
    data = to_onnx(fold(model), batch=4, metadata=meta)
    proto = onnx.load_model_from_string(data)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, dims) == ("images", [4, 64, 64, 3])
    assert (out.name, [d.dim_value for d in out.type.tensor_type.shape.dim]) == ("logits", [4, 10])
    assert proto.graph.node[0].op_type == "Transpose" and list(proto.graph.node[0].attribute[0].ints) == [0, 3, 1, 2]
    path = tmp_path / "small.onnx"
    path.write_bytes(data)
    loaded = load_onnx(path, intra_op_num_threads=2)
    assert loaded.metadata == meta and loaded.input_shape == (64, 64, 3) and loaded.batch == 4
    with pytest.raises(mnasdsl.MnasError, match="does not fit"):
        loaded.run(np.zeros((2, 64, 64, 3), np.float32))


def test_dynamic_batch(tmp_path: Path) -> None:
    model = built(every())
    x = images(model, 3)
    got, data = export_run(model, x, tmp_path, batch=None)
    assert np.abs(got - np.asarray(flax_eval(model, x))).max() <= TOL
    dim0 = onnx.load_model_from_string(data).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    loaded = load_onnx(tmp_path / f"{model.lowered.name}.onnx")
    assert loaded.batch is None and loaded.run(x[:1]).shape == (1, 10)


@pytest.mark.parametrize("kw", [{"batch": 0}, {"batch": -1}, {"opset": 10}, {"opset": 999},
                                {"metadata": {"k": 1}}])
def test_bad_export_arguments(kw: dict[str, Any]) -> None:
    folded = fold(fb.build(mnasdsl.parse(POOL)[0], rngs=nnx.Rngs(0)))
    with pytest.raises(mnasdsl.MnasError):
        to_onnx(folded, **kw)


# --- files that are not our models ---------------------------------------------------------------

def _valid() -> bytes:
    return to_onnx(fold(fb.build(mnasdsl.parse(POOL)[0], rngs=nnx.Rngs(0))))


def _foreign(inputs: list[Any], outputs: list[Any], nodes: list[Any]) -> bytes:
    h = onnx.helper
    graph = h.make_graph(nodes, "foreign", inputs, outputs)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _f(name: str, shape: list[Any]) -> Any:
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


BAD: dict[str, Callable[[bytes], bytes | None]] = {
    "missing": lambda good: None,
    "empty": lambda good: b"",
    "random": lambda good: np.random.default_rng(0).bytes(4096),
    "text": lambda good: b"network x:\n  input 224x224x3\n",
    "truncated": lambda good: good[: len(good) // 2],
    "truncated-tail": lambda good: good[:-7],
    "other-io": lambda good: _foreign([_f("x", [1, 3, 8, 8])], [_f("y", [1, 3, 8, 8])],
                                      [onnx.helper.make_node("Relu", ["x"], ["y"])]),
    "not-4d": lambda good: _foreign([_f("images", [1, 10])], [_f("logits", [1, 10])],
                                    [onnx.helper.make_node("Relu", ["images"], ["logits"])]),
    "dynamic-hw": lambda good: _foreign(
        [_f("images", [1, "h", "w", 3])], [_f("logits", [1, 3])],
        [onnx.helper.make_node("ReduceMean", ["images"], ["logits"], axes=[1, 2], keepdims=0)]),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_files_are_mnas_errors(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.onnx"
    data = BAD[kind](_valid())
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(mnasdsl.MnasError) as err:
        load_onnx(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg.strip(), msg


@pytest.mark.parametrize("name", ["mobilenet-v3-large", "mobilenet-v3-small", "efficientnet-edgetpu-s",
                                  "efficientnetv2-b0"])
def test_mnasnet_descendants_parity(name: str, tmp_path: Path) -> None:
    """er, MobileNetV3's HardSigmoid SE gates and pooled head (GlobalAveragePool before its Conv), SE with swish."""
    data = parity(spec(name, (57, 45)), tmp_path, var_scale=0.65)
    ops = census(data)
    if name.startswith("mobilenet-v3"):
        assert ops["HardSigmoid"] >= 8 and ops["GlobalAveragePool"] == ops["HardSigmoid"] + 2
