"""TFLite / LiteRT backend: the folded network as a LiteRT flatbuffer, and the LiteRT interpreter.

The path is JAX → StableHLO (``jax.export``) → ``litert-converter``'s TFL passes → flatbuffer, with
no TensorFlow. The exported function is written so that each piece maps onto one builtin kernel:
convs (BN already folded, see :mod:`mnasdsl.backends.folded`) with explicit pads become CONV_2D /
DEPTHWISE_CONV_2D with their ReLU/ReLU6 fused, SE is MEAN → FULLY_CONNECTED → LOGISTIC → MUL, the
pool skip AVERAGE_POOL_2D. Post-training quantization (fp16 weights, full-integer int8) goes
through ``ai-edge-quantizer``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import MnasError
from .folded import FoldedConv, FoldedLayer, FoldedNetwork, FoldedPool, FoldedSE
from .tflite_flatbuffer import float_io, strip_redundant

SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
QUANTIZE = ("none", "fp16", "int8")


def non_builtin(census: dict[str, int]) -> list[str]:
    """Ops of a census that a stock phone runtime does not run: Flex (TensorFlow) kernels, custom
    ops, and raw StableHLO ops (new builtins that XNNPACK and older runtimes lack)."""
    return sorted(k for k in census if k.startswith(("Flex", "STABLEHLO_")) or k in ("CUSTOM", "DELEGATE")
                  or not k.isupper())


def _deps() -> tuple[Any, Any, Any]:
    try:
        with _quiet_fd2():
            from litert_converter import converter_api_ext
            from litert_converter.mlir import ir, passmanager
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MnasError(f"TFLite export needs litert-converter ({e}); pip install 'mnasdsl[litert]'") from None
    return converter_api_ext, ir, passmanager


def converter_version() -> str:
    try:
        import litert_converter

        return f"litert-converter {litert_converter.__version__}"
    except ImportError:  # pragma: no cover
        return "litert-converter (not installed)"


def runtime_version() -> str:
    try:
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')}"
    except Exception:  # noqa: BLE001 - metadata lookups fail in odd installs; the name still helps
        return "ai-edge-litert"


# --- the exported function -------------------------------------------------------------------------

def _act(x: Any, act: str) -> Any:
    import jax
    import jax.numpy as jnp

    if act == "relu":
        return jax.nn.relu(x)
    if act == "relu6":
        return jnp.clip(x, 0.0, 6.0)
    if act == "swish":
        return x * jax.nn.sigmoid(x)
    if act == "hswish":
        return x * jnp.clip(x + 3.0, 0.0, 6.0) * (1.0 / 6.0)
    if act == "none":
        return x
    raise MnasError(f"activation {act!r} has no TFLite lowering")


def _conv(x: Any, c: FoldedConv) -> Any:
    from jax import lax

    y = lax.conv_general_dilated(x, c.kernel, c.stride, c.pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=c.groups)
    return _act(y + c.bias, c.act)


def _se(x: Any, s: FoldedSE) -> Any:
    import jax
    import jax.numpy as jnp

    m = jnp.mean(x, axis=(1, 2))
    m = _act(m @ s.reduce_kernel + s.reduce_bias, s.act)
    g = m @ s.expand_kernel + s.expand_bias
    # hard sigmoid as relu6(x + 3) / 6: ADD, RELU6 and MUL, kernels every LiteRT runtime has
    g = jax.nn.sigmoid(g) if s.gate == "sigmoid" else jnp.clip(g + 3.0, 0.0, 6.0) * (1.0 / 6.0)
    return x * g[:, None, None, :]


def _avg_pool(x: Any, stride: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]]) -> Any:
    """Window = stride, SAME, averaging valid pixels only. Unpadded: one AVERAGE_POOL_2D. Padded
    (odd sizes): PAD with zeros, a VALID AVERAGE_POOL_2D, then a constant per-position MUL that
    rescales border windows from s*s to their count of valid pixels; all three are kernels every
    LiteRT runtime has (a padded reduce_window would become STABLEHLO_REDUCE_WINDOW instead)."""
    import jax.numpy as jnp
    from jax import lax

    if stride == (1, 1):
        return x
    window = (1, stride[0], stride[1], 1)
    area = stride[0] * stride[1]
    if pads != ((0, 0), (0, 0)):
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    # Divided, not multiplied by 1/area: the converter recognizes only sum / count as a pool.
    y = lax.reduce_window(x, 0.0, lax.add, window, window, "VALID") / float(area)
    if pads == ((0, 0), (0, 0)):
        return y
    h, w = x.shape[1] - sum(pads[0]), x.shape[2] - sum(pads[1])
    ones = np.pad(np.ones((h, w), np.float32), pads)
    ho, wo = ones.shape[0] // stride[0], ones.shape[1] // stride[1]
    counts = ones[: ho * stride[0], : wo * stride[1]].reshape(ho, stride[0], wo, stride[1]).sum(axis=(1, 3))
    return y * jnp.asarray((area / counts)[None, :, :, None], jnp.float32)


def layer_forward(fl: FoldedLayer, x: Any) -> Any:
    y = x
    for op in fl.ops:
        if isinstance(op, FoldedPool):
            import jax.numpy as jnp

            y = jnp.mean(y, axis=(1, 2), keepdims=True)
        else:
            y = _conv(y, op) if isinstance(op, FoldedConv) else _se(y, op)
    if fl.skip == "identity":
        y = y + x
    elif fl.skip == "pool":
        s = _avg_pool(x, fl.pool_stride, fl.pool_pads)
        if fl.pool_proj is not None:
            s = _conv(s, fl.pool_proj)
        y = y + s
    return y


def classifier_forward(net: FoldedNetwork, x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.mean(x, axis=(1, 2)) @ net.classifier_kernel + net.classifier_bias


def forward_fn(net: FoldedNetwork, layers: Sequence[FoldedLayer] | None = None,
               classifier: bool = True) -> Callable[[Any], Any]:
    """``images -> logits`` (or a slice of the network) with the weights as constants."""
    chosen = tuple(net.layers if layers is None else layers)

    def f(x: Any) -> Any:
        for fl in chosen:
            x = layer_forward(fl, x)
        return classifier_forward(net, x) if classifier else x

    return f


# --- conversion ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """The converter and interpreter log to fd 2 from C++ (absl INFO lines); keep the CLI's stderr
    for our own messages. MNASDSL_DEBUG=1 lets them through."""
    if os.environ.get("MNASDSL_DEBUG"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:  # no real fd 2 (embedded use)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def convert_fn(fn: Callable[[Any], Any], input_shape: tuple[int, ...], *, input_name: str = INPUT_NAME,
               output_name: str = OUTPUT_NAME) -> bytes:
    """Trace ``fn`` on a float32 input of ``input_shape`` and convert it to a TFLite flatbuffer."""
    import jax
    import jax.numpy as jnp

    ce, ir, passmanager = _deps()
    spec = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    exported = jax.export.export(jax.jit(fn), platforms=["cpu"])(spec)
    text = exported.mlir_module()
    with _quiet_fd2():
        ctx = ir.Context()
        ce.prepare_mlir_context(ctx)
        with ctx, ir.Location.unknown():
            module = ir.Module.parse(text)
            ce.set_signature(module.operation, SIGNATURE, [input_name], [output_name])
            ce.run_convert_to_tfl_passes(module, passmanager.PassManager(), ce.ConvertToTFLConfig())
            return bytes(ce.export_flatbuffer_to_bytes(module.operation))


def convert(net: FoldedNetwork, batch: int = 1) -> bytes:
    """The whole network as a float32 TFLite model (signature ``serving_default``: images → logits).

    A conversion failure or a non-builtin op is traced to the first layer that causes it."""
    shape = (batch, *net.input_shape)
    try:
        data = convert_fn(forward_fn(net), shape)
    except MnasError:
        raise
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        _blame_layer(net, batch, e)
        raise MnasError(f"{net.lowered.name}: TFLite conversion failed: {_first_line(e)}") from None
    bad = non_builtin(op_census(data))
    if bad:
        _blame_layer(net, batch, None)
        raise MnasError(f"{net.lowered.name}: the TFLite model needs non-builtin ops {bad}")
    return data


# Inputs a LiteRT kernel may go without (-1 in the flatbuffer): the bias of the convolutions and of the
# fully connected layer. The kernels dereference any other absent input unchecked: a damaged file with one
# crashes the interpreter (SIGSEGV) instead of failing to prepare.
_OPTIONAL_INPUTS = {"CONV_2D": {2}, "DEPTHWISE_CONV_2D": {2}, "FULLY_CONNECTED": {2}, "TRANSPOSE_CONV": {3}}


def _missing_input(interp: Any) -> str | None:
    """The first operator lacking an input its kernel needs, described; None when there is none."""
    for d in interp._get_ops_details():  # noqa: SLF001 - the only op listing the wheel has
        for i, t in enumerate(d["inputs"]):
            if t < 0 and i not in _OPTIONAL_INPUTS.get(d["op_name"], ()):
                return f"operator {d['index']} ({d['op_name']}) lacks its input {i}"
    return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _blame_layer(net: FoldedNetwork, batch: int, err: BaseException | None) -> None:
    """Convert layer by layer; raise naming the first one that fails or needs non-builtin ops."""
    from .folded import FoldedLayer as _FL  # noqa: F401 - documents the element type

    for fl in net.layers:
        try:
            data = convert_fn(forward_fn(net, [fl], classifier=False), (batch, *fl.layer.in_shape))
        except Exception as e:  # noqa: BLE001
            raise MnasError(f"layer {fl.layer.name} ({fl.layer.op}, k{fl.layer.kernel}, act {fl.layer.act}) cannot "
                            f"be converted to TFLite: {_first_line(e)}") from None
        bad = non_builtin(op_census(data))
        if bad:
            raise MnasError(f"layer {fl.layer.name} ({fl.layer.op}, act {fl.layer.act}) needs non-builtin TFLite "
                            f"ops {bad}")


# --- quantization ----------------------------------------------------------------------------------

def _optional(module: str, attr: str, what: str) -> Any:
    """An attribute of an optional dependency, imported quietly (its C++ logs to fd 2 on import)."""
    import importlib

    try:
        with _quiet_fd2():
            return getattr(importlib.import_module(module), attr)
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MnasError(f"{what} needs {module.split('.')[0].replace('_', '-')} ({e}); "
                        "pip install 'mnasdsl[litert]'") from None


def _quantizer() -> Any:
    return _optional("ai_edge_quantizer.quantizer", "Quantizer", "--quantize")


FP16_RECIPE = [{
    "regex": ".*", "operation": "*", "algorithm_key": "float_casting",
    "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"}, "compute_precision": "FLOAT",
                  "explicit_dequantize": True, "skip_checks": False, "min_weight_elements": 0},
}]
def _int8_entry(operation: str, weight_granularity: str) -> dict[str, Any]:
    return {"regex": ".*", "operation": operation, "algorithm_key": "min_max_uniform_quantize",
            "op_config": {"activation_tensor_config": {"num_bits": 8, "symmetric": False,
                                                       "granularity": "TENSORWISE", "dtype": "INT"},
                          "weight_tensor_config": {"num_bits": 8, "symmetric": True,
                                                   "granularity": weight_granularity, "dtype": "INT"},
                          "compute_precision": "INTEGER", "explicit_dequantize": False, "skip_checks": False,
                          "min_weight_elements": 0}}


# Conv weights per channel; the SE layers' small dense weights per tensor: per-channel parameters (a
# float scale and an int64 zero point per output) would cost more bytes there than the weights.
INT8_RECIPE = [_int8_entry("*", "CHANNELWISE"), _int8_entry("FULLY_CONNECTED", "TENSORWISE")]


def quantize_fp16(data: bytes, *, strip: bool = True) -> bytes:
    """Weights stored as float16 (dequantized once at load); activations stay float32."""
    q = _quantizer()
    with _quiet_fd2(), contextlib.redirect_stdout(io.StringIO()):
        qt = q(bytearray(data), FP16_RECIPE)
        out = bytes(qt.quantize(enable_progress_report=False).quantized_model)
    return strip_redundant(out) if strip else out


def quantize_int8(data: bytes, calibration: Iterable[np.ndarray], *, strip: bool = True,
                  io_type: str = "float") -> bytes:
    """Full-integer static quantization: int8 weights (per channel) and int8 activations (per
    tensor, ranges from ``calibration`` batches of float32 NHWC images already normalized).
    ``io_type`` ``float`` wraps the integer graph in QUANTIZE/DEQUANTIZE (what apps feed); ``int8`` leaves
    int8 input and output (what NNAPI, the Edge TPU and microcontrollers take)."""
    if io_type not in ("float", "int8"):
        raise MnasError(f"unknown int8 I/O {io_type!r} (expected float or int8)")
    q = _quantizer()
    samples = [{INPUT_NAME: np.asarray(x, np.float32)} for x in calibration]
    if not samples:
        raise MnasError("int8 quantization needs at least one calibration batch")
    with _quiet_fd2(), contextlib.redirect_stdout(io.StringIO()):
        qt = q(bytearray(data), INT8_RECIPE)
        result = qt.calibrate({SIGNATURE: samples}, num_threads=1)
        out = bytes(qt.quantize(result, enable_progress_report=False).quantized_model)
    if io_type == "float":
        out = float_io(out)
    return strip_redundant(out) if strip else out


# --- the interpreter -------------------------------------------------------------------------------

def _interpreter_cls() -> Any:
    return _optional("ai_edge_litert.interpreter", "Interpreter", "running .tflite models")


@dataclass
class LiteRTModel:
    """One loaded model: ``run(x)`` maps a float32 NHWC batch to the model's output."""

    interpreter: Any
    runner: Any
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]
    input_dtype: Any
    source: str
    content: bytes
    threads: int

    def run(self, x: np.ndarray) -> np.ndarray:
        """Float32 in, float32 out, whatever the model's I/O types: an integer (full-int8) model's
        input is quantized and its output dequantized with the scales stored in the model."""
        if tuple(x.shape) != self.input_shape:
            raise MnasError(f"{self.source}: expects input {list(self.input_shape)}, got {list(x.shape)}")
        try:  # a damaged file can load, then fail to allocate, to invoke, or to name its tensors
            x = _quantize_io(np.asarray(x, np.float32), self.runner.get_input_details()[self.input_name])
            with _quiet_fd2():  # the first call creates the XNNPACK delegate, which logs from C++
                out = self.runner(**{self.input_name: x})
            y = np.array(out[self.output_name], copy=True)
            return _dequantize_io(y, self.runner.get_output_details()[self.output_name])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # TypeError: pybind11 on a bad tensor index
            raise MnasError(f"{self.source}: the TFLite model does not run: {_first_line(e)}") from None

    def invoker(self) -> Callable[[], None]:
        """A zero-argument call running one inference on a fixed random input, in an interpreter of
        its own (no signature-runner bookkeeping in the timed path): the profiling unit of work."""
        with _quiet_fd2():
            interp = _interpreter_cls()(model_content=self.content, num_threads=self.threads)
            interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        x = np.random.default_rng(0).standard_normal(tuple(detail["shape"])).astype(detail["dtype"])
        interp.set_tensor(detail["index"], x)
        return interp.invoke

    def ops(self) -> dict[str, int]:
        return _census_of(self.interpreter)


def _qparams(detail: dict[str, Any]) -> tuple[float, int]:
    q = detail.get("quantization_parameters") or {}
    scales, zeros = q.get("scales", ()), q.get("zero_points", ())
    if len(scales):
        return float(scales[0]), int(zeros[0])
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)


def _quantize_io(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dt = np.dtype(detail["dtype"])
    if dt.kind == "f":
        return np.ascontiguousarray(x, dt)
    scale, zero = _qparams(detail)
    if scale <= 0:
        raise MnasError(f"integer model input without quantization parameters ({dt.name})")
    info = np.iinfo(dt)
    # x * (1/scale), rounded half to even: the arithmetic of LiteRT's own QUANTIZE kernel, so a
    # float-I/O model and this runner give the same int8 input.
    q = np.round(x * (np.float32(1.0) / np.float32(scale))) + zero
    return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(dt))


def _dequantize_io(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32)
    scale, zero = _qparams(detail)
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def load(model: bytes | str | os.PathLike[str], *, threads: int = 1, name: str | None = None) -> LiteRTModel:
    """Load a .tflite file (or bytes) into the LiteRT interpreter with XNNPACK at ``threads`` threads.
    A corrupt or foreign file is a MnasError naming it, never an interpreter crash."""
    interp_cls = _interpreter_cls()
    if isinstance(model, (bytes, bytearray)):
        source, content = name or "<tflite>", bytes(model)
    else:
        source = str(model)
        try:
            content = Path(model).read_bytes()
        except FileNotFoundError:
            raise MnasError(f"{source}: no such file") from None
        except IsADirectoryError:
            raise MnasError(f"{source}: is a directory, not a .tflite file") from None
        except OSError as e:
            raise MnasError(f"{source}: cannot read: {e.strerror or e}") from None
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise MnasError(f"{source}: not a TFLite model (no TFL3 flatbuffer identifier)")
    try:
        with _quiet_fd2():
            interp = interp_cls(model_content=content, num_threads=threads)
            sigs = interp.get_signature_list()
            missing = _missing_input(interp)
    except Exception as e:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError on bad flatbuffers
        raise MnasError(f"{source}: not a loadable TFLite model: {_first_line(e)}") from None
    if missing:
        raise MnasError(f"{source}: not a loadable TFLite model: {missing}")
    if SIGNATURE not in sigs:
        raise MnasError(f"{source}: no `{SIGNATURE}` signature (has {sorted(sigs) or 'none'}); not a mnasdsl export")
    ins, outs = sigs[SIGNATURE]["inputs"], sigs[SIGNATURE]["outputs"]
    if list(ins) != [INPUT_NAME] or list(outs) != [OUTPUT_NAME]:
        raise MnasError(f"{source}: not a mnasdsl export: signature `{SIGNATURE}` maps {list(ins)} -> {list(outs)}, "
                        f"expected [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}]")
    try:
        runner = interp.get_signature_runner(SIGNATURE)
        detail = runner.get_input_details()[ins[0]]
    except Exception as e:  # noqa: BLE001
        raise MnasError(f"{source}: cannot prepare the TFLite model: {_first_line(e)}") from None
    shape = tuple(int(d) for d in detail["shape"])
    if len(shape) != 4:
        raise MnasError(f"{source}: input {ins[0]!r} is {list(shape)}, not an NHWC image batch")
    return LiteRTModel(interp, runner, ins[0], outs[0], shape, detail["dtype"], source, content, threads)


def _census_of(interp: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in interp._get_ops_details():  # noqa: SLF001 - the only public-ish op listing the wheel has
        out[d["op_name"]] = out.get(d["op_name"], 0) + 1
    return out


def op_census(data: bytes) -> dict[str, int]:
    """How many of each TFLite op a flatbuffer holds (in graph order, counted by name)."""
    with _quiet_fd2():
        interp = _interpreter_cls()(model_content=data, num_threads=1)
    return _census_of(interp)


def weight_dtypes(data: bytes) -> dict[str, int]:
    """Bytes of constant tensors by dtype: how a quantized file stores its weights."""
    with _quiet_fd2():
        interp = _interpreter_cls()(model_content=data, num_threads=1)
    out: dict[str, int] = {}
    for t in interp.get_tensor_details():
        try:
            a = interp.get_tensor(t["index"])
        except ValueError:  # activations have no data before invoke
            continue
        if a.size > 1:
            key = np.dtype(t["dtype"]).name
            out[key] = out.get(key, 0) + a.nbytes
    return out


def time_model(m: LiteRTModel, *, repeats: int = 20, warmup: int = 3) -> list[float]:
    """Per-inference milliseconds of ``repeats`` invocations after ``warmup`` ones."""
    invoke = m.invoker()
    for _ in range(warmup):
        invoke()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        invoke()
        out.append((time.perf_counter() - t0) * 1e3)
    return out
