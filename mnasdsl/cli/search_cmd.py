"""`mnasdsl search` and `mnasdsl report`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..diagnostics import MnasError
from .common import (
    UsageError,
    finite_float,
    positive_float,
    positive_int,
    print_json,
    seed_arg,
    stderr_console,
    stdout_console,
)


def register(sub: Any) -> None:
    p = sub.add_parser("search", help="platform-aware architecture search over a space")
    p.add_argument("file", metavar="SPACE")
    p.add_argument("--space", metavar="NAME", help="which space of a multi-space file")
    p.add_argument("--db", required=True, metavar="PATH", help="SQLite trial database (created; WAL)")
    p.add_argument("--trials", required=True, type=positive_int, metavar="N",
                   help="trials to finish in all (with --resume, those already in --db count)")
    p.add_argument("--target-ms", required=True, type=positive_float, metavar="T", help="latency target")
    p.add_argument("--algo", choices=("random", "evolution", "ppo"), default="evolution")
    p.add_argument("--evaluator", default="latency-only", metavar="KIND",
                   help="proxy | latency-only | zero-cost | synthetic | MODULE:FUNCTION (default latency-only)")
    lat = p.add_mutually_exclusive_group()
    lat.add_argument("--device", metavar="NAME", help="built-in latency model (default pixel1)")
    lat.add_argument("--lut", metavar="FILE", help="latency lookup table (JSON)")
    lat.add_argument("--measure", nargs="?", const="xla", default=None, metavar="RUNTIME",
                     help="time each model here, in the worker that evaluates it: xla (the default when RUNTIME is "
                          "omitted) or litert (converted to .tflite and run in LiteRT with XNNPACK, 1 thread: the "
                          "paper's measured latency, on this CPU)")
    rw = p.add_mutually_exclusive_group()
    rw.add_argument("--reward", choices=("soft", "hard"), help="soft: a=b=-0.07 (default); hard: a=0, b=-1")
    rw.add_argument("--alpha", type=finite_float, metavar="A", help="exponent when LAT <= T (with --beta)")
    p.add_argument("--beta", type=finite_float, metavar="B", help="exponent when LAT > T (with --alpha)")
    p.add_argument("--population", type=positive_int, default=50, metavar="P",
                   help="evolution: members of the aging population; the oldest dies with each child (default 50)")
    p.add_argument("--tournament", type=positive_int, default=10, metavar="S",
                   help="evolution: members drawn per tournament, whose best is mutated (default 10)")
    p.add_argument("--round", dest="round_size", type=positive_int, metavar="K",
                   help="proposals per controller round (default: workers; 10 for ppo)")
    p.add_argument("--data", default="digits", metavar="SRC", help="proxy data source (default digits)")
    p.add_argument("--epochs", type=positive_int, default=5, metavar="E", help="proxy epochs (default 5)")
    p.add_argument("--resolution", type=positive_int, default=32, metavar="R", help="proxy resolution")
    p.add_argument("--batch", type=positive_int, default=64, metavar="B", help="proxy batch size")
    p.add_argument("--proxy-steps", choices=("auto", "fused", "layerwise"), default="auto",
                   help="how the proxy trains: layerwise (per-layer executables shared by all trials, so a "
                        "child compiles only its new layers), fused (one executable per network: faster steps, "
                        "a full compile per trial) or auto (layerwise up to 1,500 steps; default)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=positive_int, default=1, metavar="K",
                   help="evaluations at a time: local processes, or Ray tasks; 1 evaluates in this process "
                        "(default 1)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (auto or host:port)")
    p.add_argument("--seed", type=seed_arg, default=0, metavar="S",
                   help="controller and evaluator seed (>= 0; default 0): the same seed repeats the search")
    p.add_argument("--constrain", action="store_true",
                   help="reject proposals whose estimated latency exceeds --target-ms before evaluating them "
                        "(the controller proposes again, up to 100 times per trial); the count is reported")
    p.add_argument("--resume", action="store_true", help="continue the search in --db")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("report", help="Pareto front, top-k and latency histogram of a search database")
    p.add_argument("db", metavar="DB")
    p.add_argument("--plot", metavar="PNG", help="write a Fig. 6-style plot")
    p.add_argument("--top", type=positive_int, default=10, metavar="K",
                   help="rows of the top-by-reward table and of the failed-trials table (default 10; --json lists "
                        "every failure)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_report)


class _FailureEcho:
    """Shows the first few distinct trial errors on stderr as they happen, then only counts: a broken
    evaluator is visible at once, yet a thousand failing trials do not bury the progress bar."""

    def __init__(self, console: Any, limit: int = 3) -> None:
        self.console, self.limit = console, limit
        self.failed = 0
        self.errors: set[str] = set()

    def __call__(self, tid: int, spec: str, error: str) -> None:
        from ..search.report import brief_error, spec_line

        self.failed += 1
        if error in self.errors:
            return
        self.errors.add(error)
        if len(self.errors) > self.limit:
            return
        first, *rest = brief_error(error).splitlines()
        blocks = spec_line(spec)
        lines = [f"trial {tid} failed: {first}", *(f"  {r}" for r in rest),
                 f"  spec: {blocks if len(blocks) <= 240 else blocks[:237] + '...'}"]
        self.console.print("\n".join(lines), markup=False)

    def close(self, db: str) -> None:
        if not self.failed:
            return
        n = len(self.errors)
        what = (f"{n} distinct errors, the first {self.limit} shown above" if n > self.limit else
                "the error shown above" if n == 1 else f"the {n} errors shown above")
        self.console.print(f"{self.failed} trial{'s' if self.failed != 1 else ''} failed ({what}); "
                           f"`mnasdsl report {db}` lists each with its error", markup=False)


def cmd_search(args: argparse.Namespace) -> int:
    from ..latency.estimator import HARD, SOFT
    from ..parser import parse_units, read_source, select
    from ..search.evaluators import EvalConfig
    from ..search.loop import SearchConfig, run_search
    from ..space import Space

    if (args.alpha is None) != (args.beta is None):
        raise UsageError("--alpha and --beta go together")
    if args.beta is not None and args.reward:
        raise UsageError("--reward cannot be combined with --alpha/--beta")
    alpha, beta = (args.alpha, args.beta) if args.alpha is not None else (HARD if args.reward == "hard" else SOFT)
    if args.constrain and args.measure:
        raise UsageError("--constrain rejects proposals by their estimated latency before evaluating them; "
                         "it needs a latency table (--device or --lut), not --measure")
    if args.measure not in (None, "xla", "litert"):
        raise UsageError(f"unknown --measure runtime {args.measure!r} (expected xla or litert)")
    spec = select(parse_units(read_source(args.file), args.file), args.space, args.file, "space")
    space = Space(spec)  # type: ignore[arg-type]
    extra: dict[str, Any] = {}
    if args.evaluator == "synthetic":
        from ..search.synthetic import make_table

        extra["table"] = make_table(space.num_choices, args.seed)
    cache = str(Path(os.path.realpath(args.db)).parent / ".xla-cache")  # realpath: a symlink loop is no crash
    # A MODULE:FUNCTION plug-in is imported with this directory first on the path, as `python -m` would
    # (unless PYTHONSAFEPATH / -P asks not to), here and in every worker, whatever their own directory.
    cwd = None if sys.flags.safe_path else os.getcwd()
    ev = EvalConfig(kind=args.evaluator, data=args.data, epochs=args.epochs, resolution=args.resolution,
                    batch=args.batch, seed=args.seed, measure=bool(args.measure),
                    measure_runtime=args.measure or "xla",
                    cache_dir=cache if args.evaluator in ("proxy", "zero-cost") or args.measure else None,
                    extra=extra, cwd=cwd, steps=args.proxy_steps)
    latency = "measure" if args.measure else "lut" if args.lut else "device"
    cfg = SearchConfig(trials=args.trials, target_ms=args.target_ms, algo=args.algo, alpha=alpha, beta=beta,
                       population=args.population, tournament=args.tournament, round_size=args.round_size,
                       seed=args.seed, latency=latency, device=args.device or "pixel1", lut=args.lut,
                       evaluator=ev, executor=args.executor, workers=args.workers, address=args.address,
                       constrain=args.constrain)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    t0 = time.perf_counter()
    quiet = args.json or not sys.stderr.isatty() and os.environ.get("CI")
    with Progress(TextColumn("[bold]search[/]"), BarColumn(), TextColumn("{task.completed}/{task.total} trials"),
                  TextColumn("best reward {task.fields[best]}"), TextColumn("{task.fields[rate]} trials/s"),
                  TimeElapsedColumn(), console=stderr_console(), disable=bool(quiet),
                  transient=False) as bar:
        task = bar.add_task("search", total=args.trials, best="-", rate="-")
        last = [0.0]

        def progress(done: int, total: int, best: float | None) -> None:
            now = time.perf_counter()
            if now - last[0] < 0.1 and done < args.trials:
                return
            last[0] = now
            rate = done / max(now - t0, 1e-9)
            bar.update(task, completed=done, best=f"{best:.4f}" if best is not None else "-", rate=_rate(rate))

        echo = _FailureEcho(bar.console)
        summary = run_search(space, args.db, cfg, resume=args.resume, progress=progress, on_failure=echo)
    echo.close(args.db)
    label = ev.label
    if args.json:
        print_json({"db": args.db, "trials": summary.trials, "done": summary.done, "failed": summary.failed,
                    "best": summary.best, "first_error": summary.first_error, "seconds": summary.seconds,
                    "trials_per_s": summary.trials_per_s, "accuracy_is": label or "measured"}
                   | ({"rejected_over_target": summary.rejected, "evaluated_over_target": summary.over_target}
                      if args.constrain else {}))
    else:
        con = stdout_console()
        con.print(f"{summary.trials} trials ({summary.done} done, {summary.failed} failed) in "
                  f"{summary.seconds:.1f}s, {_rate(summary.trials_per_s)} trials/s"
                  + (f"; accuracy is an {label}" if label else ""), markup=False)
        if args.constrain:
            con.print(f"--constrain: {summary.rejected} proposals over {args.target_ms:g} ms (estimated) were "
                      f"rejected before evaluation"
                      + (f"; {summary.over_target} trials stayed over it after 100 resamples each"
                         if summary.over_target else ""), markup=False)
        if summary.best:
            b = summary.best
            con.print(f"best reward {b['reward']:.4f}: acc {b['acc']:.4f}, latency {b['latency_ms']:.2f} ms "
                      f"(trial {b['id']})")
            con.print(b["spec"], markup=False)
            con.print(f"see `mnasdsl report {args.db} --plot pareto.png`", markup=False)
    if summary.done == 0 and summary.first_error is not None:
        raise _all_failed(args.db, summary.trials, summary.first_error)
    return 0


def _all_failed(db: str, trials: int, first: dict[str, Any]) -> MnasError:
    """Exit 1: a search in which nothing finished found nothing, however cleanly it ran."""
    from ..diagnostics import Diagnostic
    from ..search.report import brief_error

    return MnasError(Diagnostic(
        f"every trial failed ({trials} of {trials}), so the search found nothing; the first error, trial "
        f"{first['id']}: {brief_error(first['error'], lines=1)}",
        notes=(f"`mnasdsl report {db}` lists each failed trial with its error; once that is fixed, the same "
               f"command starts the search afresh (a database with no successful trial is not kept)",)))


def _rate(r: float) -> str:
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


def cmd_report(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..search.report import brief_error, plot, summarize

    s = summarize(args.db, top=args.top)
    if args.plot:
        plot(s, args.plot)
    if args.json:
        out = {k: v for k, v in s.items() if not k.startswith("_")}
        if args.plot:
            out["plot"] = args.plot
        print_json(out)
        return 0
    con = stdout_console()
    con.print(f"{args.db}: {s['trials']} trials over space {s['space']} ({s['done']} done, {s['failed']} failed, "
              f"{s['unique']} distinct); accuracy is {s['accuracy_is']}", markup=False)
    ranked = (("Pareto front (accuracy vs latency)", s["pareto"]), (f"top {args.top} by reward", s["top"]))
    for title, rows in ranked if s["done"] else ():
        t = Table(title=title)
        for c in ("trial", "acc", "latency ms", "reward", "params", "MACs"):
            t.add_column(c, justify="right")
        for r in rows:
            t.add_row(str(r["id"]), f"{r['acc']:.4f}", f"{r['latency_ms']:.2f}", f"{r['reward']:.4f}",
                      f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}M")
        con.print(t)
    if not s["done"]:
        con.print("no trial finished: nothing to rank" + (", every trial failed" if s["failed"] else ""), markup=False)
    if s["failures"]:
        fails = s["failures"]
        shown = fails[:args.top]
        more = f" (first {len(shown)} of {len(fails)}; --json lists all)" if len(fails) > len(shown) else ""
        t = Table(title=f"failed trials{more}")
        t.add_column("trial", justify="right")
        t.add_column("error")
        for f in shown:
            note = f" (as trial {f['cached_from']})" if f["cached_from"] is not None else ""
            t.add_row(str(f["id"]), brief_error(f["error"]) + note)
        con.print(t)
    h = s["latency_histogram"]
    if h["counts"]:
        peak = max(h["counts"])
        con.print("latency histogram (ms):")
        for c, lo, hi in zip(h["counts"], h["edges"], h["edges"][1:]):
            con.print(f"  {lo:8.2f}-{hi:8.2f} | {'#' * max(0, round(40 * c / peak))} {c}", markup=False)
    if s["best"]:
        con.print("best:", markup=False)
        con.print(s["best"]["spec"], markup=False)
    if args.plot:
        con.print(f"wrote {args.plot}", markup=False)
    return 0
