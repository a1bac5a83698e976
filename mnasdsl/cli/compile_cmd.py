"""`mnasdsl compile`: lower a network to a backend, summarize it or emit a deployable artifact."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..cost import cost_lowered
from ..diagnostics import MnasError
from ..lowering import lower
from .common import (
    UsageError,
    add_network_args,
    atomic_write_bytes,
    atomic_write_text,
    cost_table,
    enable_compilation_cache,
    human_count,
    load_network,
    positive_int,
    print_json,
    shape_text,
    stdout_console,
)

BACKENDS = ("flax",)
EMITS = ("summary", "stablehlo", "tflite", "onnx")
QUANTIZE = ("none", "fp16", "int8")
PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu")
DTYPES = ("float32", "bfloat16")


def register(sub: Any) -> None:
    p = sub.add_parser("compile", help="compile a network with a backend (summary or StableHLO artifact)",
                       description="Lower a network to flax.nnx modules run by XLA. `summary` prints the layer "
                                   "table, XLA compile time and measured latency; `stablehlo` writes a jax.export "
                                   "artifact with the weights embedded, loadable without mnasdsl.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--backend", default="flax", metavar="NAME", help="backend (only: flax; the default)")
    p.add_argument("--emit", default="summary", metavar="KIND",
                   help="summary (default), stablehlo, tflite (LiteRT flatbuffer) or onnx")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file (default NAME.stablehlo / NAME.tflite / NAME.onnx; summary: instead of stdout)")
    p.add_argument("--quantize", default="none", metavar="Q",
                   help="tflite: none (float32, default), fp16 (float16 weights) or int8 (full-integer, needs "
                        "--calibration)")
    p.add_argument("--calibration", metavar="SOURCE",
                   help="int8: calibration images: an ImageFolder directory, `digits` or `synthetic`")
    p.add_argument("--calibration-size", type=positive_int, default=128, metavar="N",
                   help="int8: calibration images taken from SOURCE's training split (default 128)")
    p.add_argument("--io", default=None, metavar="T",
                   help="int8: the model's input/output type: float (QUANTIZE/DEQUANTIZE around the integer graph, "
                        "default) or int8 (for NNAPI, the Edge TPU, microcontrollers)")
    p.add_argument("--batch", type=positive_int, default=1, metavar="N", help="batch size (default 1)")
    p.add_argument("--platform", metavar="P[,P..]",
                   help="target platform(s): cpu, gpu (= cuda), rocm, tpu; several export one multi-platform "
                        "artifact (default: the current JAX backend)")
    p.add_argument("--dtype", default="float32", metavar="T", help="compute dtype: float32 (default) or bfloat16")
    p.add_argument("--ckpt", metavar="DIR", help="trained weights: a training output or --save-params directory")
    p.add_argument("--save-params", metavar="DIR", help="also write the variables as an Orbax checkpoint")
    p.add_argument("--repeats", type=positive_int, default=20, metavar="N",
                   help="timed forward passes for the summary's latency (median; default 20)")
    add_network_args(p)
    p.set_defaults(func=cmd_compile)


def _platforms(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise UsageError("--platform needs at least one of: " + ", ".join(PLATFORMS))
    bad = [n for n in names if n not in PLATFORMS]
    if bad:
        raise UsageError(f"unknown platform {bad[0]!r} (expected {', '.join(PLATFORMS)}, comma-separated)")
    return names


def cmd_compile(args: argparse.Namespace) -> int:
    if args.backend != "flax":
        raise UsageError(f"unknown backend {args.backend!r} (available: {', '.join(BACKENDS)})")
    if args.emit not in EMITS:
        raise UsageError(f"unknown --emit {args.emit!r} (expected {', '.join(EMITS)})")
    if args.quantize not in QUANTIZE:
        raise UsageError(f"unknown --quantize {args.quantize!r} (expected {', '.join(QUANTIZE)})")
    if args.quantize != "none" and args.emit != "tflite":
        raise UsageError("--quantize applies to --emit tflite")
    written = {".tflite": "tflite", ".onnx": "onnx", ".stablehlo": "stablehlo"}.get(
        Path(args.output).suffix.lower()) if args.output and args.emit != "summary" else None
    if written is not None and written != args.emit:  # `predict x.tflite` would hand ONNX bytes to LiteRT
        raise UsageError(f"-o {args.output}: a .{written} name for --emit {args.emit} output; "
                         f"name it .{'tflite' if args.emit == 'tflite' else args.emit} or change --emit")
    if args.quantize == "int8" and not args.calibration:
        raise UsageError("--quantize int8 needs --calibration SOURCE (an ImageFolder directory, digits or synthetic)")
    if args.calibration and args.quantize != "int8":
        raise UsageError("--calibration applies to --quantize int8")
    if args.io is not None and (args.quantize != "int8" or args.io not in ("float", "int8")):
        raise UsageError("--io float|int8 applies to --quantize int8")
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {args.dtype!r} (expected {' or '.join(DTYPES)})")
    platforms = _platforms(args.platform)
    if args.ckpt is not None and not Path(args.ckpt).is_dir():
        raise MnasError(f"{args.ckpt}: no such checkpoint directory")

    network = load_network(args)  # a broken spec raises the core's diagnostics here
    lowered = lower(network)

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..backends import flax as fb

    enable_compilation_cache()
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    # A summary runs here, so it is lowered for this device unless told otherwise.
    lowering_platform: Any = platforms if platforms else None
    if args.ckpt is not None:
        model = fb.load_params(lowered, args.ckpt, platform=lowering_platform, dtype=dtype)
        weights = f"trained ({fb.resolve_ckpt_dir(args.ckpt)})"
    else:
        model = fb.build(lowered, rngs=nnx.Rngs(0), platform=lowering_platform, dtype=dtype)
        weights = "freshly initialized (seed 0; pass --ckpt DIR for trained weights)"
    if args.save_params:
        saved = fb.save_params(model, args.save_params)
        sys.stderr.write(f"wrote parameters to {saved}\n")

    if args.emit == "stablehlo":
        return _emit_stablehlo(args, model, platforms or [jax.default_backend()], weights)
    if args.emit in ("tflite", "onnx"):
        from .deploy import emit_deployable

        return emit_deployable(args, model, weights)
    return _summary(args, model, lowered, weights)


def _emit_stablehlo(args: argparse.Namespace, model: Any, platforms: list[str], weights: str) -> int:
    from ..backends import flax as fb

    out = Path(args.output or f"{model.lowered.name}.stablehlo")
    t0 = time.perf_counter()
    data = fb.export_stablehlo(model, args.batch, platforms)
    export_s = time.perf_counter() - t0
    atomic_write_bytes(out, data)
    h, w, c = model.lowered.input_shape
    plats = fb.export_platforms(platforms)
    info = {"output": str(out), "bytes": len(data), "platforms": plats, "input": [args.batch, h, w, c],
            "input_dtype": "float32", "output_shape": [args.batch, model.lowered.classes], "weights": weights,
            "params": fb.count_params(model), "export_s": round(export_s, 3)}
    if args.json:
        print_json(info)
    else:
        sys.stdout.write(
            f"wrote {out} ({len(data):,} bytes): StableHLO for {', '.join(plats)}, input float32"
            f"[{args.batch},{h},{w},{c}] -> logits [{args.batch},{model.lowered.classes}]\n"
            f"weights: {weights}\n"
            f"load with: jax.export.deserialize(open({str(out)!r}, 'rb').read()).call(x)\n")
    return 0


def _summary(args: argparse.Namespace, model: Any, lowered: Any, weights: str) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ..backends import flax as fb

    host = jax.default_backend()
    targets = {"gpu" if p in ("cuda", "rocm") else p for p in _platforms(args.platform) or [host]}
    if host not in targets:  # it still runs here (the lowering differs, not the ops), but say whose times these are
        sys.stderr.write(f"note: lowered for --platform {args.platform}, but compiled and timed on this host's {host}: "
                         f"the compile time and forward latency reported are the {host}'s, not the target's\n")
    c = cost_lowered(lowered)
    h, w, ch = lowered.input_shape
    x = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch, h, w, ch)), jnp.float32)
    fn = fb.inference_fn(model)
    t0 = time.perf_counter()
    compiled = fn.lower(x).compile()
    compile_s = time.perf_counter() - t0
    compiled(x).block_until_ready()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        compiled(x).block_until_ready()
        times.append(time.perf_counter() - t)
    forward_ms = float(np.median(times) * 1e3)
    per_layer = model.layer_params()
    total = fb.count_params(model)
    device = str(jax.devices()[0])
    rows = [{"name": ly.name, "op": "pool+fc" if ly.kind == "classifier" else ly.op, "out": list(ly.out_shape),
             "params": p, "macs": lc.macs} for ly, p, lc in zip(lowered.layers, per_layer, c.layers)]
    if args.json:
        obj = {"name": lowered.name, "backend": "flax", "device": device, "batch": args.batch,
               "input": [args.batch, h, w, ch], "dtype": args.dtype, "weights": weights,
               "depthwise": sorted({m.impl for _, m in nnx_modules(model) if hasattr(m, "impl")}),
               "params": total, "macs": c.macs, "compile_s": round(compile_s, 4), "forward_ms": round(forward_ms, 4),
               "layers": rows}
        if args.output:
            import json

            atomic_write_text(args.output, json.dumps(obj, indent=2) + "\n")
        else:
            print_json(obj)
        return 0
    t = cost_table(f"{lowered.name} -> flax ({args.batch}x{h}x{w}x{ch}, {args.dtype})")
    for r in rows:
        t.add_row(r["name"], r["op"], shape_text(tuple(r["out"])), f"{r['params']:,}", f"{r['macs']:,}")
    t.add_section()
    t.add_row("total", "", "", f"{total:,}", f"{c.macs:,}")
    con = stdout_console()
    if args.output:
        con = _file_console()
    con.print(t)
    con.print(f"params {total:,}   MACs {human_count(c.macs)} per image   weights: {weights}")
    con.print(f"XLA compile {compile_s:.2f} s   forward {forward_ms:.2f} ms (median of {args.repeats}, "
              f"batch {args.batch}, {device})")
    if args.output:
        atomic_write_text(args.output, con.export_text())
    return 0


def nnx_modules(model: Any) -> Any:
    from flax import nnx

    return nnx.iter_modules(model)


def _file_console() -> Any:
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), record=True, width=120, soft_wrap=True, highlight=False)
