"""Deployment artifacts from the CLI: `compile --emit tflite|onnx`, and running exported models.

The backends turn a Flax model into bytes; this module adds what a user needs around them: the
model card (preprocessing and class names), calibration data for int8, a parity check against the
Flax forward, and loading an exported file back for `predict`/`eval`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import MnasError
from ..fsutil import atomic_write_files
from .common import UsageError, print_json

RUNTIMES = ("xla", "litert")
EXPORT_SUFFIXES = {".tflite": "litert", ".onnx": "onnx"}


def exported_kind(path: str) -> str | None:
    """``litert``/``onnx`` when ``path`` names an exported model file rather than a spec."""
    return EXPORT_SUFFIXES.get(Path(path).suffix.lower())


def class_names(ckpt: str | None, classes: int) -> tuple[str, ...]:
    if ckpt is not None:
        from ..train.checkpoint import find_meta

        meta = find_meta(ckpt)
        if meta is not None and len(meta.get("classes", ())) == classes:
            return tuple(str(c) for c in meta["classes"])
    from ..labels import default_names

    return default_names(classes)


def preprocess_for(lowered: Any, ckpt: str | None = None) -> Any:
    """The card's preprocessing: what the checkpoint records (an import's published crop and its
    TF-style 127/128, a training run's own), else mnasdsl's defaults."""
    from ..train.checkpoint import load_preprocess

    h, w, c = lowered.input_shape
    return load_preprocess(ckpt, (h, w), c)


def calibration_batches(source: str, size: int, batch: int, lowered: Any,
                        ckpt: str | None = None) -> Iterator[np.ndarray]:
    """``size`` images of SOURCE's training split with the eval transform, normalized as the model
    expects, in batches of the model's batch size (the last one padded by repeating images)."""
    from ..train import open_source
    from ..train.data import Loader

    src = open_source(source)
    h, w, c = lowered.input_shape
    pre = preprocess_for(lowered, ckpt)
    mean, std = pre.norm
    loader = Loader(src.train, batch=batch, size=(h, w), channels=c, train=False, workers=2,
                    limit=-(-size // batch), crop=pre.crop if src.fixed_crop is None else src.fixed_crop)
    seen = 0
    for b in loader:
        imgs = b.images[b.mask > 0]
        if not len(imgs):
            continue
        imgs = imgs[: size - seen]
        seen += len(imgs)
        if len(imgs) < batch:
            imgs = imgs[np.arange(batch) % len(imgs)]
        yield ((imgs.astype(np.float32) - mean) / std).astype(np.float32)
        if seen >= size:
            return
    if seen == 0:
        raise MnasError(f"{source}: no readable calibration images")


def emit_deployable(args: argparse.Namespace, model: Any, weights: str) -> int:
    """`compile --emit tflite|onnx`: write the model and its card, print what was written."""
    import jax.numpy as jnp

    from ..backends import artifact
    from ..backends.folded import fold

    low = model.lowered
    h, w, c = low.input_shape
    ext = ".tflite" if args.emit == "tflite" else ".onnx"
    out = Path(args.output or f"{low.name}{ext}")
    if out.exists() and out.is_dir():
        raise MnasError(f"{out}: is a directory; give -o a file name")
    from ..backends.flax import inference_fn

    folded = fold(model)
    info: dict[str, Any] = {"output": str(out), "format": args.emit, "quantize": args.quantize,
                            "input": [args.batch, h, w, c], "output_shape": [args.batch, low.classes],
                            "weights": weights}
    x = np.random.default_rng(0).standard_normal((args.batch, h, w, c)).astype(np.float32)
    cal: list[np.ndarray] = []
    if args.quantize == "int8":  # int8 ranges fit the calibration data: compare on it, not on noise
        cal = list(calibration_batches(args.calibration, args.calibration_size, args.batch, low, args.ckpt))
        x = cal[0]
    ref = np.asarray(inference_fn(model)(jnp.asarray(x)))  # jitted: eager nnx compiles op by op
    t0 = time.perf_counter()
    if args.emit == "tflite":
        from ..backends import tflite

        data = tflite.convert(folded, args.batch)
        if args.quantize == "fp16":
            data = tflite.quantize_fp16(data)
        elif args.quantize == "int8":
            data = tflite.quantize_int8(data, cal, io_type=args.io or "float")
            info["io"] = args.io or "float"
        info["convert_s"] = round(time.perf_counter() - t0, 3)
        m = tflite.load(data, threads=1, name=str(out))
        info["ops"] = m.ops()
        got = m.run(x)
        info["litert_ms"] = round(float(np.median(tflite.time_model(m, repeats=20, warmup=3))), 4)
        info["converter"] = tflite.converter_version()
        runtime = "litert"
    else:
        from ..backends import onnx_export

        data = onnx_export.to_onnx(folded, batch=args.batch)
        info["convert_s"] = round(time.perf_counter() - t0, 3)
        om = onnx_export.load_onnx(data, intra_op_num_threads=1, name=str(out))
        info["ops"] = om.ops()
        got = om.run(x)
        runtime = "onnx"
    diff = float(np.max(np.abs(got.astype(np.float32) - ref)))
    if args.quantize == "none":
        info["max_abs_diff"] = diff
    else:
        info["max_rel_diff"] = diff / max(float(np.max(np.abs(ref))), 1e-12)
    info["bytes"] = len(data)
    from ..formatter import format as format_ir

    card = artifact.ModelCard(network=low.name, runtime=runtime, input=(args.batch, h, w, c),
                              classes=class_names(args.ckpt, low.classes), preprocess=preprocess_for(low, args.ckpt),
                              quantize=args.quantize, weights=weights, spec=_spec_text(args, format_ir))
    # the model and its card are one unit: both land or neither does (a model beside a stale card
    # would be fed the wrong crop or normalization without any error)
    atomic_write_files({out: data, artifact.card_path(out): artifact.dumps(card).encode("utf-8")})
    info["card"] = str(artifact.card_path(out))
    if args.json:
        print_json(info)
        return 0
    ops = ", ".join(f"{k} {v}" for k, v in sorted(info["ops"].items(), key=lambda kv: -kv[1]))
    parity = (f"max |diff| vs Flax {info['max_abs_diff']:.2e}" if "max_abs_diff" in info
              else f"max relative diff vs Flax {info['max_rel_diff']:.2e} ({args.quantize})")
    sys.stdout.write(f"wrote {out} ({len(data):,} bytes, {args.emit}"
                     f"{'' if args.quantize == 'none' else ', ' + args.quantize}) and {info['card']}\n"
                     f"input float32[{args.batch},{h},{w},{c}] -> logits [{args.batch},{low.classes}]; {parity}\n"
                     f"ops: {ops}\n")
    if "litert_ms" in info:
        sys.stdout.write(f"LiteRT (XNNPACK, 1 thread) {info['litert_ms']:.2f} ms per batch here; "
                         f"converted in {info['convert_s']:.2f} s\n")
    sys.stdout.write(f"weights: {weights}\n")
    return 0


def _spec_text(args: argparse.Namespace, format_ir: Any) -> str:
    from .common import load_network

    try:
        return str(format_ir(load_network(args)))
    except Exception:  # noqa: BLE001 - the card's spec is informational
        return ""


# --- running exported models ----------------------------------------------------------------------

class Exported:
    """An exported .tflite/.onnx with its card: ``logits(images_uint8)`` does the preprocessing."""

    def __init__(self, path: str, threads: int = 1) -> None:
        from ..backends import artifact

        kind = exported_kind(path)
        if kind is None:
            raise UsageError(f"{path}: not a .tflite or .onnx file")
        if kind == "litert":
            from ..backends import tflite

            self.model: Any = tflite.load(path, threads=threads)
        else:
            from ..backends import onnx_export

            self.model = onnx_export.load_onnx(path, intra_op_num_threads=threads)
        self.path = path
        card = artifact.read_card(path)
        if kind == "onnx":
            n, (h, w, c) = self.model.batch or 32, self.model.input_shape
        else:
            n, h, w, c = self.model.input_shape
        if card is None:
            from ..preprocess import default

            pre = default((h, w), c)
            sys.stderr.write(f"warning: {artifact.card_path(path)} not found; assuming ImageNet normalization, "
                             f"crop {pre.crop} and numbered classes\n")
            self.classes: tuple[str, ...] | None = None
            self.name = Path(path).stem
        else:
            pre = card.preprocess
            if pre.size != (h, w) or pre.channels != c:
                raise MnasError(f"{artifact.card_path(path)}: describes a {pre.size[0]}x{pre.size[1]}x"
                                f"{pre.channels} input, the model takes {h}x{w}x{c}")
            outputs = self._outputs(kind)
            if outputs is not None and len(card.classes) != outputs:
                raise MnasError(f"{artifact.card_path(path)}: invalid model card: classes names "
                                f"{len(card.classes)} classes, the model outputs {outputs}")
            self.classes = card.classes
            self.name = card.network
        self.mean, self.std = pre.norm
        self.crop = pre.crop
        self.batch, self.size, self.channels = n, (h, w), c

    def _outputs(self, kind: str) -> int | None:
        """The model's class count, from its own output shape."""
        if kind == "onnx":
            return int(self.model.classes) or None
        try:
            shape = self.model.interpreter.get_output_details()[0]["shape"]
            return int(shape[-1]) if len(shape) == 2 else None
        except (AttributeError, IndexError, KeyError, TypeError):
            return None

    def logits(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) → float32 logits (N, classes), run in the model's fixed batch size."""
        x = (images.astype(np.float32) - self.mean) / self.std
        outs = []
        for i in range(0, len(x), self.batch):
            chunk = x[i:i + self.batch]
            k = len(chunk)
            if k < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - k, *chunk.shape[1:]), np.float32)])
            outs.append(self.model.run(chunk)[:k])
        return np.concatenate(outs).astype(np.float32)
