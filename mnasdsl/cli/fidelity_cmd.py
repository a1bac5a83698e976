"""`mnasdsl fidelity`: how well each evaluator ranks networks as stand-alone training does."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..diagnostics import MnasError
from .common import UsageError, positive_int, print_json, seed_arg, stderr_console, stdout_console

KINDS = ("proxy", "zero-cost", "latency-only")


def register(sub: Any) -> None:
    p = sub.add_parser("fidelity", help="rank agreement of search evaluators with stand-alone training",
                       description="Sample networks of a space stratified by estimated latency, train each "
                                   "stand-alone as the reference (kept in --db and reused), evaluate every "
                                   "--evaluator on the same networks with two seeds, and report Kendall's tau "
                                   "and Spearman's rho against the reference (bootstrap 90% intervals), "
                                   "seed-to-seed repeatability, seconds per evaluation, and the same for "
                                   "MACs, params and estimated latency as baselines.")
    p.add_argument("file", metavar="SPACE")
    p.add_argument("--space", metavar="NAME", help="which space of a multi-space file")
    p.add_argument("--evaluator", action="append", required=True, metavar="E",
                   help="an evaluator of `search` (proxy, zero-cost, latency-only, MODULE:FUNCTION); repeat "
                        "the option to compare several")
    p.add_argument("--sample", type=positive_int, default=12, metavar="N", help="networks (default 12; >= 3)")
    p.add_argument("--seed", type=seed_arg, default=0, metavar="S",
                   help="sampling, reference and first evaluator seed (the repeat uses S+1; default 0)")
    p.add_argument("--reference-epochs", type=positive_int, default=10, metavar="R",
                   help="stand-alone training epochs of the reference (default 10)")
    p.add_argument("--epochs", type=positive_int, default=2, metavar="E", help="proxy evaluator epochs (default 2)")
    p.add_argument("--data", default="digits", metavar="SRC", help="data source (default digits)")
    p.add_argument("--resolution", type=positive_int, default=32, metavar="R", help="input resolution (default 32)")
    p.add_argument("--batch", type=positive_int, default=64, metavar="B", help="batch size (default 64)")
    p.add_argument("--db", default="fidelity.db", metavar="PATH",
                   help="reference database (default fidelity.db): a second run reuses the networks trained")
    lat = p.add_mutually_exclusive_group()
    lat.add_argument("--device", metavar="NAME", help="latency model for the strata (default pixel1)")
    lat.add_argument("--lut", metavar="FILE", help="latency lookup table (JSON) for the strata")
    p.add_argument("--no-repeat", action="store_true", help="skip the second seed (no repeatability column)")
    p.add_argument("--plot", metavar="FILE", help="write score-against-reference scatter plots (PNG, SVG or PDF)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_fidelity)


def _check_evaluator(name: str) -> None:
    if name in KINDS or name.startswith("supernet:"):
        return
    if name == "synthetic":
        raise UsageError("--evaluator synthetic scores decision vectors with a made-up objective; it has no "
                         "accuracy to compare with training")
    if ":" not in name:
        raise UsageError(f"unknown --evaluator {name!r} (choose from {', '.join(KINDS)} or MODULE:FUNCTION)")


def cmd_fidelity(args: argparse.Namespace) -> int:
    from ..latency.estimator import Estimator, load_table
    from ..parser import parse_units, read_source, select
    from ..search import fidelity as fd
    from ..search.evaluators import EvalConfig, check_config, evaluate_safe
    from ..space import Space

    if args.sample < 3:
        raise UsageError(f"--sample {args.sample}: a rank correlation needs at least 3 networks")
    if len(set(args.evaluator)) != len(args.evaluator):
        raise UsageError("an --evaluator is given twice")
    for name in args.evaluator:
        _check_evaluator(name)
    if args.plot and os.path.splitext(args.plot)[1].lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--plot {args.plot}: name a .png, .svg or .pdf file")
    spec = select(parse_units(read_source(args.file), args.file), args.space, args.file, "space")
    space = Space(spec)  # type: ignore[arg-type]
    cwd = None if sys.flags.safe_path else os.getcwd()

    def config(name: str, seed: int) -> EvalConfig:
        return EvalConfig(kind=name, data=args.data, epochs=args.epochs, resolution=args.resolution,
                          batch=args.batch, seed=seed, cwd=cwd)

    for name in args.evaluator:  # a broken plug-in or data source fails before any training
        check_config(config(name, args.seed))
    est = Estimator(load_table(args.device or ("pixel1" if not args.lut else None), args.lut))
    quiet = args.json or not sys.stderr.isatty()
    err = stderr_console()
    t0 = time.perf_counter()
    with err.status("sampling", spinner="dots") if not quiet else _Null() as status:
        def say(msg: str) -> None:
            if status is not None:
                status.update(msg)

        candidates = fd.stratified_sample(space, args.sample, args.seed, est.estimate_ms)
        setup = fd.reference_setup(args.data, args.resolution, args.reference_epochs, args.batch, args.seed)
        store = fd.ReferenceStore(args.db)
        refs: list[dict[str, Any]] = []
        try:
            for i, c in enumerate(candidates):
                got = store.get(c.spec, setup)
                if got is None:
                    say(f"reference: training network {i + 1}/{len(candidates)} for {args.reference_epochs} epochs")
                    got = fd.train_reference(c.spec, setup)
                    store.put(c.spec, setup, got["acc"], got["loss"], got["seconds"])
                refs.append(got)
        finally:
            store.close()
        reference = [r["acc"] for r in refs]

        def score(name: str, c: Any, seed: int) -> float:
            status, out = evaluate_safe(config(name, seed), c.spec, list(c.decisions))
            if status != "ok":  # a plug-in's own exception included: recorded, and the next network goes on
                raise MnasError(str(out))
            return float(out["acc"])

        results = fd.run_fidelity(candidates, reference, score, args.evaluator, args.seed,
                                  repeat=not args.no_repeat, progress=say)
        base = fd.baselines(candidates, reference, args.seed)
    if args.plot:
        fd.plot(args.plot, candidates, reference, results)
    trained = sum(not r["cached"] for r in refs)
    info = {"space": space.name, "networks": len(candidates), "seed": args.seed, "reference": setup,
            "reference_trained": trained, "reference_reused": len(refs) - trained,
            "reference_seconds": round(sum(r["seconds"] for r in refs), 3), "db": args.db,
            "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        if args.plot:
            info["plot"] = args.plot
        print_json({**info, "evaluators": [r.to_json() for r in results],
                    "baselines": [{"baseline": k, **v.to_json()} for k, v in base.items()],
                    "candidates": [{"spec": c.spec, "latency_ms": round(c.latency_ms, 4), "macs": c.macs,
                                    "params": c.params, "reference_acc": a}
                                   for c, a in zip(candidates, reference)]})
        return _fail_if_useless(results)
    _table(info, results, base)
    if args.plot:
        stdout_console().print(f"wrote {args.plot}", markup=False, highlight=False)
    return _fail_if_useless(results)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: Any) -> None:
        return None


def _ci(v: tuple[float, float]) -> str:
    import math

    return f"[{v[0]:+.2f}, {v[1]:+.2f}]" if all(math.isfinite(x) for x in v) else "[n/a]"


def _f(x: float | None, fmt: str = "+.2f") -> str:
    import math

    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def _table(info: dict[str, Any], results: list[Any], base: dict[str, Any]) -> None:
    from rich.table import Table

    ref = info["reference"]
    con = stdout_console()
    con.print(f"{info['networks']} networks of {info['space']}, stratified by estimated latency; reference: "
              f"{ref['epochs']} epochs stand-alone on {ref['data']} at {ref['resolution']} px "
              f"({info['reference_trained']} trained, {info['reference_reused']} reused from {info['db']})",
              markup=False, highlight=False)
    t = Table(show_edge=False)
    for col in ("evaluator", "Kendall tau", "90% CI", "Spearman rho", "90% CI", "repeat tau", "s/eval"):
        t.add_column(col, justify="left" if col == "evaluator" else "right")
    for r in results:
        a = r.agreement
        t.add_row(r.name, _f(a.tau), _ci(a.tau_ci), _f(a.rho), _ci(a.rho_ci), _f(r.repeat_tau),
                  _f(r.seconds_per_eval, ".2f"))
    for name, a in base.items():
        t.add_row(f"{name} (baseline)", _f(a.tau), _ci(a.tau_ci), _f(a.rho), _ci(a.rho_ci), "-", "-")
    con.print(t)
    for r in results:
        for e in r.errors[:3]:
            con.print(f"{r.name}: {e}", markup=False, highlight=False)


def _fail_if_useless(results: list[Any]) -> int:
    """Exit 1 when an evaluator failed on every network: its row says nothing."""
    for r in results:
        if r.errors and len(r.errors) >= len(r.scores) * (2 if r.repeat_scores is not None else 1):
            raise MnasError(f"evaluator {r.name} failed on every network; first error: {r.errors[0]}")
    return 0
