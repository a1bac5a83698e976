"""LiteRT as a latency device: each op signature (or whole network) as its own tiny .tflite, timed
in the LiteRT interpreter with XNNPACK, the CPU path Android runs.

A layer's model is made exactly as an export is (the Flax module folded, then converted), so what
is timed here is what ``compile --emit tflite`` ships and what the on-phone kit runs with
``benchmark_model``. Weights are random: latency does not depend on their values.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Callable
from typing import Any

from ..lowering import Layer, LoweredNetwork

Invoke = Callable[[], None]


def _modules() -> tuple[Any, Any, Any]:
    from ..backends import flax as fb
    from ..backends import tflite as tl
    from ..backends.folded import fold

    return fb, tl, fold


def _folded(lowered: LoweredNetwork) -> Any:
    """The folded form of a network with random weights drawn in numpy (no XLA compile per op)."""
    from flax import nnx

    from .profile import _concrete

    fb, _, fold = _modules()
    graphdef, state = _concrete(lambda: fb.build(lowered, rngs=nnx.Rngs(0)))
    return fold(nnx.merge(graphdef, state))


def _one_layer_network(layer: Layer, lowered: LoweredNetwork | None) -> LoweredNetwork:
    from .profile import _classifier_of

    base = lowered or LoweredNetwork("op", layer.in_shape, 1, 0.0, 0.99, 1e-3, "same", ())
    if layer.kind == "classifier":
        return base._replace(input_shape=layer.in_shape, classes=layer.out_shape[2], dropout=0.0, layers=(layer,))
    return base._replace(input_shape=layer.in_shape, classes=1, dropout=0.0,
                         layers=(layer, _classifier_of(layer.out_shape, 1)))


def layer_tflite(layer: Layer, lowered: LoweredNetwork | None = None, *, batch: int = 1) -> bytes:
    """One lowered layer alone as a float32 .tflite (input: the layer's input shape)."""
    _, tl, _ = _modules()
    net = _folded(_one_layer_network(layer, lowered))
    if layer.kind == "classifier":
        fn = tl.forward_fn(net, [], classifier=True)
    else:
        fn = tl.forward_fn(net, net.layers[:1], classifier=False)
    return tl.convert_fn(fn, (batch, *layer.in_shape))


def network_tflite(lowered: LoweredNetwork, *, batch: int = 1) -> bytes:
    _, tl, _ = _modules()
    return tl.convert(_folded(lowered), batch)


def invoker(data: bytes, threads: int = 1, name: str = "<op>") -> Invoke:
    _, tl, _ = _modules()
    return tl.load(data, threads=threads, name=name).invoker()


def prepare_layer(layer: Layer, lowered: LoweredNetwork | None = None, *, batch: int = 1,
                  threads: int = 1) -> Invoke:
    return invoker(layer_tflite(layer, lowered, batch=batch), threads, layer.name)


def prepare_network(lowered: LoweredNetwork, *, batch: int = 1, threads: int = 1) -> Invoke:
    return invoker(network_tflite(lowered, batch=batch), threads, lowered.name)


def trivial_invoker(threads: int = 1) -> Invoke:
    """A model doing almost nothing: its time is the fixed cost of one invoke from Python."""
    import jax.numpy as jnp

    _, tl, _ = _modules()
    return invoker(tl.convert_fn(lambda x: jnp.maximum(x, 0.0), (1, 1, 1, 8)), threads, "trivial")


def device_info(threads: int) -> dict[str, Any]:
    _, tl, _ = _modules()
    return {"platform": "litert", "device_kind": f"LiteRT XNNPACK CPU ({_platform.machine()})",
            "host": _platform.node(), "cpu": _cpu_model(), "runtime_version": tl.runtime_version(),
            "converter": tl.converter_version(), "delegate": "XNNPACK", "threads": threads}


def runtime_name(threads: int) -> str:
    _, tl, _ = _modules()
    return f"LiteRT {tl.runtime_version().split()[-1]} XNNPACK, {threads} thread{'s' if threads != 1 else ''}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine()
