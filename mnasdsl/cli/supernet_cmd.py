"""`supernet train|eval|extract`: one-shot search's weight-sharing supernet (thin layers over
:mod:`mnasdsl.oneshot`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..diagnostics import Diagnostic, MnasError
from ..ir import Network, SpaceDef
from ..parser import parse_units, read_source, select
from .common import (
    UsageError,
    enable_compilation_cache,
    positive_float,
    positive_int,
    print_json,
    resolution_arg,
    seed_arg,
)


def register(sub: Any) -> None:
    p = sub.add_parser("supernet", help="one-shot search: train a weight-sharing supernet of a space, score and "
                                        "extract its subnets",
                       description="A supernet holds one set of weights for every network of a search space: "
                                   "`train` it once, then `eval` any network of the space in seconds and `extract` "
                                   "the one you pick as a standalone checkpoint.")
    cmds = p.add_subparsers(dest="supernet_command", metavar="COMMAND")
    cmds.required = True

    from ..oneshot.train import DEFAULT_RULE, RULES

    t = cmds.add_parser("train", help="train the supernet of a space (checkpointed, resumable)",
                        description="Train one weight-sharing supernet covering every network of SPACE. Kernel "
                                    "choices share a superkernel (k3 is the centre of k5), expansions, filter "
                                    "multipliers and SE widths share channel prefixes, repeats skip trailing "
                                    "layers; cv, ds, mb and er keep their own weights. The sampled subnet is an "
                                    "input of the compiled step: sampling never recompiles.")
    t.add_argument("file", metavar="SPACE", help="a file holding the search space")
    t.add_argument("--space", metavar="NAME", help="which space of a multi-space file")
    t.add_argument("--data", required=True, metavar="SOURCE", help="ImageFolder directory, `digits` or `synthetic`")
    t.add_argument("--out", required=True, metavar="DIR", help="output directory (checkpoints, metrics, curves)")
    t.add_argument("--epochs", type=positive_int, default=10, metavar="N", help="epochs (default 10)")
    t.add_argument("--batch", type=positive_int, default=64, metavar="B", help="batch size (default 64)")
    t.add_argument("--resolution", type=resolution_arg, metavar="R",
                   help="input resolution R or HxW (default: the space's)")
    t.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="random seed (>= 0; default 0)")
    t.add_argument("--rule", choices=RULES, default=DEFAULT_RULE,
                   help=f"sampling rule: spos (one uniform subnet per step) or sandwich (BigNAS: largest, smallest "
                        f"and random subnets per step, in-place distillation); default {DEFAULT_RULE}")
    t.add_argument("--recipe", choices=("adam", "mnasnet"), default="adam",
                   help="adam: AdamW + cosine (default); mnasnet: the paper's RMSProp recipe (without its EMA)")
    t.add_argument("--lr", type=positive_float, metavar="LR", help="peak learning rate (default: the recipe's)")
    t.add_argument("--steps-per-epoch", type=positive_int, metavar="N",
                   help="at most N steps per epoch (quick runs; default: the whole training split)")
    t.add_argument("--resume", action="store_true", help="continue the run in DIR from its last completed epoch")
    t.add_argument("--workers", type=positive_int, metavar="N", help="data loading threads (default: CPU count)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    t.add_argument("--json", action="store_true", help="one JSON object on stdout")
    t.set_defaults(func=cmd_train)

    e = cmds.add_parser("eval", help="supernet accuracy of networks of its space (BN recalibrated per network)",
                        description="Score each network of the NET files (every network in a file, or --network) "
                                    "with the supernet's weights, after recalibrating its own BN statistics on a "
                                    "few training batches. A network outside the supernet's space is an error "
                                    "naming the first decision that does not fit.")
    e.add_argument("dir", metavar="DIR", help="a `supernet train` output directory")
    e.add_argument("files", nargs="+", metavar="NET", help="spec files of networks of the supernet's space")
    _common(e)
    e.set_defaults(func=cmd_eval)

    x = cmds.add_parser("extract", help="write a subnet as a standalone checkpoint (for compile/eval/predict/train)",
                        description="Cut NET's weights out of the supernet, with BN statistics recalibrated for it, "
                                    "into a checkpoint directory that `compile --ckpt`, `eval --ckpt`, "
                                    "`predict --ckpt`, `train --init` and the tflite/onnx exports read.")
    x.add_argument("dir", metavar="DIR", help="a `supernet train` output directory")
    x.add_argument("file", metavar="NET", help="a spec file holding a network of the supernet's space")
    x.add_argument("-o", "--output", required=True, metavar="CKPT", help="checkpoint directory to write")
    _common(x)
    x.set_defaults(func=cmd_extract)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", metavar="NAME", help="which network of a multi-network file")
    p.add_argument("--data", metavar="SOURCE", help="data to recalibrate and evaluate on (default: the supernet's)")
    p.add_argument("--recal-batches", type=positive_int, metavar="N",
                   help="training batches each subnet recalibrates its BN statistics on (default: the run's, 10)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="data loading threads (default: CPU count)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _log(quiet: bool) -> Any:
    if quiet:
        return lambda _m: None
    return lambda m: (sys.stderr.write(m + "\n"), sys.stderr.flush())


def cmd_train(args: argparse.Namespace) -> int:
    from ..oneshot.train import train_supernet
    from ..space import Space
    from ..train.loop import _leave_nothing_on_error

    if args.epochs > 100_000:
        raise UsageError(f"--epochs {args.epochs} is absurd")
    text = read_source(args.file)
    spec = select(parse_units(text, args.file), args.space, args.file, "space")
    assert isinstance(spec, SpaceDef)
    space = Space(spec)
    if args.resolution is not None:
        from ..validate import check_overrides

        check_overrides(resolution=args.resolution)
    enable_compilation_cache()
    run = _leave_nothing_on_error(train_supernet)  # type: ignore[arg-type]
    try:
        result: Any = run(space, args.data, out=args.out, epochs=args.epochs, batch=args.batch,
                          resolution=args.resolution, seed=args.seed, rule=args.rule, recipe=args.recipe, lr=args.lr,
                          resume=args.resume, steps_per_epoch=args.steps_per_epoch, workers=args.workers,
                          verbose=not args.quiet and sys.stderr.isatty(), log=_log(args.quiet))
    except MnasError as err:  # a decision the supernet cannot share points into the space's file
        if any(d.span is not None and d.path is None for d in err.diagnostics):
            raise err.located(args.file, text) from None
        raise
    if args.json:
        print_json({k: v for k, v in result.to_json().items() if k != "history"})
    else:
        sys.stdout.write(f"{space.name}: supernet trained for {result.epochs} epochs ({result.rule}, "
                         f"{result.subnets} subnets sampled); val acc largest {result.val_acc_largest:.4f}, "
                         f"smallest {result.val_acc_smallest:.4f}; {result.executables} executables compiled; "
                         f"wrote {args.out}\n")
    return 0


def _networks(path: str, name: str | None) -> list[Network]:
    units = parse_units(read_source(path), path)
    if name is not None:
        net = select(units, name, path, "network")
        assert isinstance(net, Network)
        return [net]
    nets = [u for u in units if isinstance(u, Network)]
    if not nets:
        raise MnasError(Diagnostic("file has no network" + ("; it holds a space" if units else ""), path=path))
    return nets


def _load(args: argparse.Namespace) -> Any:
    from ..oneshot.evaluate import Supernet

    enable_compilation_cache()
    return Supernet(args.dir, data=args.data, recal_batches=args.recal_batches, workers=args.workers)


def _located(err: MnasError, path: str) -> MnasError:
    return MnasError(tuple(d.with_path(path) if d.path is None else d for d in err.diagnostics))


def cmd_eval(args: argparse.Namespace) -> int:
    from ..formatter import format as format_ir

    work = [(path, net) for path in args.files for net in _networks(path, args.network)]
    sn = _load(args)
    for path, net in work:  # every network fits before any is scored
        try:
            sn.indices(net)
        except MnasError as err:
            raise _located(err, path) from None
    rows = []
    for path, net in work:
        s = sn.evaluate(net)
        rows.append({"file": path, "network": net.name, "spec": format_ir(net), "decisions": list(s.indices),
                     "acc": s.acc, "top5": s.top5, "loss": s.loss, "images": s.images, "seconds": s.seconds})
        if not args.json:
            sys.stdout.write(f"{net.name} ({path}): supernet acc {s.acc:.4f}, top-5 {s.top5:.4f}, loss {s.loss:.4f} "
                             f"on {s.images} {sn.source.name} val images ({s.seconds:.2f} s)\n")
    if args.json:
        print_json(sn.to_json() | {"networks": rows})
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..oneshot.evaluate import check_target

    nets = _networks(args.file, args.network)
    if len(nets) > 1:
        raise MnasError(Diagnostic(f"file holds several networks ({', '.join(n.name for n in nets)}); choose one "
                                   "with --network NAME", path=args.file))
    check_target(Path(args.output))
    sn = _load(args)
    try:
        sn.indices(nets[0])
    except MnasError as err:
        raise _located(err, args.file) from None
    out, score = sn.extract(nets[0], args.output)
    info = {"output": str(out), "network": nets[0].name, "decisions": list(score.indices), "acc": score.acc,
            "supernet": str(args.dir), "epoch": sn.epoch, "input": list(sn.plan.input)}
    if args.json:
        print_json(info)
    else:
        h, w, _ = sn.plan.input
        sys.stdout.write(f"wrote {out}: {nets[0].name} at {w}x{h}, supernet acc {score.acc:.4f} (BN recalibrated); "
                         f"use it with --ckpt {out} or train --init {out}\n")
    return 0
