"""Rewriting LiteRT flatbuffers: drop the bytes the runtime never reads, and say where the bytes go.

ai-edge-quantizer's full-integer models store, for every per-channel tensor (each int8 weight and
its int32 bias), float32 scales and an int64 zero-point vector of the same length, as the
interpreter requires (it rejects ``len(zero_point) != len(scale)``). Symmetric weights and biases
have all-zero zero points, so that is thousands of identical zero vectors: 178 KB of the 1.09 MB
int8 mnasnet-small (32 px, 10 classes). A flatbuffer is a DAG, so equal vectors and tables can be
written once and referenced many times; every reader still sees the same values.

:func:`strip_redundant` re-serializes a model with the schema object API of the installed runtime
(``ai_edge_litert.schema_py_generated``: a field that schema does not know, that runtime cannot
read either) and

* drops ``QuantizationParameters.min``/``max`` (converter bookkeeping; kernels read scale and
  zero_point only) and quantization tables left empty by that;
* drops unreferenced buffers and points every empty one at buffer 0 (the schema's empty sentinel);
* drops the names of tensors other than subgraph inputs/outputs: tracer labels such as
  ``jit(f)/broadcast_in_dim3`` that no kernel, mnasdsl or signature lookup reads (signature defs
  carry their own names and are kept; ``get_tensor_details()`` reports ``""`` for the others);
* writes each distinct vector (shapes, scales, zero points, op inputs), string and quantization /
  options table once.

Kept intact: operators, op codes and versions, tensor shapes/types/indices/quantization values,
signature defs, metadata entries and their buffers, the description. Buffer data is copied byte
for byte, inline, 16-byte aligned (the schema's ``force_align``), so models must stay under 2 GiB.

:func:`float_io` gives a full-integer model float32 inputs and outputs (a QUANTIZE op in front, a
DEQUANTIZE op behind), as TF's converter does by default, for callers that feed and read floats.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import flatbuffers
import numpy as np

_IDENT = b"TFL3"
_ALIGN = 16  # Buffer.data is force_align: 16 in the schema; the Python object API ignores that


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _check(data: bytes) -> None:
    if len(data) < 8 or bytes(data[4:8]) != _IDENT:
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")


def _freeze(v: Any) -> Any:
    """A hashable image of an object-API value, for finding equal subobjects."""
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if hasattr(v, "__dict__"):
        return (type(v).__name__, tuple((k, _freeze(x)) for k, x in sorted(vars(v).items())))
    return v


class _SharingBuilder(flatbuffers.Builder):
    """Writes each distinct numeric vector and string once; later equal ones reuse its offset."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.memo: dict[Any, int] = {}

    def CreateNumpyVector(self, x: np.ndarray) -> int:  # noqa: N802 - the flatbuffers API's name
        key = ("vector", x.dtype.str, x.tobytes())
        if key not in self.memo:
            self.memo[key] = super().CreateNumpyVector(x)
        return self.memo[key]

    def CreateString(self, s: str | bytes, encoding: str = "utf-8", errors: str = "strict") -> int:  # noqa: N802
        key = ("string", s if isinstance(s, bytes) else s.encode(encoding, errors))
        if key not in self.memo:
            self.memo[key] = super().CreateString(s, encoding, errors)
        return self.memo[key]


class _Shared:
    """Stands in for an object-API table in its parent's ``Pack``: equal tables are written once."""

    def __init__(self, obj: Any) -> None:
        self.obj, self.key = obj, ("table", _freeze(obj))

    def Pack(self, builder: _SharingBuilder) -> int:  # noqa: N802 - the object API's name
        if self.key not in builder.memo:
            builder.memo[self.key] = self.obj.Pack(builder)
        return builder.memo[self.key]


class _AlignedBuffer:
    """A ``Buffer`` table whose data vector is 16-byte aligned, as the schema asks and kernels
    reading weights in place assume (the generated ``BufferT.Pack`` aligns numpy data to 1)."""

    def __init__(self, payload: np.ndarray | None, schema: Any) -> None:
        self.payload, self.fb = payload, schema

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - the object API's name
        data = None
        if self.payload is not None:
            raw = self.payload.tobytes()
            builder.StartVector(1, len(raw), _ALIGN)
            builder.head -= len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            builder.vectorNumElems = len(raw)
            data = builder.EndVector()
        self.fb.BufferStart(builder)
        if data is not None:
            self.fb.BufferAddData(builder, data)
        return self.fb.BufferEnd(builder)


def _external(data: bytes, offset: int | None, size: int | None) -> np.ndarray | None:
    """Bytes stored past the flatbuffer at ``offset`` (how ai-edge-quantizer writes its buffers);
    the schema reads an offset of 0 or 1 as "inline"."""
    if not offset or offset <= 1:
        return None
    if offset + (size or 0) > len(data):
        raise ValueError(f"data at offset {offset} (+{size}) runs past the end of the file")
    return np.frombuffer(data, np.uint8, count=size or 0, offset=offset)


def _payload(data: bytes, b: Any) -> np.ndarray | None:
    p = _external(data, b.offset, b.size)
    if p is None and b.data is not None:
        p = np.asarray(b.data, np.uint8)
    return p if p is not None and p.size else None


def _ints(v: Any) -> list[int]:
    return [] if v is None or isinstance(v, int) else [int(i) for i in v]


def strip_redundant(data: bytes) -> bytes:
    """``data`` (a .tflite flatbuffer) rewritten without what the runtime never reads (see the module
    docstring): same graph, tensors, op codes, signatures and metadata, so the interpreter computes
    bit-identical outputs from a smaller file. Idempotent; ``ValueError`` if ``data`` is not a
    TFLite flatbuffer or the result would pass 2 GiB."""
    _check(data)
    fb = _schema()
    data = bytes(data)
    m = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))

    # buffers: the referenced non-empty ones, in order; every empty one becomes buffer 0
    payloads = [_payload(data, b) for b in m.buffers or []]
    holders = [t for sg in m.subgraphs or [] for t in sg.tensors or []] + list(m.metadata or [])
    used = {h.buffer for h in holders} | set(_ints(m.metadataBuffer))
    remap: dict[int, int] = {}
    kept: list[np.ndarray | None] = [None]
    for i in sorted(used):
        if i >= len(payloads):
            raise ValueError(f"a tensor or metadata entry references buffer {i} of {len(payloads)}")
        if payloads[i] is None:
            remap[i] = 0
        else:
            remap[i] = len(kept)
            kept.append(payloads[i])
    for h in holders:
        h.buffer = remap[h.buffer]
    if m.metadataBuffer is not None:
        m.metadataBuffer = [remap[i] for i in _ints(m.metadataBuffer)]
    m.buffers = [_AlignedBuffer(p, fb) for p in kept]

    for sg in m.subgraphs or []:
        io = set(_ints(sg.inputs)) | set(_ints(sg.outputs))
        for i, t in enumerate(sg.tensors or []):
            if i not in io:
                t.name = None
            q = t.quantization
            if q is not None:
                q.min = q.max = None
                empty = all(v is None or len(v) == 0 for v in (q.scale, q.zeroPoint))
                t.quantization = None if empty and q.details is None else _Shared(q)
        for op in sg.operators or []:
            custom = _external(data, op.largeCustomOptionsOffset, op.largeCustomOptionsSize)
            if custom is not None:  # inline custom options stored past the flatbuffer
                op.customOptions, op.largeCustomOptionsOffset, op.largeCustomOptionsSize = custom, 0, 0
            if op.builtinOptions is not None:
                op.builtinOptions = _Shared(op.builtinOptions)
            if getattr(op, "builtinOptions2", None) is not None:
                op.builtinOptions2 = _Shared(op.builtinOptions2)

    return _serialize(m, len(data))


# --- where the bytes go ----------------------------------------------------------------------------

def _span(tab: Any, field: int, width: int) -> tuple[int, int] | None:
    o = tab.Offset(field)
    return (tab.Vector(o), tab.VectorLen(o) * width) if o else None


def size_breakdown(data: bytes) -> dict[str, int]:
    """Bytes of a .tflite by what they hold, each stored (possibly shared) vector counted once:
    ``buffers/<dtype>`` (constant data, by the dtype of the first tensor using it),
    ``buffers/metadata``, ``buffers/unreferenced``, ``quant/scale``, ``quant/zero_point``,
    ``quant/min_max``, ``names`` (tensor names), ``other`` (tables, offsets, shapes, padding)."""
    _check(data)
    fb = _schema()
    types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    model = fb.Model.GetRootAs(data, 0)
    out: Counter[str] = Counter()
    seen: set[tuple[int, int]] = set()

    def add(key: str, span: tuple[int, int] | None) -> None:
        if span is not None and span not in seen:
            seen.add(span)
            out[key] += span[1]

    owner: dict[int, str] = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            owner.setdefault(t.Buffer(), types.get(t.Type(), str(t.Type())))
            add("names", _span(t._tab, 10, 1))  # Tensor.name
            q = t.Quantization()
            if q is not None:  # QuantizationParameters: min 4, max 6, scale 8, zero_point 10
                for field, key, width in ((4, "min_max", 4), (6, "min_max", 4), (8, "scale", 4), (10, "zero_point", 8)):
                    add(f"quant/{key}", _span(q._tab, field, width))
    for i in range(model.MetadataLength()):
        owner[model.Metadata(i).Buffer()] = "metadata"
    for i in range(model.MetadataBufferLength()):
        owner[model.MetadataBuffer(i)] = "metadata"
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        key = f"buffers/{owner.get(i, 'unreferenced')}"
        add(key, (b.Offset(), b.Size()) if b.Offset() > 1 else _span(b._tab, 4, 1))
    result = {k: v for k, v in sorted(out.items()) if v}
    result["other"] = len(data) - sum(result.values())
    return result


# --- float I/O around a full-integer graph ---------------------------------------------------------

# integer tensor type name -> (QUANTIZE version for float -> it, DEQUANTIZE version for it -> float), as
# tensorflow/lite/tools/versioning/op_version.cc assigns them for per-tensor quantization
_IO_VERSIONS = {"INT8": (1, 2), "UINT8": (1, 1), "INT16": (2, 3)}


def _per_tensor_int(t: Any, types: dict[int, str]) -> bool:
    """Whether ``t`` is an integer tensor with one (scale, zero point): what QUANTIZE/DEQUANTIZE convert."""
    q = t.quantization
    if types.get(t.type) not in _IO_VERSIONS or q is None or q.scale is None or len(q.scale) != 1:
        return False
    return float(q.scale[0]) > 0 and (q.zeroPoint is None or len(q.zeroPoint) <= 1)


def _opcode(m: Any, fb: Any, code: int, version: int) -> int:
    """Index of the builtin ``code`` in ``m.operatorCodes``, added if missing, its version raised to at
    least ``version``. Readers take ``max(builtin_code, deprecated_builtin_code)``, and codes past 126
    store the placeholder 127 in the deprecated int8 field, so both fields are matched and written."""
    placeholder = fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
    codes = m.operatorCodes if m.operatorCodes is not None else []
    for i, oc in enumerate(codes):
        if not oc.customCode and max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            oc.version = max(oc.version, version)
            return i
    oc = fb.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, placeholder), version
    codes.append(oc)
    m.operatorCodes = codes
    return len(codes) - 1


def _float_twin(t: Any, fb: Any, buffer: int) -> Any:
    """A float32 activation tensor with ``t``'s shape and name and no quantization."""
    f = fb.TensorT()
    f.type, f.buffer, f.name = fb.TensorType.FLOAT32, buffer, t.name
    f.shape = None if t.shape is None else np.array(t.shape, np.int32)
    f.shapeSignature = None if t.shapeSignature is None else np.array(t.shapeSignature, np.int32)
    f.hasRank = t.hasRank
    return f


def float_io(data: bytes) -> bytes:
    """``data`` (a .tflite) with float32 I/O around its integer graph, as TF's converter emits by
    default, so callers need not know the I/O scales. In each signature's subgraph (subgraph 0 if
    there are none) every per-tensor quantized int8/uint8/int16 input gets a new float32 tensor and a
    QUANTIZE op from it, every such output a DEQUANTIZE op into a new float32 tensor; the new tensors
    take the shapes and names, the integer ones are renamed ``<name>_int8`` etc. Subgraph I/O lists and
    signature defs (same keys, e.g. ``images``/``logits``) point at the float tensors; op codes are
    reused when present. The kernels compute what an int8-I/O caller should: QUANTIZE rounds
    ``x * (1/scale)`` half to even, DEQUANTIZE is ``(q - zero_point) * scale``. Everything else is
    kept (buffers stored past the flatbuffer are inlined, 16-byte aligned). A model without such I/O
    is returned unchanged, so this is idempotent. ``ValueError`` if ``data`` is not a TFLite
    flatbuffer or the result would pass 2 GiB."""
    _check(data)
    fb = _schema()
    data = bytes(data)
    m = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    subgraphs = m.subgraphs or []
    sigs = m.signatureDefs or []
    targets = sorted({s.subgraphIndex for s in sigs} or {0})
    plans = []
    for s in targets:
        if s >= len(subgraphs):
            raise ValueError(f"a signature def references subgraph {s} of {len(subgraphs)}")
        sg = subgraphs[s]
        ins = [i for i in dict.fromkeys(_ints(sg.inputs)) if _per_tensor_int(sg.tensors[i], types)]
        outs = [i for i in dict.fromkeys(_ints(sg.outputs)) if _per_tensor_int(sg.tensors[i], types)]
        if ins or outs:
            plans.append((s, sg, ins, outs))
    if not plans:
        return data

    payloads = [_payload(data, b) for b in m.buffers or []]
    if not payloads or payloads[0] is not None:  # buffer 0 is the schema's empty sentinel; make one if not
        payloads.append(None)
    empty = payloads.index(None)
    for s, sg, ins, outs in plans:
        in_map: dict[int, int] = {}
        out_map: dict[int, int] = {}
        front, back = [], []
        for i in ins + outs:
            t = sg.tensors[i]
            kind = types[t.type]
            f_idx = len(sg.tensors)
            sg.tensors.append(_float_twin(t, fb, empty))
            op = fb.OperatorT()
            if i in ins and i not in in_map:
                in_map[i] = f_idx
                op.opcodeIndex = _opcode(m, fb, fb.BuiltinOperator.QUANTIZE, _IO_VERSIONS[kind][0])
                op.inputs, op.outputs = np.array([f_idx], np.int32), np.array([i], np.int32)
                op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.QuantizeOptions, fb.QuantizeOptionsT()
                front.append(op)
            else:
                out_map[i] = f_idx
                op.opcodeIndex = _opcode(m, fb, fb.BuiltinOperator.DEQUANTIZE, _IO_VERSIONS[kind][1])
                op.inputs, op.outputs = np.array([i], np.int32), np.array([f_idx], np.int32)
                op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.DequantizeOptions, fb.DequantizeOptionsT()
                back.append(op)
        for i in set(in_map) | set(out_map):  # the float tensors take the names; the integer ones get a suffix
            t = sg.tensors[i]
            if t.name:
                t.name = (t.name.decode() if isinstance(t.name, bytes) else t.name) + "_" + types[t.type].lower()
        sg.operators = front + list(sg.operators or []) + back
        sg.inputs = np.array([in_map.get(i, i) for i in _ints(sg.inputs)], np.int32)
        sg.outputs = np.array([out_map.get(i, i) for i in _ints(sg.outputs)], np.int32)
        for sig in sigs:
            if sig.subgraphIndex == s:
                for tm in sig.inputs or []:
                    tm.tensorIndex = in_map.get(tm.tensorIndex, tm.tensorIndex)
                for tm in sig.outputs or []:
                    tm.tensorIndex = out_map.get(tm.tensorIndex, tm.tensorIndex)

    m.buffers = [_AlignedBuffer(p, fb) for p in payloads]
    for sg in subgraphs:
        for t in sg.tensors or []:
            if t.quantization is not None:
                t.quantization = _Shared(t.quantization)
        for op in sg.operators or []:
            custom = _external(data, op.largeCustomOptionsOffset, op.largeCustomOptionsSize)
            if custom is not None:  # custom options stored past the flatbuffer, whose offsets move
                op.customOptions, op.largeCustomOptionsOffset, op.largeCustomOptionsSize = custom, 0, 0
    # written as strip_redundant writes (equal vectors, strings and quantization tables once), so a
    # stripped model stays as small; unlike it, nothing is dropped
    return _serialize(m, len(data))


def _serialize(m: Any, size_hint: int) -> bytes:
    """The model object written inline, equal vectors, strings and tables once (both rewrites)."""
    builder = _SharingBuilder(size_hint + 4096)
    try:
        builder.Finish(m.Pack(builder), file_identifier=_IDENT)
    except flatbuffers.builder.BuilderSizeError:
        raise ValueError("the rewritten model would pass the 2 GiB limit of an inline flatbuffer") from None
    return bytes(builder.Output())
