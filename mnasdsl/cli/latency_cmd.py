"""Latency commands: latency (estimate), profile (measure ops on this machine), lut (import/fit/check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..diagnostics import MnasError
from ..ir import Network, SpaceDef
from ..lowering import LoweredNetwork, lower
from ..parser import parse_units, read_source, select
from ..space import Space
from .common import (
    UsageError,
    add_network_args,
    atomic_write_text,
    layer_text,
    load_network,
    positive_float,
    positive_int,
    print_json,
    seed_arg,
    shape_text,
    stderr_console,
    stdout_console,
)

# `lut check` tolerance bands for the error distribution
_BANDS = (5.0, 10.0, 20.0)


def register(sub: Any) -> None:
    p = sub.add_parser("latency", help="estimated on-device latency: total, per layer, table coverage")
    p.add_argument("file", metavar="FILE")
    _add_table_args(p)
    p.add_argument("--target-ms", type=positive_float, metavar="T",
                   help="also print the MnasNet objective factor (LAT/T)^w, soft and hard")
    p.add_argument("--measure", metavar="RUNTIME",
                   help="also time the whole network here: litert (the LiteRT interpreter, XNNPACK) or xla")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N", help="--measure litert: threads (1)")
    p.add_argument("--repeats", type=positive_int, default=20, metavar="N", help="--measure: timed runs (median; 20)")
    add_network_args(p)
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("profile", help="time each distinct op of a network or space here; write a LUT")
    p.add_argument("file", metavar="FILE_OR_SPACE")
    p.add_argument("-o", "--output", metavar="LUT.json", help="table to write (resumed if present)")
    p.add_argument("--runtime", default="xla", metavar="R",
                   help="xla (the Flax backend under XLA, default) or litert (each op converted to its own .tflite "
                        "and timed in the LiteRT interpreter with XNNPACK, the runtime phones run)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="litert: interpreter threads (default 1, as the Pixel-1 tables: one big core)")
    p.add_argument("--export-ops", metavar="DIR",
                   help="litert: instead of timing here, write the on-phone kit: one .tflite per op signature (and "
                        "the --calibrate networks), manifest.json and run_on_device.sh (adb + benchmark_model). "
                        "Into an existing kit: the logs in DIR/logs/ of models that are unchanged byte for byte are "
                        "kept, and the export is refused if any other log would be lost (see --force)")
    p.add_argument("--force", action="store_true",
                   help="with --export-ops into an existing kit: remove the logs in DIR/logs/ whose models the new "
                        "kit no longer holds byte for byte (changed, renumbered, or from an older mnasdsl) instead "
                        "of refusing; logs of unchanged models are kept either way")
    p.add_argument("--batch", type=positive_int, default=1, metavar="B", help="batch size (default 1)")
    p.add_argument("--repeats", type=positive_int, default=10, metavar="N", help="timed runs per op (median; 10)")
    p.add_argument("--warmup", type=int, default=2, metavar="W", help="untimed runs after compiling (default 2)")
    p.add_argument("--rounds", type=positive_int, default=3, metavar="R",
                   help="round-robin passes over all ops; the fastest pass's median is kept, with --reference the "
                        "median of the normalized passes (default 3; timing is cheap next to compiling, 10 is "
                        "better on a shared machine)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time (a dedicated device); cpu: process CPU time with XLA single-threaded, "
                        "robust on a shared machine (default wall)")
    p.add_argument("--reference", action="store_true",
                   help="normalize every timing by a fixed reference op timed just before it (shared machines)")
    p.add_argument("--max-ops", type=positive_int, metavar="K", help="measure at most K signatures")
    p.add_argument("--sample", type=positive_int, metavar="N",
                   help="space: profile the ops of N sampled networks instead of enumerating the space")
    p.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="seed for --sample (>= 0; default 0)")
    p.add_argument("--calibrate", type=positive_int, metavar="N",
                   help="space: also time N networks sampled with --calibration-seed end-to-end (their ops too) and "
                        "fit the fallback model and the global terms on them, stored in the table")
    p.add_argument("--calibration-seed", type=seed_arg, metavar="S",
                   help="seed of the --calibrate networks; keep it apart from the seed of any networks you check "
                        "the table on (default: --seed + 1)")
    p.add_argument("--calibration-terms", default="scale", metavar="TERMS",
                   help="global terms fitted on the --calibrate networks (default scale: a few noisy networks pin "
                        "down one term; see `lut fit --terms`)")
    p.add_argument("--device", metavar="NAME", help="device name recorded in the table (default platform:host)")
    _add_overrides(p)
    p.set_defaults(func=cmd_profile)

    lut = sub.add_parser("lut", help="latency tables: import, fit the fallback model, check accuracy")
    lsub = lut.add_subparsers(dest="lut_command", metavar="SUBCOMMAND", parser_class=type(lut))
    lsub.required = True

    p = lsub.add_parser("import", help="convert a foreign latency table, or a phone kit's benchmark_model logs")
    p.add_argument("format", choices=["proxylessnas", "benchmark-model"],
                   help="source format: proxylessnas (FILE is its table) or benchmark-model (FILE is the logs/ "
                        "directory of a phone kit run with run_on_device.sh)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", required=True, metavar="OUT.json")
    p.add_argument("--manifest", metavar="PATH",
                   help="benchmark-model: the kit's manifest.json (default FILE/../manifest.json)")
    p.add_argument("--device", help="device name to record (default pixel1; benchmark-model: the phone model "
                                    "recorded in the logs)")
    p.add_argument("--runtime", help="runtime to record (default TFLite; benchmark-model: \"LiteRT benchmark_model, "
                                     "XNNPACK, N threads\" from the logs)")
    p.add_argument("--act", default="relu6", help="proxylessnas: activation the table was measured with (relu6)")
    p.set_defaults(func=cmd_lut_import)

    p = lsub.add_parser("fit", help="fit the fallback model (NNLS, relative error) on entries [+ networks]")
    p.add_argument("file", metavar="LUT")
    p.add_argument("-o", "--output", required=True, metavar="OUT.json")
    p.add_argument("--published", metavar="CSV", help="whole-network measurements: [spec,]width,resolution,ms")
    p.add_argument("--spec", metavar="FILE", help="the network of --published rows without a spec column")
    p.add_argument("--terms", default="scale,per_op_ms,per_network_ms",
                   help="global terms calibrated on --published (default scale,per_op_ms,per_network_ms)")
    p.add_argument("--model-only", action="store_true",
                   help="calibrate the model alone (for shipping coefficients without the table)")
    p.set_defaults(func=cmd_lut_fit)

    p = lsub.add_parser("check", help="predicted vs published or locally measured whole-network latency")
    _add_table_args(p)
    p.add_argument("--published", metavar="CSV", help="published latencies: [spec,]width,resolution,ms")
    p.add_argument("--spec", metavar="FILE", help="the network of --published rows without a spec column")
    p.add_argument("--measure", metavar="FILE_OR_SPACE", help="time networks end-to-end on this machine")
    p.add_argument("--sample", type=positive_int, metavar="N", help="with --measure SPACE: N sampled networks")
    p.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="seed for --sample (default 0)")
    p.add_argument("--repeats", type=positive_int, default=10, metavar="N", help="timed runs per network (10)")
    p.add_argument("--rounds", type=positive_int, default=3, metavar="R",
                   help="round-robin passes over all networks; the fastest pass's median is kept (default 3)")
    p.add_argument("--batch", type=positive_int, default=1, metavar="B", help="batch size for --measure")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time (a dedicated device); cpu: process CPU time with XLA single-threaded, "
                        "robust on a shared machine (default wall)")
    p.add_argument("--save", metavar="DIR", help="with --measure: write the specs and measured.csv (for lut fit)")
    p.add_argument("--runtime", metavar="R",
                   help="with --measure: xla or litert (default: the runtime the table was profiled with)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="with --measure litert: threads (default: the table's)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _add_overrides(p)
    p.set_defaults(func=cmd_lut_check)


def _add_table_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--device", metavar="NAME", help="built-in device model (default pixel1)")
    g.add_argument("--lut", metavar="FILE", help="a latency table file")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    from .common import resolution_arg

    p.add_argument("--network", "--space", dest="network", metavar="NAME", help="which unit of a multi-unit file")
    p.add_argument("--width", type=positive_float, metavar="W", help="width multiplier (replaces the file's)")
    p.add_argument("--depth", type=positive_float, metavar="D", help="depth multiplier (replaces the file's)")
    p.add_argument("--resolution", type=resolution_arg, metavar="R", help="input resolution R or HxW")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in ("width", "depth", "resolution")}


def _table(args: argparse.Namespace) -> Any:
    from ..latency import load_table

    return load_table(getattr(args, "device", None), getattr(args, "lut", None))


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


# -- latency ----------------------------------------------------------------------------------

def cmd_latency(args: argparse.Namespace) -> int:
    from ..latency import HARD, SOFT, Estimator, objective_factor

    lut = _table(args)
    low = lower(load_network(args))
    est = Estimator(lut).estimate(low)
    measured = _measure_one(low, args) if args.measure else None
    factors = None
    if args.target_ms:
        t_ms = args.target_ms
        factors = {"target_ms": t_ms,
                   "soft": {"alpha": SOFT[0], "beta": SOFT[1], "factor": objective_factor(est.ms, t_ms, *SOFT)},
                   "hard": {"alpha": HARD[0], "beta": HARD[1], "factor": objective_factor(est.ms, t_ms, *HARD)}}
    if args.json:
        out: dict[str, Any] = {"name": low.name, "input": list(low.input_shape), "device": lut.device,
                               "runtime": lut.runtime, **est.to_json()}
        if factors:
            out["objective"] = factors
        if measured is not None:
            out["measured"] = measured
        print_json(out)
        return 0
    t = Table(title=f"latency of {low.name} at {shape_text(low.input_shape)} on {lut.device} ({lut.runtime})")
    for col in ("layer", "op", "output", "ms", "source"):
        t.add_column(col, justify="right" if col == "ms" else "left")
    for layer, row in zip(low.layers, est.layers, strict=True):
        t.add_row(row.name, layer_text(layer), shape_text(layer.out_shape), f"{row.ms:.3f}", row.source)
    if est.overhead_ms:
        t.add_row("(per network)", "", "", f"{est.overhead_ms:.3f}", "model")
    t.add_section()
    t.add_row("total", "", "", f"{est.ms:.2f}", "")
    con = stdout_console()
    con.print(t)
    con.print(f"{est.ms:.2f} ms on {lut.device}; table coverage {_pct(est.coverage)} of the estimate "
              f"({sum(r.source == 'lut' for r in est.layers)}/{len(est.layers)} layers from entries)")
    if measured is not None:
        same = str(lut.provenance.get("runtime_kind", "")) == args.measure
        vs = (f"the estimate is {(est.ms - measured['ms']) / measured['ms'] * 100:+.1f}% off" if same
              else f"the table is for {lut.device} ({lut.runtime}), not this runtime here")
        con.print(f"measured here: {measured['ms']:.2f} ms ({measured['runtime']}, median of {measured['repeats']}); "
                  f"{vs}")
    if factors:
        con.print(f"objective factor (LAT/T)^w at T = {args.target_ms:g} ms: soft (a=b=-0.07) "
                  f"{factors['soft']['factor']:.4f}, hard (a=0, b=-1) {factors['hard']['factor']:.4f}")
    return 0


def _measure_one(low: LoweredNetwork, args: argparse.Namespace) -> dict[str, Any]:
    """`latency --measure RUNTIME`: the whole network timed here (median of --repeats)."""
    from ..latency import profile as prof

    if args.measure not in prof.RUNTIMES:
        raise UsageError(f"unknown --measure {args.measure!r} (expected {' or '.join(prof.RUNTIMES)})")
    prepared = prof.prepare_network(low, runtime=args.measure, threads=args.threads)
    overhead = prof.call_overhead_ms("wall", runtime=args.measure, threads=args.threads)
    med, std, n = prof._time(prepared, repeats=args.repeats, warmup=3)
    if args.measure == "litert":
        from ..latency import litert

        name = litert.runtime_name(args.threads)
    else:
        import jax

        name = f"XLA/{jax.default_backend()} via jax {jax.__version__}"
    return {"runtime": name, "ms": max(med - overhead, 1e-4), "std_ms": std, "repeats": n}


def _unit(path: str, name: str | None) -> Network | SpaceDef:
    units = parse_units(read_source(path), path)
    if name is None and len(units) == 1:
        return units[0]
    kinds = {"space" if isinstance(u, SpaceDef) else "network" for u in units}
    kind = "space" if kinds == {"space"} else "network"
    if name is not None:
        for u in units:
            if u.name == name:
                return u
    return select(units, name, path, kind)  # its diagnostics name the choices


def _networks(args: argparse.Namespace, path: str) -> list[tuple[Network, LoweredNetwork]]:
    """The networks a command acts on: the file's network, or N samples of its space."""
    unit = _unit(path, getattr(args, "network", None))
    ov = _overrides(args)
    if isinstance(unit, SpaceDef):
        if not getattr(args, "sample", None):
            raise UsageError(f"{path} is a search space: pass --sample N to use N sampled networks")
        nets = _sample(unit, args.sample, args.seed)
    else:
        if getattr(args, "sample", None):
            raise UsageError("--sample applies to search spaces only")
        nets = [unit]
    nets = [n.scaled(**ov) for n in nets]
    return [(n, lower(n)) for n in nets]


def _sample(unit: SpaceDef, n: int, seed: int, tag: str = "") -> list[Network]:
    space = Space(unit)
    rng = np.random.default_rng(seed)
    return [space.decode(space.sample_indices(rng)).model_copy(update={"name": f"{unit.name}_{tag}{k}"})
            for k in range(n)]


def _calibration_seed(args: argparse.Namespace) -> int:
    return args.seed + 1 if args.calibration_seed is None else args.calibration_seed


def _calibration_networks(args: argparse.Namespace, unit: Network | SpaceDef) -> list[tuple[Network, LoweredNetwork]]:
    """Networks for fitting the global terms, sampled with their own seed so that the networks a
    table is later checked on (``lut check --measure SPACE --seed S``) are never among them."""
    if not args.calibrate:
        return []
    if not isinstance(unit, SpaceDef):
        raise UsageError("--calibrate needs a search space to sample calibration networks from")
    seed = _calibration_seed(args)
    if args.sample and seed == args.seed:
        raise UsageError("--calibration-seed must differ from --seed (calibration would see the sampled networks)")
    ov = _overrides(args)
    nets = [n.scaled(**ov) for n in _sample(unit, args.calibrate, seed, "cal")]
    return [(n, lower(n)) for n in nets]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=stderr_console(), transient=False)


# -- profile ----------------------------------------------------------------------------------

def cmd_profile(args: argparse.Namespace) -> int:
    from ..latency import profile as prof
    from ..latency.lut import Entry, read_lut

    _check_profile_args(args)
    if args.export_ops:
        return _export_ops(args)
    overhead = _setup_clock(args)
    items, cal_nets, terms = _profile_plan(args)
    out = Path(args.output)
    if out.exists():
        table = read_lut(out)
        if table.batch != args.batch:
            raise MnasError(f"measured at batch {table.batch}, not {args.batch}; use another output file",
                            path=str(out))
        was = str(table.provenance.get("runtime_kind", "xla"))
        if was != args.runtime or (was == "litert" and table.provenance.get("threads") != args.threads):
            raise MnasError(f"measured with {table.runtime}, not --runtime {args.runtime}"
                            f"{f' --threads {args.threads}' if args.runtime == 'litert' else ''}; use another "
                            "output file", path=str(out))
        here = prof.device_info() if args.runtime == "xla" else {"platform": "litert"}
        if table.provenance.get("platform") not in (None, here["platform"]):
            raise MnasError(f"measured on {table.provenance.get('platform')}, this machine runs "
                            f"{here['platform']}; use another output file", path=str(out))
        if not str(table.provenance.get("clock", "wall")).startswith(args.clock):
            raise MnasError(f"measured with the {table.provenance.get('clock')} clock, not {args.clock}", path=str(out))
        if args.reference != ("reference_ms" in table.provenance):
            raise MnasError(f"{'not ' if args.reference else ''}measured with --reference; keep the setting "
                            "or use another output file", path=str(out))
        reference = _reference(table, args, overhead)
        net_reference = _reference(table, args, overhead, network=True) if cal_nets else None
    else:
        reference = prof.Reference(clock=args.clock, repeats=args.repeats, overhead_ms=overhead,
                                   runtime=args.runtime, threads=args.threads) if args.reference else None
        table = prof.new_table(args.device, args.batch, repeats=args.repeats, rounds=args.rounds, clock=args.clock,
                               overhead_ms=overhead, reference=reference, runtime=args.runtime, threads=args.threads)
        net_reference = None
    if reference is not None and cal_nets and net_reference is None:
        net_reference = prof.Reference(clock=args.clock, repeats=args.repeats, overhead_ms=overhead,
                                       runtime=args.runtime, threads=args.threads, network=True)
        table = table.replace(provenance={**table.provenance, "reference_network": "reference_a1 (MnasNet-A1 "
                                          "layout, 224x224, 1000 classes)",
                                          "reference_network_ms": net_reference.baseline_ms})
    todo = [(k, lay, low) for k, (lay, low) in items if k not in table.entries]
    err = stderr_console()
    err.print(f"{len(items)} op signatures, {len(items) - len(todo)} already in {out}, {len(todo)} to measure "
              f"on {table.provenance.get('device_kind', '?')}")
    entries = dict(table.entries)
    cal_ms: list[float] = []
    with _progress() as bar:
        task = bar.add_task("compiling", total=len(todo))
        prepared = []
        for i, (_, layer, low) in enumerate(todo):
            prepared.append(prof.prepare_layer(layer, low, batch=args.batch, runtime=args.runtime,
                                               threads=args.threads))
            bar.advance(task)
            if i % 25 == 24 or i == len(todo) - 1:  # resumable: a crash loses at most a few ops
                part = prof.time_rounds(prepared[-(i % 25 + 1):], repeats=args.repeats, rounds=1, warmup=args.warmup,
                                        clock=args.clock, overhead_ms=overhead, reference=reference)
                entries.update({k: e for (k, _, _), e in zip(todo[i - len(part) + 1:i + 1], part, strict=True)})
                atomic_write_text(out, table.replace(entries=dict(entries)).dumps())
        if cal_nets:
            task = bar.add_task("compiling calibration networks", total=len(cal_nets))
            for _, low in cal_nets:
                prepared.append(prof.prepare_network(low, batch=args.batch, runtime=args.runtime,
                                                     threads=args.threads))
                bar.advance(task)
        task = bar.add_task("timing", total=len(prepared) * args.rounds)

        first = {k: entries[k] for k, _, _ in todo}  # the quick pass right after compiling counts as a round

        def save(res: list[Any]) -> None:
            for (k, _, _), e in zip(todo, res[:len(todo)], strict=True):
                entries[k] = e if reference else Entry(min(e.mean, first[k].mean), e.std, e.count + first[k].count)
            atomic_write_text(out, table.replace(entries=dict(entries)).dumps())
            cal_ms[:] = [e.mean for e in res[len(todo):]]

        # Calibration networks share the rounds with the ops: load that drifts over minutes then
        # shifts both alike instead of biasing the fitted terms.
        if prepared:
            refs = [reference] * len(todo) + [net_reference or reference] * (len(prepared) - len(todo))
            prof.time_rounds(prepared, repeats=args.repeats, rounds=args.rounds, warmup=1, on_round=save,
                             on_item=lambda: bar.advance(task), clock=args.clock, overhead_ms=overhead,
                             reference=refs)
    if not todo and not out.exists():
        atomic_write_text(out, table.dumps())
    if cal_nets:
        table = _calibrate(table.replace(entries=dict(entries)), cal_nets, cal_ms, terms, args)
        atomic_write_text(out, table.dumps())
        fit = table.model.fit if table.model else {}
        err.print(f"calibrated on {len(cal_nets)} networks (seed {table.provenance['calibration']['seed']}): "
                  f"MAPE {fit.get('networks_mape_pct_uncalibrated')}% as a plain sum of entries, "
                  f"{fit.get('networks_mape_pct_in_sample')}% calibrated, "
                  f"{fit.get('networks_mape_pct_leave_one_out', '-')}% leave-one-out")
    err.print(f"wrote {out}: {len(entries)} entries")
    return 0


def _check_profile_args(args: argparse.Namespace) -> None:
    from ..latency.profile import RUNTIMES

    if args.runtime not in RUNTIMES:
        raise UsageError(f"unknown --runtime {args.runtime!r} (expected {' or '.join(RUNTIMES)})")
    if args.export_ops:
        if args.runtime != "litert":
            raise UsageError("--export-ops writes LiteRT models: pass --runtime litert")
        if args.output:
            raise UsageError("--export-ops writes a kit to run elsewhere; -o (a table timed here) does not apply")
    elif not args.output:
        raise UsageError("pass -o LUT.json (or --export-ops DIR with --runtime litert)")
    if args.force and not args.export_ops:
        raise UsageError("--force goes with --export-ops (it lets a re-export remove the kit's stale logs)")
    if args.runtime == "litert" and args.clock == "cpu" and args.threads != 1:
        raise UsageError("--clock cpu counts every thread's CPU time: use it with --threads 1")


def _profile_plan(args: argparse.Namespace) -> tuple[list[Any], list[tuple[Network, LoweredNetwork]], list[str]]:
    """The op signatures to measure (the calibration networks' ops included), the calibration
    networks, and the calibration terms."""
    from ..latency import profile as prof
    from ..latency.model import CALIBRATION_TERMS

    unit = _unit(args.file, args.network)
    if isinstance(unit, SpaceDef) and not args.sample:
        ov = {k: v for k, v in _overrides(args).items() if v is not None}
        sigs = prof.space_signatures(Space(unit), args.max_ops, **ov)
    else:
        sigs = prof.network_signatures(low for _, low in _networks(args, args.file))
    items = list(sigs.items())[: args.max_ops] if args.max_ops else list(sigs.items())
    cal_nets = _calibration_networks(args, unit)
    terms = [t.strip() for t in args.calibration_terms.split(",") if t.strip()]
    bad = [t for t in terms if t not in CALIBRATION_TERMS]
    if bad or not terms:
        raise UsageError(f"--calibration-terms: expected some of {', '.join(CALIBRATION_TERMS)}, got {bad}")
    have = {k for k, _ in items}
    items += [(k, v) for k, v in prof.network_signatures(low for _, low in cal_nets).items() if k not in have]
    return items, cal_nets, terms


def _export_ops(args: argparse.Namespace) -> int:
    """`profile --runtime litert --export-ops DIR`: the on-phone kit (see mnasdsl.latency.phone)."""
    from ..backends import tflite
    from ..formatter import format as format_ir
    from ..latency import litert
    from ..latency.phone import KitModel, write_kit

    items, cal_nets, _ = _profile_plan(args)
    models: list[Any] = []
    with _progress() as bar:
        task = bar.add_task("converting", total=len(items) + len(cal_nets))
        for i, (key, (layer, low)) in enumerate(items):
            models.append(KitModel(f"op_{i:04d}", litert.layer_tflite(layer, low, batch=args.batch), "op", key=key,
                                   input_shape=layer.in_shape, batch=args.batch))
            bar.advance(task)
        for j, (net, low) in enumerate(cal_nets):
            models.append(KitModel(f"net_{j:03d}", litert.network_tflite(low, batch=args.batch), "network",
                                   spec=format_ir(net), input_shape=low.input_shape, batch=args.batch))
            bar.advance(task)
    done = write_kit(args.export_ops, models, converter=tflite.converter_version(),
                     runtime=f"LiteRT benchmark_model, XNNPACK, {args.threads} thread(s)", threads=args.threads,
                     num_runs=max(args.repeats, 50), warmup_runs=max(args.warmup, 10), batch=args.batch,
                     force=args.force)
    err = stderr_console()
    err.print(f"wrote {done.path}: {len(items)} op models, {len(cal_nets)} calibration networks, "
              f"manifest.json, run_on_device.sh (see README.txt there)", highlight=False, markup=False)
    for line in _kit_log_lines(done):
        err.print(line, highlight=False, markup=False)
    return 0


def _kit_log_lines(done: Any) -> list[str]:
    """What a re-export did with the old kit's logs: phone time is never dropped without saying so."""
    if not done.replaced:
        return []
    if not done.kept and not done.removed:
        return ["replaced the kit there (it held no logs)"]

    def names(xs: tuple[str, ...]) -> str:
        return ", ".join(xs[:10]) + (f", ... ({len(xs) - 10} more)" if len(xs) > 10 else "")

    logs = done.path / "logs"
    out = []
    if done.kept:
        out.append(f"kept {len(done.kept)} logs in {logs} (their models are unchanged): {names(done.kept)}")
    else:
        out.append("kept 0 logs of the old kit")
    if done.removed:
        out.append(f"removed {len(done.removed)} stale entries of the old kit's logs/ (--force): {names(done.removed)}")
    return out


def _calibrate(table: Any, cal_nets: list[tuple[Network, LoweredNetwork]], ms: list[float], terms: list[str],
               args: argparse.Namespace) -> Any:
    """Fit the fallback model on the entries and the global terms on the calibration networks."""
    from ..latency.model import fit_lut

    lows = [low for _, low in cal_nets]
    seed = _calibration_seed(args)
    prov = {**table.provenance, "calibration": {
        "networks": len(lows), "seed": seed, "space": Path(args.file).name, "terms": terms,
        "measured_ms": [round(float(m), 5) for m in ms]}}
    note = f"global terms fitted on {len(lows)} networks sampled with seed {seed}, none of them checked on"
    return fit_lut(table.replace(provenance=prov), list(zip(lows, (float(m) for m in ms), strict=True)),
                   terms=terms, note=note)


# -- lut import / fit / check -----------------------------------------------------------------

def cmd_lut_import(args: argparse.Namespace) -> int:
    from ..latency.lut import import_proxylessnas

    if args.format == "benchmark-model":
        return _import_benchmark_model(args)
    if args.manifest:
        raise UsageError("--manifest goes with the benchmark-model format")
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MnasError("no such file", path=args.file) from None
    except IsADirectoryError:
        raise MnasError("is a directory (directories of logs are the benchmark-model format)", path=args.file) from None
    except (OSError, UnicodeDecodeError) as e:
        raise MnasError(f"cannot read: {e}", path=args.file) from None
    lut = import_proxylessnas(text, args.file, device=args.device or "pixel1", runtime=args.runtime or "TFLite",
                              act=args.act)
    atomic_write_text(args.output, lut.dumps())
    sys.stderr.write(f"wrote {args.output}: {len(lut.entries)} entries ({lut.device}, {lut.runtime})\n")
    return 0


def _import_benchmark_model(args: argparse.Namespace) -> int:
    """`lut import benchmark-model LOGDIR`: a phone kit's logs to a table, with a short account."""
    from ..latency.phone import import_logs

    lut, rep = import_logs(args.file, args.manifest, device=args.device, runtime=args.runtime)
    atomic_write_text(args.output, lut.dumps())
    say = sys.stderr.write
    for w in rep.warnings:
        say(f"warning: {w}\n")
    say(f"{len(rep.measured)} ops measured from {rep.logs} logs on {lut.device} ({lut.runtime})\n")
    if rep.missing:
        shown = ", ".join(rep.missing[:10]) + (f", ... ({len(rep.missing) - 10} more)" if len(rep.missing) > 10 else "")
        say(f"{len(rep.missing)} ops missing (no log), priced by the fitted model: {shown}\n")
    else:
        say("0 ops missing\n")
    if rep.networks:
        say(f"{len(rep.networks)} networks calibrated ({', '.join(rep.calibration_terms)}): MAPE "
            f"{rep.mape_before_pct}% before, {rep.mape_after_pct}% after\n")
    else:
        say("0 networks calibrated (no network logs): the table is a plain sum of per-op times\n")
    if rep.missing_networks:
        say(f"{len(rep.missing_networks)} calibration networks had no log: {', '.join(rep.missing_networks[:10])}\n")
    say(f"wrote {args.output}: {len(lut.entries)} entries\n")
    return 0


def _published(args: argparse.Namespace) -> list[tuple[str, LoweredNetwork, float]]:
    from ..latency.published import load_spec, read_published

    spec = load_spec(args.spec, getattr(args, "network", None)) if args.spec else None
    return read_published(args.published, spec)


def cmd_lut_fit(args: argparse.Namespace) -> int:
    from ..latency.lut import read_lut
    from ..latency.model import CALIBRATION_TERMS, fit_lut

    lut = read_lut(args.file)
    if not lut.entries:
        raise MnasError(f"{args.file}: no entries to fit on")
    terms = [t.strip() for t in args.terms.split(",") if t.strip()]
    bad = [t for t in terms if t not in CALIBRATION_TERMS]
    if bad or not terms:
        raise UsageError(f"--terms: expected some of {', '.join(CALIBRATION_TERMS)}, got {args.terms!r}")
    if args.spec and not args.published:
        raise UsageError("--spec needs --published")
    nets = [(low, ms) for _, low, ms in _published(args)] if args.published else []
    fitted = fit_lut(lut, nets, terms=terms, use_entries=not args.model_only)
    n_coef = len(fitted.model.coef) if fitted.model is not None else 0
    if len(lut.entries) < 2 * n_coef:  # NNLS fits them all the same, but the model is barely constrained
        sys.stderr.write(f"warning: {args.file}: {len(lut.entries)} entries fit {n_coef} coefficients; the fallback "
                         f"model is poorly determined below {2 * n_coef} entries (profile more ops)\n")
    atomic_write_text(args.output, fitted.dumps())
    con = stdout_console()
    assert fitted.model is not None
    con.print(f"wrote {args.output}")
    for name, c in zip(fitted.model.to_json()["features"], fitted.model.coef, strict=True):
        con.print(f"  {name:>14} {c:.6g}")
    for k, v in fitted.model.calibration.to_json().items():
        con.print(f"  {k:>14} {v:.6g}")
    for k, v in fitted.model.fit.items():
        con.print(f"  {k}: {v}")
    return 0


def _distribution(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    e = (pred - true) / true * 100
    a = np.abs(e)
    out = {"n": int(len(e)), "mape_pct": float(a.mean()), "median_abs_pct": float(np.median(a)),
           "p90_abs_pct": float(np.percentile(a, 90)), "max_abs_pct": float(a.max()), "bias_pct": float(e.mean())}
    for b in _BANDS:
        out[f"within_{b:g}pct"] = float(np.mean(a <= b))
    return out


def _print_distribution(con: Any, title: str, d: dict[str, float]) -> None:
    bands = ", ".join(f"±{b:g}%: {d[f'within_{b:g}pct'] * 100:.0f}%" for b in _BANDS)
    con.print(f"{title}: MAPE {d['mape_pct']:.2f}%, median {d['median_abs_pct']:.2f}%, p90 {d['p90_abs_pct']:.2f}%, "
              f"max {d['max_abs_pct']:.2f}%, bias {d['bias_pct']:+.2f}%; within {bands}")


def cmd_lut_check(args: argparse.Namespace) -> int:
    from ..latency import Estimator
    from ..latency.features import N_FEATURES, layer_features
    from ..latency.lut import Calibration, Model
    from ..latency.model import CALIBRATION_TERMS, loo_calibration

    if bool(args.published) == bool(args.measure):
        raise UsageError("pass exactly one of --published CSV or --measure FILE_OR_SPACE")
    if args.published and (args.sample or args.save):
        raise UsageError("--sample and --save go with --measure")
    lut = _table(args)
    if args.published:
        rows = _published(args)
        labels = [r[0] for r in rows]
        lows = [r[1] for r in rows]
        true = np.array([r[2] for r in rows])
    else:
        pairs = _networks(args, args.measure)
        lows = [low for _, low in pairs]
        labels = [f"{low.name} {shape_text(low.input_shape)}" for low in lows]
        true = _measure(lows, args, lut)
    est = Estimator(lut)
    pred = np.array([est.estimate_ms(low) for low in lows])
    cover = np.array([est.estimate(low).coverage for low in lows])
    # Leave-one-out: recalibrate the global terms without each network (the per-op part is fixed).
    bare = Estimator(lut.replace(model=Model(lut.model.coef, Calibration(), lut.model.fit)) if lut.model else lut)
    sums = np.array([sum(bare.layer_ms(ly) for ly in low.layers) for low in lows])
    ops = np.array([sum(layer_features(ly)[N_FEATURES - 1] for ly in low.layers) for low in lows])
    terms = (lut.model.fit.get("calibration_terms") if lut.model else None) or list(CALIBRATION_TERMS)
    loo = loo_calibration(sums, ops, true, terms) if len(lows) > len(terms) + 1 else None
    dist = {"as_is": _distribution(pred, true), "uncalibrated_sum": _distribution(sums, true)}
    if loo is not None:
        dist["leave_one_out_calibrated"] = _distribution(loo, true)
    if args.save and args.measure:
        _save_measurements(Path(args.save), [n for n, _ in pairs], true)
    if args.json:
        print_json({"device": lut.device, "runtime": lut.runtime, "networks": [
            {"label": lab, "predicted_ms": float(p), "measured_ms": float(t), "error_pct": float((p - t) / t * 100),
             "coverage": float(c)} for lab, p, t, c in zip(labels, pred, true, cover, strict=True)],
            "errors": dist, "measured_with": getattr(args, "runtime", None) if args.measure else None,
            "drift_pct": getattr(args, "drift_pct", None)})
        return 0
    src = "measured here" if args.measure else "published"
    t = Table(title=f"{lut.device} ({lut.runtime}): predicted vs {src}")
    for col in ("network", "predicted ms", f"{src} ms", "error", "coverage"):
        t.add_column(col, justify="left" if col == "network" else "right")
    for lab, p, m, c in zip(labels, pred, true, cover, strict=True):
        t.add_row(lab, f"{p:.2f}", f"{m:.2f}", f"{(p - m) / m * 100:+.1f}%", _pct(c))
    con = stdout_console()
    con.print(t)
    _print_distribution(con, "as is", dist["as_is"])
    _print_distribution(con, "sum of per-op times, uncalibrated", dist["uncalibrated_sum"])
    if loo is not None:
        _print_distribution(con, f"leave-one-out ({', '.join(terms)} refitted without each network)",
                            dist["leave_one_out_calibrated"])
    return 0


def _setup_clock(args: argparse.Namespace) -> float:
    """Configure XLA for the chosen clock; the per-call dispatch overhead to subtract."""
    from ..latency import profile as prof

    if args.runtime == "litert":
        return prof.call_overhead_ms(args.clock, runtime="litert", threads=args.threads)
    if args.clock == "cpu":
        if not prof.single_thread_xla():
            stderr_console().print("warning: XLA was already started; the cpu clock may count several threads")
        import jax

        if jax.default_backend() != "cpu":
            raise UsageError(f"--clock cpu times host CPU work; the default device here is {jax.default_backend()}")
    return prof.call_overhead_ms(args.clock)


def _reference(table: Any, args: argparse.Namespace, overhead: float, network: bool = False) -> Any:
    """The table's reference op (or reference network) with its recorded baseline; None for tables
    profiled without one."""
    from ..latency import profile as prof

    key = "reference_network_ms" if network else "reference_ms"
    base = table.provenance.get(key)
    if base is None:
        return None
    if not isinstance(base, (int, float)) or base <= 0:
        raise MnasError(f"latency table for {table.device}: `provenance.{key}` must be a positive number")
    return prof.Reference(clock=args.clock, repeats=args.repeats, overhead_ms=overhead, baseline_ms=float(base),
                          runtime=args.runtime, threads=args.threads, network=network)


def _measure(lows: list[LoweredNetwork], args: argparse.Namespace, table: Any) -> np.ndarray:
    from ..latency.profile import RUNTIMES

    prov = table.provenance
    args.runtime = args.runtime or str(prov.get("runtime_kind", "xla"))
    if args.runtime not in RUNTIMES:
        raise UsageError(f"unknown --runtime {args.runtime!r} (expected {' or '.join(RUNTIMES)})")
    args.threads = args.threads or int(prov.get("threads", 1) or 1)
    if str(prov.get("runtime_kind", "xla")) != args.runtime:
        stderr_console().print(f"warning: the table was measured with {table.runtime}; timing {args.runtime} here")
    overhead = _setup_clock(args)
    op_ref = _reference(table, args, overhead)
    net_ref = _reference(table, args, overhead, network=True)
    con = stderr_console()
    args.drift_pct = {}
    for kind, ref in (("op", op_ref), ("network", net_ref)):
        if ref is not None:
            now = ref.now_ms()
            args.drift_pct[kind] = (now / ref.baseline_ms - 1) * 100
            con.print(f"reference {kind} now {now:.3f} ms, {ref.baseline_ms:.3f} ms at profiling "
                      f"(machine drift {args.drift_pct[kind]:+.1f}%)")
    if op_ref is not None and net_ref is None:
        con.print("warning: the table has no reference network (profile it with --reference --calibrate N): whole "
                  "networks are normalized by the reference op, which does not see cache and memory contention")
    reference = net_ref or op_ref
    if reference is not None:
        which = "network" if net_ref else "op"
        con.print(f"normalizing the networks to the profiling baseline of the reference {which}")
    return _time_networks(lows, args, overhead, reference)


def _time_networks(lows: list[LoweredNetwork], args: argparse.Namespace, overhead: float,
                   reference: Any) -> np.ndarray:
    from ..latency import profile as prof

    with _progress() as bar:
        task = bar.add_task("compiling", total=len(lows))
        prepared = []
        for low in lows:
            prepared.append(prof.prepare_network(low, batch=args.batch, runtime=args.runtime, threads=args.threads))
            bar.advance(task)
        task = bar.add_task("timing", total=len(lows) * args.rounds)
        res = prof.time_rounds(prepared, repeats=args.repeats, rounds=args.rounds, on_item=lambda: bar.advance(task),
                               clock=args.clock, overhead_ms=overhead, reference=reference)
    return np.array([e.mean for e in res])


def _save_measurements(root: Path, nets: list[Network], ms: np.ndarray) -> None:
    """Each measured network as a spec file plus measured.csv (spec,width,resolution,ms): the
    input of `lut fit --published` for calibrating a profiled table on whole networks."""
    from ..formatter import format as format_ir

    rows = ["spec,width,resolution,ms"]
    for net, m in zip(nets, ms, strict=True):
        name = f"{net.name}.mnas"
        atomic_write_text(root / name, format_ir(net))
        rows.append(f"{name},{net.width:g},{net.input[0]},{m:.6f}")
    atomic_write_text(root / "measured.csv", "\n".join(rows) + "\n")
