"""Language commands: check, fmt, show, cost, schema, sample."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any

from rich.table import Table

from ..cost import cost_lowered
from ..diagnostics import MnasError
from ..formatter import format as format_ir
from ..formatter import format_source
from ..ir import Network, SpaceDef
from ..lowering import lower
from ..parser import parse_units, read_source, select
from ..space import Space
from .common import (
    UsageError,
    add_network_args,
    add_override_args,
    atomic_write_text,
    cost_table,
    human_count,
    layer_text,
    load_network,
    positive_int,
    print_json,
    seed_arg,
    shape_text,
    stdout_console,
)


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="parse and validate files (all errors of every file)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("fmt", help="rewrite files in canonical form")
    p.add_argument("files", nargs="+", metavar="FILE")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if a file would change (like black --check)")
    g.add_argument("--write", action="store_true", help="rewrite the files in place (atomically)")
    p.add_argument("--diff", action="store_true", help="show a unified diff of what would change (implies --check)")
    p.set_defaults(func=cmd_fmt)

    p = sub.add_parser("show", help="the resolved layer table of a network")
    p.add_argument("file", metavar="FILE")
    add_network_args(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("cost", help="parameters and multiply-adds, total and per layer")
    p.add_argument("file", metavar="FILE")
    add_network_args(p)
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("schema", help="the JSON schema of the IR")
    p.add_argument("--json", action="store_true", help="(the output is always JSON)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("sample", help="sample concrete networks from a search space, in canonical form")
    p.add_argument("file", metavar="SPACE")
    p.add_argument("--space", dest="network", metavar="NAME", help="which space of a multi-space file")
    p.add_argument("--network", dest="network", metavar="NAME", help=argparse.SUPPRESS)
    p.add_argument("-n", type=positive_int, default=1, metavar="N", help="how many (default 1)")
    p.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="random seed (>= 0; default 0)")
    add_override_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_sample)


def cmd_check(args: argparse.Namespace) -> int:
    errors: list[MnasError] = []
    report = []
    for path in args.files:
        try:
            units = parse_units(read_source(path), path)
            report.append({"file": path, "ok": True, "units": [
                {"kind": "space" if isinstance(u, SpaceDef) else "network", "name": u.name} for u in units]})
            if not args.json:
                names = ", ".join(u.name for u in units)
                sys.stdout.write(f"{path}: ok ({names})\n")
        except MnasError as e:
            errors.append(e)
            report.append({"file": path, "ok": False, "diagnostics": e.to_json()})
    for e in errors:
        sys.stderr.write(e.render() + "\n")
    if args.json:
        print_json({"ok": not errors, "files": report})
        if errors:
            sys.stderr.write(json.dumps([d for e in errors for d in e.to_json()]) + "\n")
    return 1 if errors else 0


def cmd_fmt(args: argparse.Namespace) -> int:
    if args.diff and args.write:
        raise UsageError("--diff shows what --check would change; it cannot be combined with --write")
    args.check = args.check or args.diff  # a diff alone is a check (as `ruff format --diff`): never silently ignored
    errors: list[MnasError] = []
    changed = []
    for path in args.files:
        try:
            text = read_source(path)
            new = format_source(text, path)
        except MnasError as e:
            errors.append(e)
            continue
        if new != text:
            changed.append(path)
        if args.check:
            if new != text:
                sys.stderr.write(f"would reformat {path}\n")
                if args.diff:
                    sys.stdout.writelines(difflib.unified_diff(
                        text.splitlines(True), new.splitlines(True), f"{path}", f"{path} (formatted)"))
        elif args.write:
            if new != text:
                atomic_write_text(path, new)
                sys.stderr.write(f"reformatted {path}\n")
        else:
            sys.stdout.write(new)
    for e in errors:
        sys.stderr.write(e.render() + "\n")
    if errors:
        return 1
    if args.check and changed:
        sys.stderr.write(f"{len(changed)} file(s) would be reformatted\n")
        return 1
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    net = load_network(args)
    low = lower(net)
    c = cost_lowered(low)
    if args.json:
        print_json({
            "name": low.name, "input": list(low.input_shape), "classes": low.classes, "padding": low.padding,
            "params": c.params, "macs": c.macs,
            "layers": [{
                "name": ly.name, "kind": ly.kind, "op": ly.op, "in": list(ly.in_shape), "out": list(ly.out_shape),
                "kernel": ly.kernel, "stride": list(ly.stride), "expansion": ly.expansion, "mid": ly.mid,
                "se": ly.se, "se_gate": ly.se_gate, "se_act": ly.se_act, "skip": ly.skip, "pool_proj": ly.pool_proj,
                "act": ly.act,
                "params": lc.params, "macs": lc.macs} for ly, lc in zip(low.layers, c.layers)],
        })
        return 0
    t = Table(title=f"{low.name}  ({shape_text(low.input_shape)}, {low.classes} classes, padding {low.padding})")
    for col in ("layer", "op", "input", "output", "mid", "skip", "act"):
        t.add_column(col, justify="right" if col in ("mid",) else "left")
    for ly in low.layers:
        t.add_row(ly.name, layer_text(ly), shape_text(ly.in_shape), shape_text(ly.out_shape), str(ly.mid),
                  ly.skip + ("+proj" if ly.pool_proj else ""), ly.act)
    con = stdout_console()
    con.print(t)
    con.print(f"{len(low.layers)} layers, {c.params:,} params, {human_count(c.macs)} MACs")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    net = load_network(args)
    low = lower(net)
    c = cost_lowered(low)
    if args.json:
        out = {"name": low.name, "input": list(low.input_shape), **c.to_json()}
        print_json(out)
        return 0
    t = cost_table(f"cost of {low.name} at {shape_text(low.input_shape)}")
    for ly, lc in zip(low.layers, c.layers):
        t.add_row(ly.name, layer_text(ly), shape_text(ly.out_shape), f"{lc.params:,}", f"{lc.macs:,}")
    t.add_section()
    t.add_row("total", "", "", f"{c.params:,}", f"{c.macs:,}")
    con = stdout_console()
    con.print(t)
    con.print(f"params {c.params:,} ({human_count(c.params, 3)})   MACs {c.macs:,} ({human_count(c.macs)})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from pydantic.json_schema import models_json_schema

    from ..ir import Block, Network, SpaceDef

    _, defs = models_json_schema([(Network, "validation"), (SpaceDef, "validation"), (Block, "validation")],
                                 title="mnasdsl IR")
    from ..ir import _strip_spans

    _strip_spans(defs)
    print_json(defs)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    path = args.file
    spec = select(parse_units(read_source(path), path), args.network, path, "space")
    assert isinstance(spec, SpaceDef)
    space = Space(spec)
    import numpy as np

    rng = np.random.default_rng(args.seed)
    nets: list[Network] = []
    vectors = []
    for k in range(args.n):
        idx = space.sample_indices(rng)
        net = space.decode(idx)
        net = net.model_copy(update={"name": f"{spec.name}_{k}"})
        net = net.scaled(width=args.width, depth=args.depth, resolution=args.resolution, classes=args.classes)
        nets.append(net)
        vectors.append(idx)
    if args.json:
        print_json({"space": spec.name, "size": space.size(), "seed": args.seed, "samples": [
            {"name": n.name, "decisions": v, "spec": format_ir(n)} for n, v in zip(nets, vectors)]})
        return 0
    sys.stdout.write("\n".join(format_ir(n) for n in nets))
    return 0
