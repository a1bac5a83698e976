"""strip_redundant: a smaller .tflite the interpreter runs bit-identically, with the same signature and ops.
float_io: the int8 model behind float32 I/O, computing what an int8-I/O caller computes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("litert_converter")
pytest.importorskip("flax")

import mnasdsl  # noqa: E402
from mnasdsl.backends import tflite as tl  # noqa: E402
from mnasdsl.backends.tflite_flatbuffer import float_io, size_breakdown, strip_redundant  # noqa: E402

RES = 32
KINDS = ("float", "fp16", "int8")


def _with_biases(net: Any, seed: int = 0) -> Any:
    """Fresh BN folds to all-zero biases, which the converter drops; give every conv/dense a bias
    as a trained network has, so the int8 file carries its int32 biases and their per-channel scales."""
    from mnasdsl.backends.folded import FoldedConv

    rng = np.random.default_rng(seed)

    def b(a: np.ndarray) -> np.ndarray:
        return rng.normal(0.0, 0.1, a.shape).astype(np.float32)

    def op(o: Any) -> Any:
        if o is None:
            return None
        if isinstance(o, FoldedConv):
            return replace(o, bias=b(o.bias))
        return replace(o, reduce_bias=b(o.reduce_bias), expand_bias=b(o.expand_bias))

    layers = tuple(replace(fl, ops=tuple(op(o) for o in fl.ops), pool_proj=op(fl.pool_proj)) for fl in net.layers)
    return replace(net, layers=layers, classifier_bias=b(net.classifier_bias))


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """mnasnet-small at 32 px, 10 classes: float, fp16-weight and full-int8 files, and their stripped forms."""
    from flax import nnx

    from mnasdsl.backends import flax as fb
    from mnasdsl.backends.folded import fold

    net = mnasdsl.load("specs/mnasnet-small.mnas").scaled(resolution=RES, classes=10)
    folded = _with_biases(fold(fb.build(mnasdsl.lower(net), rngs=nnx.Rngs(0))))
    data = tl.convert(folded, 1)
    cal = [np.random.default_rng(i).standard_normal((1, RES, RES, 3)).astype(np.float32) for i in range(4)]
    out = {"float": data, "fp16": tl.quantize_fp16(data, strip=False),
           "int8": tl.quantize_int8(data, cal, strip=False, io_type="int8")}
    out.update({f"{k}-stripped": strip_redundant(v) for k, v in list(out.items())})
    return out


def _inputs(n: int = 4) -> list[np.ndarray]:
    return [np.random.default_rng(100 + i).normal(0, 1.5, (1, RES, RES, 3)).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_bit_identical(models: dict[str, bytes], kind: str) -> None:
    a, b = tl.load(models[kind]), tl.load(models[f"{kind}-stripped"])
    for x in _inputs():
        ya, yb = a.run(x), b.run(x)
        assert ya.dtype == yb.dtype and np.array_equal(ya, yb)


@pytest.mark.parametrize("kind", KINDS)
def test_signature_census_and_io_unchanged(models: dict[str, bytes], kind: str) -> None:
    a, b = tl.load(models[kind]), tl.load(models[f"{kind}-stripped"])
    assert a.interpreter.get_signature_list() == b.interpreter.get_signature_list()
    assert tl.op_census(models[kind]) == tl.op_census(models[f"{kind}-stripped"])
    for get in ("get_input_details", "get_output_details"):
        da, db = getattr(a.runner, get)(), getattr(b.runner, get)()
        assert da.keys() == db.keys()
        for k in da:
            assert da[k]["dtype"] == db[k]["dtype"] and list(da[k]["shape"]) == list(db[k]["shape"])
            assert da[k]["quantization"] == db[k]["quantization"]
    assert tl.weight_dtypes(models[kind]) == tl.weight_dtypes(models[f"{kind}-stripped"])


@pytest.mark.parametrize("kind", KINDS)
def test_tensors_and_constants_preserved(models: dict[str, bytes], kind: str) -> None:
    """Every tensor keeps its shape, type, quantization values and constant bytes; only names of
    non-I/O tensors go."""
    from ai_edge_litert import schema_py_generated as fbs

    def tensors(data: bytes) -> list[tuple[Any, ...]]:
        m = fbs.Model.GetRootAs(data, 0)
        sg = m.Subgraphs(0)
        io = {sg.Inputs(i) for i in range(sg.InputsLength())} | {sg.Outputs(i) for i in range(sg.OutputsLength())}
        out = []
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            b = m.Buffers(t.Buffer())
            if b.Offset() > 1:
                const = bytes(data[b.Offset():b.Offset() + b.Size()])
            else:
                const = b.DataAsNumpy().tobytes() if b.DataLength() else b""
            q = t.Quantization()
            if q is None or q.ScaleLength() + q.ZeroPointLength() + q.DetailsType() == 0:
                qv = None  # an empty table reads as "not quantized"; stripping drops it
            else:
                qv = (q.ScaleAsNumpy().tobytes(), q.ZeroPointAsNumpy().tobytes(), q.QuantizedDimension())
            out.append((t.Name() if i in io else None, t.Type(), list(t.ShapeAsNumpy()), const, qv))
        return out

    assert tensors(models[kind]) == tensors(models[f"{kind}-stripped"])


@pytest.mark.parametrize("kind", KINDS)
def test_smaller_idempotent_and_aligned(models: dict[str, bytes], kind: str) -> None:
    from ai_edge_litert import schema_py_generated as fbs

    s = models[f"{kind}-stripped"]
    assert len(s) < len(models[kind])
    assert strip_redundant(s) == s
    m = fbs.Model.GetRootAs(s, 0)
    for i in range(m.BuffersLength()):
        tab = m.Buffers(i)._tab  # noqa: SLF001 - where the data vector starts
        if tab.Offset(4):
            assert tab.Vector(tab.Offset(4)) % 16 == 0, f"buffer {i} data not 16-byte aligned"


def test_breakdown_accounts_for_every_byte(models: dict[str, bytes]) -> None:
    before, after = size_breakdown(models["int8"]), size_breakdown(models["int8-stripped"])
    assert sum(before.values()) == len(models["int8"]) and sum(after.values()) == len(models["int8-stripped"])
    assert after["buffers/INT8"] == before["buffers/INT8"] and after["buffers/INT32"] == before["buffers/INT32"]
    assert after["quant/scale"] <= before["quant/scale"]
    assert after["quant/zero_point"] < 0.15 * before["quant/zero_point"]  # the all-zero int64 vectors, shared
    assert "quant/min_max" not in after and "buffers/unreferenced" not in after


def test_int8_at_most_030_of_float(models: dict[str, bytes]) -> None:
    """mnasnet-small (32 px, 10 classes): stripping the shared zero points and names, with the SE
    dense layers quantized per tensor, brings full-int8 under 0.3x of the float file."""
    assert len(models["int8-stripped"]) <= 0.3 * len(models["float"])


def test_drops_min_max_and_unreferenced_buffers(models: dict[str, bytes]) -> None:
    """Converter-style min/max and an orphan buffer, injected into the float model, are removed and
    the outputs do not move."""
    from ai_edge_litert import schema_py_generated as fbs
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = fbs.ModelT.InitFromObj(fbs.Model.GetRootAs(models["float"], 0))
    sg = m.subgraphs[0]
    for t in sg.tensors[:20]:
        q = fbs.QuantizationParametersT()
        q.min, q.max = np.array([-1.0], np.float32), np.array([1.0], np.float32)
        t.quantization = q
    orphan = fbs.BufferT()
    orphan.data = np.arange(4096, dtype=np.uint8)
    m.buffers.append(orphan)
    padded = bytes(fu.convert_object_to_bytearray(m))
    assert size_breakdown(padded)["quant/min_max"] == 20 * 8 and size_breakdown(padded)["buffers/unreferenced"] == 4096

    s = strip_redundant(padded)
    sizes = size_breakdown(s)
    assert "quant/min_max" not in sizes and "buffers/unreferenced" not in sizes
    assert fbs.Model.GetRootAs(s, 0).Subgraphs(0).Tensors(0).Quantization() is None
    a, b = tl.load(padded), tl.load(s)
    for x in _inputs(2):
        assert np.array_equal(a.run(x), b.run(x))


def test_rejects_non_tflite() -> None:
    with pytest.raises(ValueError, match="TFL3"):
        strip_redundant(b"not a model at all")


# --- float_io --------------------------------------------------------------------------------------

INT8 = ("int8", "int8-stripped")  # the quantizer's file (buffers stored past the flatbuffer) and its stripped form


def _qp(detail: dict[str, Any]) -> tuple[np.float32, int]:
    q = detail["quantization_parameters"]
    return np.float32(q["scales"][0]), int(q["zero_points"][0])


def _kernel_quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """The QUANTIZE kernel's float32 -> int8 (XNNPACK's and the reference one's alike): ``x`` times the
    float32 reciprocal of the scale, rounded half to even."""
    scale, zero = _qp(detail)
    return np.clip(np.round(x * (np.float32(1) / scale)) + zero, -128, 127).astype(np.int8)


def _runner_quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """What ``LiteRTModel.run`` feeds an int8-input model: ``x`` divided by the scale, rounded half to even."""
    scale, zero = _qp(detail)
    return np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)


def _ties(detail: dict[str, Any]) -> np.ndarray:
    """An input whose elements mostly quantize to exactly k + 0.5, so the rounding mode shows."""
    inv = np.float32(1) / _qp(detail)[0]
    k = np.random.default_rng(7).integers(-100, 100, (1, RES, RES, 3)).astype(np.float32) + np.float32(0.5)
    x = (k / inv).astype(np.float32)
    for _ in range(4):  # step x by ulps until x * inv lands on k where it can
        v = x * inv
        x = np.where(v < k, np.nextafter(x, np.float32(np.inf)), np.where(v > k, np.nextafter(x, -np.inf), x))
    assert np.mean(x * inv == k) > 0.5
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def floated(models: dict[str, bytes]) -> dict[str, bytes]:
    return {k: float_io(models[k]) for k in INT8}


@pytest.mark.parametrize("kind", INT8)
def test_float_io_signature_and_io_details(models: dict[str, bytes], floated: dict[str, bytes], kind: str) -> None:
    a, b = tl.load(models[kind]), tl.load(floated[kind])
    sig = {tl.SIGNATURE: {"inputs": [tl.INPUT_NAME], "outputs": [tl.OUTPUT_NAME]}}
    assert b.interpreter.get_signature_list() == sig
    for get, name in (("get_input_details", tl.INPUT_NAME), ("get_output_details", tl.OUTPUT_NAME)):
        da, db = getattr(a.runner, get)()[name], getattr(b.runner, get)()[name]
        assert da["dtype"] == np.int8 and db["dtype"] == np.float32
        assert list(da["shape"]) == list(db["shape"]) and list(da["shape_signature"]) == list(db["shape_signature"])
        assert db["quantization"] == (0.0, 0) and db["name"] == da["name"]  # the float tensor takes the name
    names = {t["name"] for t in b.interpreter.get_tensor_details()}
    assert {a.runner.get_input_details()[tl.INPUT_NAME]["name"] + "_int8",
            a.runner.get_output_details()[tl.OUTPUT_NAME]["name"] + "_int8"} <= names


@pytest.mark.parametrize("kind", INT8)
def test_float_io_adds_one_quantize_and_dequantize(models: dict[str, bytes], floated: dict[str, bytes],
                                                   kind: str) -> None:
    from ai_edge_litert import schema_py_generated as fbs

    census = tl.op_census(floated[kind])
    assert census.pop("QUANTIZE") == 1 and census.pop("DEQUANTIZE") == 1
    assert census == tl.op_census(models[kind])
    assert list(tl.op_census(floated[kind]))[0] == "QUANTIZE" and list(tl.op_census(floated[kind]))[-1] == "DEQUANTIZE"
    m = fbs.Model.GetRootAs(floated[kind], 0)
    codes = [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]
    found = {(c.BuiltinCode(), c.DeprecatedBuiltinCode(), c.Version()) for c in codes
             if c.BuiltinCode() in (fbs.BuiltinOperator.QUANTIZE, fbs.BuiltinOperator.DEQUANTIZE)}
    assert found == {(fbs.BuiltinOperator.QUANTIZE, fbs.BuiltinOperator.QUANTIZE, 1),
                     (fbs.BuiltinOperator.DEQUANTIZE, fbs.BuiltinOperator.DEQUANTIZE, 2)}
    assert tl.weight_dtypes(floated[kind]) == tl.weight_dtypes(models[kind])


@pytest.mark.parametrize("kind", INT8)
def test_float_io_is_the_int8_arithmetic(models: dict[str, bytes], floated: dict[str, bytes], kind: str) -> None:
    """Bit for bit: the float model's output is the int8 model's on the kernel-quantized input,
    dequantized; on a tie-heavy input too, which pins the rounding (half to even, not away)."""
    a, b = tl.load(models[kind]), tl.load(floated[kind])
    din, dout = a.runner.get_input_details()[tl.INPUT_NAME], a.runner.get_output_details()[tl.OUTPUT_NAME]
    scale, zero = _qp(dout)
    for x in [*_inputs(6), _ties(din)]:
        y = a.runner(**{tl.INPUT_NAME: _kernel_quantize(x, din)})[tl.OUTPUT_NAME]
        expected = (y.astype(np.float32) - zero) * scale
        got = b.run(x)
        assert got.dtype == np.float32 and np.array_equal(got, expected)


@pytest.mark.parametrize("kind", INT8)
def test_float_io_matches_run_on_int8_io(models: dict[str, bytes], floated: dict[str, bytes], kind: str) -> None:
    """``tl.load(q).run(x)`` quantizes in numpy as ``x / scale``; the kernel multiplies by ``1 / scale``.
    Both round half to even, so they agree except where the two products straddle a .5 by an ulp
    (about one element in a million; seen once in 200 random 32x32x3 inputs, changing one int8 input
    by 1 and the logits by two output steps). Where the quantized inputs agree the outputs are equal
    bit for bit; these inputs all agree."""
    a, b = tl.load(models[kind]), tl.load(floated[kind])
    din = a.runner.get_input_details()[tl.INPUT_NAME]
    for x in _inputs(8):
        assert np.array_equal(_runner_quantize(x, din), _kernel_quantize(x, din))
        assert np.array_equal(a.run(x), b.run(x))


def test_float_io_idempotent_and_float_models_unchanged(models: dict[str, bytes], floated: dict[str, bytes]) -> None:
    for kind in ("float", "fp16", "float-stripped", "fp16-stripped"):
        assert float_io(models[kind]) == models[kind]
    for kind in INT8:
        assert float_io(floated[kind]) == floated[kind]


@pytest.mark.parametrize("kind", INT8)
def test_float_io_survives_strip(floated: dict[str, bytes], kind: str) -> None:
    f = floated[kind]
    s = strip_redundant(f)
    assert len(s) <= len(f) and strip_redundant(s) == s
    a, b = tl.load(f), tl.load(s)
    assert a.interpreter.get_signature_list() == b.interpreter.get_signature_list()
    assert tl.op_census(f) == tl.op_census(s)
    assert b.runner.get_input_details()[tl.INPUT_NAME]["dtype"] == np.float32
    for x in _inputs(3):
        assert np.array_equal(a.run(x), b.run(x))


def test_float_io_reuses_op_codes(models: dict[str, bytes], floated: dict[str, bytes]) -> None:
    """A DEQUANTIZE code already present (at version 1) is reused and raised to the int8 version 2, not
    duplicated; the missing QUANTIZE is added with both code fields set."""
    from ai_edge_litert import schema_py_generated as fbs
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = fbs.ModelT.InitFromObj(fbs.Model.GetRootAs(models["int8-stripped"], 0))
    oc = fbs.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = fbs.BuiltinOperator.DEQUANTIZE
    m.operatorCodes.append(oc)
    n = len(m.operatorCodes)
    out = fbs.ModelT.InitFromObj(fbs.Model.GetRootAs(float_io(bytes(fu.convert_object_to_bytearray(m))), 0))
    assert len(out.operatorCodes) == n + 1
    d = out.operatorCodes[n - 1]
    assert (d.builtinCode, d.version) == (fbs.BuiltinOperator.DEQUANTIZE, 2)
    q = out.operatorCodes[n]
    assert (q.builtinCode, q.deprecatedBuiltinCode) == (fbs.BuiltinOperator.QUANTIZE,) * 2
    ops = out.subgraphs[0].operators
    assert (ops[0].opcodeIndex, ops[-1].opcodeIndex) == (n, n - 1)


def test_float_io_rejects_non_tflite() -> None:
    with pytest.raises(ValueError, match="TFL3"):
        float_io(b"not a model at all")
