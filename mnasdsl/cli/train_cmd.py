"""Training commands: train, eval, predict (thin layers over :mod:`mnasdsl.train`)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..diagnostics import MnasError
from ..ir import Network
from .common import (
    UsageError,
    add_network_args,
    enable_compilation_cache,
    load_network,
    positive_float,
    positive_int,
    print_json,
    seed_arg,
)


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train a network on image data (optax; checkpointed, resumable)",
                       description="Train FILE's network on SOURCE: an ImageFolder directory, `digits` "
                                   "(scikit-learn's bundled handwritten digits) or `synthetic` (random, for speed).")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--data", required=True, metavar="SOURCE", help="ImageFolder directory, `digits` or `synthetic`")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (checkpoints, metrics, curves)")
    p.add_argument("--epochs", type=positive_int, default=10, metavar="N", help="epochs (default 10)")
    p.add_argument("--batch", type=positive_int, default=64, metavar="B", help="batch size (default 64)")
    p.add_argument("--recipe", choices=("adam", "mnasnet"), default="adam",
                   help="adam: AdamW + cosine (default); mnasnet: the paper's RMSProp recipe")
    p.add_argument("--lr", type=positive_float, metavar="LR", help="peak learning rate (default: the recipe's)")
    p.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="random seed (>= 0; default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR from its last completed epoch")
    p.add_argument("--init", metavar="DIR", help="start from these weights (an `import` output, params or training "
                                                 "directory); a new class count re-initializes the classifier")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--recalibrate-bn", dest="recal", action="store_true", default=None,
                   help="re-estimate BN statistics on training batches before evaluating "
                        "(default: runs under 5 epochs or 2,000 steps at BN momentum 0.99)")
    g.add_argument("--no-recalibrate-bn", dest="recal", action="store_false", help="never recalibrate")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the classifier: every other weight and BN statistic stays exactly as --init "
                        "gave it (BN in eval mode, no dropout); the usual first step on a small dataset")
    p.add_argument("--workers", type=positive_int, metavar="N", help="data loading threads (default: CPU count)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_network_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 accuracy of a trained checkpoint or an exported model on a dataset",
                       description="FILE is a spec (with --ckpt) or an exported .tflite/.onnx model, which runs in "
                                   "LiteRT/ONNX Runtime with the preprocessing recorded in its .json card.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--ckpt", metavar="DIR", help="training output (or params) directory (needed for a spec)")
    _add_runtime_args(p)
    p.add_argument("--data", required=True, metavar="SOURCE", help="ImageFolder directory, `digits` or `synthetic`")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split (default val)")
    p.add_argument("--batch", type=positive_int, default=128, metavar="B", help="batch size (default 128)")
    add_network_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-5 classes of images under a trained checkpoint or an exported model",
                       description="FILE is a spec (with --ckpt) or an exported .tflite/.onnx model, which runs in "
                                   "LiteRT/ONNX Runtime with the preprocessing recorded in its .json card.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--ckpt", metavar="DIR", help="training output (or params) directory (needed for a spec)")
    _add_runtime_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="classes shown per image (default 5)")
    add_network_args(p)
    p.set_defaults(func=cmd_predict)


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="xla", metavar="R",
                   help="with --ckpt: xla (the Flax model, default) or litert (converted to TFLite in memory and "
                        "run in the LiteRT interpreter, as a phone would)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="LiteRT/ONNX Runtime threads (default: all cores)")


def _check_runtime(args: argparse.Namespace) -> str | None:
    """Which exported-model engine runs FILE: None for the Flax path (a spec run by XLA)."""
    from .deploy import RUNTIMES, exported_kind

    if args.runtime not in RUNTIMES:
        raise UsageError(f"unknown --runtime {args.runtime!r} (expected {' or '.join(RUNTIMES)})")
    kind = exported_kind(args.file)
    if kind is not None:
        if args.ckpt is not None:
            raise UsageError(f"{args.file} is an exported model with its weights inside; --ckpt applies to specs")
        if args.runtime != "xla":
            raise UsageError("--runtime applies to a spec with --ckpt; an exported model runs in its own runtime")
        return kind
    if args.ckpt is None:
        raise UsageError(f"{args.file}: a spec needs --ckpt DIR (or give an exported .tflite/.onnx model)")
    return "litert" if args.runtime == "litert" else None


def _exported(args: argparse.Namespace, kind: str) -> Any:
    """The exported model for FILE, or the checkpoint converted to LiteRT in memory."""
    import os

    from .deploy import Exported

    threads = args.threads or os.cpu_count() or 1
    if exported_path := (args.file if args.ckpt is None else None):
        return Exported(exported_path, threads=threads)
    from ..backends import tflite
    from ..backends.folded import fold
    from .deploy import class_names

    net, model, names = _load_trained(args)
    ex = Exported.__new__(Exported)
    ex.model = tflite.load(tflite.convert(fold(model), 1), threads=threads, name=f"{args.ckpt} (LiteRT)")
    ex.path, ex.name = str(args.ckpt), net.name
    ex.classes = names or class_names(None, net.classes)
    h, w, c = net.input
    ex.mean, ex.std = args.pre.norm
    ex.batch, ex.size, ex.channels, ex.crop = 1, (h, w), c, args.pre.crop
    return ex


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import fit, open_source

    if args.epochs > 100_000:
        raise UsageError(f"--epochs {args.epochs} is absurd")
    net = load_network(args)
    source = open_source(args.data)
    if args.classes is None:
        net = net.scaled(classes=source.num_classes)
    enable_compilation_cache()
    verbose = not args.quiet
    result = fit(net, source, epochs=args.epochs, batch=args.batch, recipe=args.recipe, seed=args.seed,
                 out=args.out, lr=args.lr, resume=args.resume, recalibrate_bn=args.recal, init=args.init,
                 freeze_backbone=args.freeze_backbone,
                 verbose=verbose and sys.stderr.isatty(), workers=args.workers,
                 log=(lambda m: (sys.stderr.write(m + "\n"), sys.stderr.flush())) if verbose else (lambda _m: None))
    if args.json:
        print_json({k: v for k, v in result.to_json().items() if k != "history"} | {"out": str(args.out)})
    else:
        sys.stdout.write(f"{net.name}: val acc {result.val_acc:.4f}, val loss {result.val_loss:.4f} after "
                         f"{result.epochs} epochs ({_rate(result.images_per_s)} img/s); wrote {args.out}\n")
    return 0


def _rate(x: float) -> str:
    return f"{x:.0f}" if math.isfinite(x) else "-"


def _load_trained(args: argparse.Namespace) -> tuple[Network, Any, tuple[str, ...] | None]:
    """FILE's network at the checkpoint's size (unless overridden), its weights, and the class names."""
    from ..backends.flax import load_params
    from ..parser import parse
    from ..train.checkpoint import find_meta, load_preprocess

    ckpt = Path(args.ckpt)
    if not ckpt.is_dir():
        raise MnasError(f"{ckpt}: no such checkpoint directory")
    meta = find_meta(ckpt)
    net = load_network(args)
    names: tuple[str, ...] | None = None
    if meta is not None:
        stored = parse(str(meta["spec"]))[0]
        assert isinstance(stored, Network)
        net = net.scaled(width=None if args.width else stored.width, depth=None if args.depth else stored.depth,
                         resolution=None if args.resolution else stored.resolution,
                         classes=None if args.classes else stored.classes)
        names = tuple(str(c) for c in meta["classes"])
        if len(names) != net.classes:
            raise MnasError(f"{ckpt}: trained for {len(names)} classes, but --classes is {net.classes}")
    enable_compilation_cache()
    h, w, c = net.input
    args.pre = load_preprocess(ckpt, (h, w), c)  # how these weights expect their input: crop, mean, std
    args.norm = args.pre.norm
    return net, load_params(net, ckpt), names


def cmd_eval(args: argparse.Namespace) -> int:
    from ..train import evaluate_model, open_source

    kind = _check_runtime(args)
    if kind is not None:
        return _eval_exported(args, _exported(args, kind))
    net, model, names = _load_trained(args)
    source = open_source(args.data)
    if names is not None and tuple(source.class_names) != names:
        raise MnasError(f"{source.name}: its classes ({_list(source.class_names)}) are not the checkpoint's "
                        f"({_list(names)})")
    if source.num_classes != net.classes:
        raise MnasError(f"{source.name} has {source.num_classes} classes, the network {net.classes}")
    split = source.val if args.split == "val" else source.train
    h, w, c = net.input
    m = evaluate_model(model, split, size=(h, w), channels=c, batch=args.batch, norm=args.norm,
                       crop=args.pre.crop)
    bad = source.corrupt_count()
    if bad:
        sys.stderr.write(f"warning: skipped {bad} corrupt or unreadable image(s)\n")
    return _report_eval(args, net.name, {"network": net.name, "data": source.name, "split": args.split,
                                         "images": int(m["count"]), "top1": m["acc"], "top5": m["top5"],
                                         "loss": m["loss"]})


def _report_eval(args: argparse.Namespace, label: str, out: dict[str, Any]) -> int:
    if args.json:
        print_json(out)
    else:
        sys.stdout.write(f"{label} on {out['data']} ({args.split}, {out['images']} images): "
                         f"top-1 {out['top1']:.4f}, top-5 {out['top5']:.4f}, loss {out['loss']:.4f}\n")
    return 0


def _list(names: tuple[str, ...]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def cmd_predict(args: argparse.Namespace) -> int:

    from ..train import predict_images

    kind = _check_runtime(args)
    if kind is not None:
        return _predict_exported(args, _exported(args, kind))
    net, model, names = _load_trained(args)
    h, w, c = net.input
    images = _read_images(args.images, (h, w), c, args.pre.crop)
    probs = predict_images(model, images, c, norm=args.norm)
    from ..labels import default_names

    return _print_predictions(args, net.name, names or default_names(net.classes), probs)


def _read_images(paths: list[str], size: tuple[int, int], c: int, crop: float) -> Any:
    import numpy as np
    from PIL import Image

    from ..train.data import decode_image

    images = []
    for path in paths:
        if not Path(path).is_file():
            raise MnasError(f"{path}: no such image file")
        try:
            images.append(decode_image(path, size, c, crop=crop))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise MnasError(f"{path}: cannot read image: {e}") from None
    return np.stack(images)


def _predict_exported(args: argparse.Namespace, ex: Any) -> int:
    import numpy as np

    images = _read_images(args.images, ex.size, ex.channels, ex.crop)
    logits = ex.logits(images)
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    from ..labels import default_names

    labels = ex.classes or default_names(probs.shape[1])
    if len(labels) != probs.shape[1]:
        raise MnasError(f"{ex.path}: its card names {len(labels)} classes, the model outputs {probs.shape[1]}")
    return _print_predictions(args, ex.name, labels, probs)


def _eval_exported(args: argparse.Namespace, ex: Any) -> int:
    import numpy as np

    from ..train import open_source
    from ..train.data import Loader

    source = open_source(args.data)
    if ex.classes is not None and tuple(source.class_names) != tuple(ex.classes):
        raise MnasError(f"{source.name}: its classes ({_list(source.class_names)}) are not the model's "
                        f"({_list(tuple(ex.classes))})")
    split = source.val if args.split == "val" else source.train
    top1 = top5 = n = 0
    loss = 0.0
    for b in Loader(split, batch=args.batch, size=ex.size, channels=ex.channels, train=False, crop=ex.crop):
        keep = b.mask > 0
        if not keep.any():
            continue
        logits = ex.logits(b.images[keep]).astype(np.float64)
        if logits.shape[1] != source.num_classes:
            raise MnasError(f"{source.name} has {source.num_classes} classes, the model {logits.shape[1]}")
        labels = b.labels[keep]
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss += float(-logp[np.arange(len(labels)), labels].sum())
        order = np.argsort(-logits, axis=1, kind="stable")
        top1 += int((order[:, 0] == labels).sum())
        top5 += int((order[:, :5] == labels[:, None]).any(axis=1).sum())
        n += len(labels)
    if n == 0:
        raise MnasError(f"{source.name}: no readable images in the {args.split} split")
    bad = source.corrupt_count()
    if bad:
        sys.stderr.write(f"warning: skipped {bad} corrupt or unreadable image(s)\n")
    return _report_eval(args, f"{ex.name} ({ex.path})", {
        "network": ex.name, "model": str(ex.path), "data": source.name, "split": args.split, "images": n,
        "top1": top1 / n, "top5": top5 / n, "loss": loss / n})


def _print_predictions(args: argparse.Namespace, name: str, labels: Any, probs: Any) -> int:
    import numpy as np

    k = min(args.top, len(labels))
    preds = []
    for path, p in zip(args.images, probs, strict=True):
        top = np.argsort(-p, kind="stable")[:k]
        preds.append({"image": path, "top": [{"class": labels[i], "index": int(i), "prob": float(p[i])}
                                             for i in top]})
    if args.json:
        print_json({"network": name, "predictions": preds})
    else:
        for pr in preds:
            sys.stdout.write(f"{pr['image']}:\n")
            for t in pr["top"]:
                sys.stdout.write(f"  {t['prob']:.4f}  {t['index']:>4}  {t['class']}\n")
    return 0
