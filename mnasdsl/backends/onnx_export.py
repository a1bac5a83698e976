"""ONNX export of the folded inference graph (see :mod:`mnasdsl.backends.folded`).

The graph is written node by node with ``onnx.helper`` from the folded layers, so it holds only
what the network computes: Conv (BN folded in, depthwise as ``group`` = channels, explicit pads),
the activations, SE, the skips, and GlobalAveragePool -> Flatten -> Gemm. No tracer (torch,
jax2onnx) is involved, which keeps the graph free of Reshape/Concat/BatchNormalization noise
and its names equal to the lowered layer names (``blocks.3.1/expand``).

The model takes float32 NHWC ``images`` like the Flax backend and transposes once to ONNX's NCHW.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..diagnostics import Diagnostic, MnasError
from .folded import FoldedConv, FoldedLayer, FoldedNetwork, FoldedPool, FoldedSE

__all__ = ["INPUT_NAME", "MIN_OPSET", "OUTPUT_NAME", "OnnxModel", "expected_nodes", "load_onnx", "to_onnx"]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
MIN_OPSET = 11  # Clip takes min/max as inputs from 11 on; HardSwish exists from 14 on


def _onnx() -> ModuleType:
    try:
        import onnx
    except ImportError as e:  # an optional dependency: only export needs it
        raise MnasError(f"ONNX export needs the onnx package ({e}); pip install onnx") from None
    return onnx


def _act_nodes(act: str, opset: int) -> int:
    """Nodes an activation takes: swish is Sigmoid+Mul, hswish HardSigmoid+Mul before opset 14."""
    return {"none": 0, "relu": 1, "relu6": 1, "swish": 2, "hswish": 1 if opset >= 14 else 2}[act]


def expected_nodes(net: FoldedNetwork, *, opset: int = 17) -> int:
    """The node count :func:`to_onnx` emits, counted from the folded layers alone (no export),
    so a test can prove the graph has nothing beyond what the network computes."""
    n = 1  # the NHWC -> NCHW transpose
    for fl in net.layers:
        for op in fl.ops:
            if isinstance(op, FoldedSE):  # pool, reduce, act, expand, gate, multiply
                n += 4 + _act_nodes(op.act, opset) + 1
            elif isinstance(op, FoldedPool):
                n += 1
            else:
                n += 1 + _act_nodes(op.act, opset)
        if fl.skip == "identity":
            n += 1  # Add
        elif fl.skip == "pool":
            n += 1 if fl.pool_stride != (1, 1) else 0  # AveragePool (a 1x1 window is the identity)
            if fl.pool_proj is not None:
                n += 1 + _act_nodes(fl.pool_proj.act, opset)
            n += 1  # Add
    return n + 3  # GlobalAveragePool -> Flatten -> Gemm


@dataclass
class _Graph:
    """Accumulates nodes and initializers; every tensor is named after the node that makes it."""

    onnx: ModuleType
    opset: int
    nodes: list[Any] = field(default_factory=list)
    inits: list[Any] = field(default_factory=list)
    consts: dict[str, str] = field(default_factory=dict)

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attrs: Any) -> str:
        out = output or name
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def const(self, value: float) -> str:
        """A shared scalar initializer (Clip's bounds), added once."""
        key = f"const/{value:g}"
        if key not in self.consts:
            self.consts[key] = self.init(key, np.asarray(value, np.float32))
        return self.consts[key]

    def act(self, x: str, act: str, name: str) -> str:
        if act == "none":
            return x
        if act == "relu":
            return self.node("Relu", [x], f"{name}/relu")
        if act == "relu6":
            return self.node("Clip", [x, self.const(0.0), self.const(6.0)], f"{name}/relu6")
        if act == "swish":
            s = self.node("Sigmoid", [x], f"{name}/swish/sigmoid")
            return self.node("Mul", [x, s], f"{name}/swish")
        if act == "hswish":
            if self.opset >= 14:
                return self.node("HardSwish", [x], f"{name}/hswish")
            # relu6(x + 3) / 6 == clip(x/6 + 1/2, 0, 1): HardSwish's own definition.
            g = self.node("HardSigmoid", [x], f"{name}/hswish/gate", alpha=1.0 / 6.0, beta=0.5)
            return self.node("Mul", [x, g], f"{name}/hswish")
        raise MnasError(f"ONNX export: unknown activation {act!r} in {name}")

    def conv(self, x: str, c: FoldedConv, name: str) -> str:
        kh, kw = int(c.kernel.shape[0]), int(c.kernel.shape[1])
        w = self.init(f"{name}/weight", np.transpose(c.kernel, (3, 2, 0, 1)))  # HWIO -> OIHW
        b = self.init(f"{name}/bias", c.bias)
        (pt, pb), (pl, pr) = c.pads
        y = self.node("Conv", [x, w, b], name, kernel_shape=[kh, kw], strides=list(c.stride),
                      pads=[pt, pl, pb, pr], group=c.groups, dilations=[1, 1])
        return self.act(y, c.act, name)

    def se(self, x: str, se: FoldedSE, name: str) -> str:
        # 1x1 convs on the pooled (N, C, 1, 1) tensor: no Flatten/Reshape around a Gemm.
        s = self.node("GlobalAveragePool", [x], f"{name}/pool")
        rw = self.init(f"{name}/reduce/weight", se.reduce_kernel.T[:, :, None, None])
        rb = self.init(f"{name}/reduce/bias", se.reduce_bias)
        s = self.node("Conv", [s, rw, rb], f"{name}/reduce", kernel_shape=[1, 1])
        s = self.act(s, se.act, f"{name}/reduce")
        ew = self.init(f"{name}/expand/weight", se.expand_kernel.T[:, :, None, None])
        eb = self.init(f"{name}/expand/bias", se.expand_bias)
        s = self.node("Conv", [s, ew, eb], f"{name}/expand", kernel_shape=[1, 1])
        if se.gate == "sigmoid":
            s = self.node("Sigmoid", [s], f"{name}/gate")
        else:  # relu6(x + 3) / 6 == clip(x/6 + 1/2, 0, 1)
            s = self.node("HardSigmoid", [s], f"{name}/gate", alpha=1.0 / 6.0, beta=0.5)
        return self.node("Mul", [x, s], name)

    def layer(self, x: str, fl: FoldedLayer) -> str:
        base = fl.layer.name
        y = x
        for op in fl.ops:
            if isinstance(op, FoldedSE):
                y = self.se(y, op, f"{base}/se")
                continue
            if isinstance(op, FoldedPool):
                y = self.node("GlobalAveragePool", [y], f"{base}/pool")
                continue
            y = self.conv(y, op, f"{base}/{op.part}")
        if fl.skip == "identity":
            return self.node("Add", [y, x], f"{base}/add")
        if fl.skip == "pool":
            s = x
            if fl.pool_stride != (1, 1):
                (pt, pb), (pl, pr) = fl.pool_pads
                # Window = stride, TF SAME pads given explicitly; count_include_pad=0 averages the
                # valid pixels only, as avg_pool_same does.
                s = self.node("AveragePool", [x], f"{base}/pool", kernel_shape=list(fl.pool_stride),
                              strides=list(fl.pool_stride), pads=[pt, pl, pb, pr], count_include_pad=0,
                              ceil_mode=0)
            if fl.pool_proj is not None:
                s = self.conv(s, fl.pool_proj, f"{base}/pool_proj")
            return self.node("Add", [y, s], f"{base}/add")
        return y


def to_onnx(net: FoldedNetwork, *, batch: int | None = 1, opset: int = 17,
            metadata: dict[str, str] | None = None) -> bytes:
    """Serialize the folded network as an ONNX model: float32 NHWC ``images`` -> ``logits``.

    ``batch`` None makes the batch dimension symbolic ("batch"). The model is checked with
    ``onnx.checker`` (full shape inference) before it is returned, so a bad graph never leaves here.
    """
    onnx = _onnx()
    latest = int(onnx.defs.onnx_opset_version())
    if not MIN_OPSET <= opset <= latest:
        raise MnasError(f"ONNX export: opset {opset} is not supported (use {MIN_OPSET}..{latest})")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise MnasError(f"ONNX export: batch must be a positive integer or None, got {batch!r}")
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise MnasError(f"ONNX export: metadata must map str to str, got {k!r}: {v!r}")

    helper, tp = onnx.helper, onnx.TensorProto
    g = _Graph(onnx, opset)
    y = g.node("Transpose", [INPUT_NAME], "input/nchw", perm=[0, 3, 1, 2])
    for fl in net.layers:
        y = g.layer(y, fl)
    y = g.node("GlobalAveragePool", [y], "classifier/pool")
    y = g.node("Flatten", [y], "classifier/flatten", axis=1)
    w = g.init("classifier/weight", net.classifier_kernel)
    b = g.init("classifier/bias", net.classifier_bias)
    g.node("Gemm", [y, w, b], "classifier", output=OUTPUT_NAME)

    h, wd, c = net.input_shape
    classes = int(net.classifier_kernel.shape[1])
    n: int | str = "batch" if batch is None else batch
    inp = helper.make_tensor_value_info(INPUT_NAME, tp.FLOAT, [n, h, wd, c])
    out = helper.make_tensor_value_info(OUTPUT_NAME, tp.FLOAT, [n, classes])
    graph = helper.make_graph(g.nodes, net.lowered.name, [inp], [out], initializer=g.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="mnasdsl",
                              ir_version=helper.find_min_ir_version_for(opsets))
    from .. import __version__

    model.producer_version = __version__
    model.doc_string = f"mnasdsl network {net.lowered.name}: float32 NHWC {INPUT_NAME} -> {OUTPUT_NAME}"
    if metadata:
        helper.set_model_props(model, dict(metadata))
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _file_error(path: Path, message: str) -> MnasError:
    """``PATH: error: message``, the compiler's one-line form for a file."""
    return MnasError(Diagnostic(message, path=str(path)))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass(frozen=True)
class OnnxModel:
    """An exported model loaded into onnxruntime (CPU): ``run`` takes NHWC float32 images."""

    path: Path
    session: Any
    input_shape: tuple[int, int, int]  # H, W, C
    batch: int | None  # None: dynamic
    classes: int
    metadata: dict[str, str]
    census: dict[str, int]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (batch, classes) of NHWC images (batch, H, W, C)."""
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or (self.batch not in (None, x.shape[0])):
            want = ("N" if self.batch is None else str(self.batch), *map(str, self.input_shape))
            raise _file_error(self.path, f"input of shape {tuple(x.shape)} does not fit ({', '.join(want)})")
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x)})[0])

    def ops(self) -> dict[str, int]:
        """Node count per ONNX op type (the export's census)."""
        return dict(self.census)


def _static(dim: Any) -> int | None:
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def _external_tensor(model: Any) -> str | None:
    """The name of the first tensor whose data lives outside the model (``data_location = EXTERNAL``),
    anywhere a tensor can sit: initializers, sparse initializers, node attributes, nested graphs.
    onnxruntime resolves such a location against the working directory when the model comes as
    bytes, so a downloaded model could read any file there into its weights."""
    onnx = _onnx()
    external = onnx.TensorProto.EXTERNAL
    graphs = [model.graph]
    graphs.extend(f.node for f in model.functions)  # type: ignore[misc] - node lists, walked below
    seen = 0
    while graphs:
        g = graphs.pop()
        seen += 1
        if seen > 100_000:  # protobuf nesting is bounded by the file; this only stops a pathological walk
            return "<nested graphs>"
        if isinstance(g, onnx.GraphProto):
            tensors = list(g.initializer)
            for sp in g.sparse_initializer:
                tensors.extend((sp.values, sp.indices))
            nodes = list(g.node)
        else:
            tensors, nodes = [], list(g)
        for node in nodes:
            for attr in node.attribute:
                tensors.extend([attr.t, *attr.tensors])
                for sp in [attr.sparse_tensor, *attr.sparse_tensors]:
                    tensors.extend((sp.values, sp.indices))
                graphs.extend([attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs)
        for t in tensors:
            if t.data_location == external or len(t.external_data):
                return t.name or "<unnamed>"
    return None


def load_onnx(path: str | os.PathLike[str] | bytes, *, intra_op_num_threads: int = 1,
              name: str | None = None) -> OnnxModel:
    """Load an ONNX model written by :func:`to_onnx` into onnxruntime.

    Anything else (a missing, corrupt or truncated file, or a model with other inputs/outputs)
    is a MnasError naming the file, never a raw protobuf/onnxruntime exception.
    """
    onnx = _onnx()
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MnasError(f"running ONNX models needs onnxruntime ({e}); pip install onnxruntime") from None
    if isinstance(path, (bytes, bytearray)):
        p, data = Path(name or "<onnx>"), bytes(path)
    else:
        p = Path(path)
    try:
        if not isinstance(path, (bytes, bytearray)):
            data = p.read_bytes()
    except FileNotFoundError:
        raise _file_error(p, "no such ONNX file") from None
    except OSError as e:
        raise _file_error(p, f"cannot read ({e.strerror or e})") from None
    if not data:
        raise _file_error(p, "not an ONNX model (empty file)")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors: all mean "not a model"
        raise _file_error(p, f"not a valid ONNX model (truncated or corrupt?): {_first_line(e)}") from None
    external = _external_tensor(model)
    if external is not None:
        raise _file_error(p, f"tensor {external!r} keeps its data in another file (ONNX external data); "
                             "refused: it would be read from a path the model names, and mnasdsl never writes it")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - checker errors: all mean "not a model"
        raise _file_error(p, f"not a valid ONNX model (truncated or corrupt?): {_first_line(e)}") from None

    g = model.graph
    init_names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in g.output] != [OUTPUT_NAME]:
        raise _file_error(p, f"not an mnasdsl model: inputs {[i.name for i in inputs]}, outputs "
                        f"{[o.name for o in g.output]} (expected [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}])")
    itype, otype = inputs[0].type.tensor_type, g.output[0].type.tensor_type
    dims = list(itype.shape.dim)
    hwc = [_static(d) for d in dims[1:]]
    if itype.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or None in hwc:
        raise _file_error(p, f"input {INPUT_NAME!r} is not float32 NHWC (batch, H, W, C) with static H, W, C")
    odims = list(otype.shape.dim)
    if len(odims) != 2 or _static(odims[1]) is None:
        raise _file_error(p, f"output {OUTPUT_NAME!r} is not (batch, classes)")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(intra_op_num_threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors surface as MnasError below, not as log spam
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any onnxruntime load failure is a model it cannot run
        raise _file_error(p, f"onnxruntime cannot load it: {_first_line(e)}") from None
    meta = {prop.key: prop.value for prop in model.metadata_props}
    h, w, c = (int(v) for v in hwc)  # type: ignore[arg-type]
    census: dict[str, int] = {}
    for node in g.node:
        census[node.op_type] = census.get(node.op_type, 0) + 1
    return OnnxModel(p, session, (h, w, c), _static(dims[0]), int(_static(odims[1]) or 0), meta, census)
