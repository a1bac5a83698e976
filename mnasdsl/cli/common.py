"""Shared CLI plumbing: network options, loading with overrides, JSON output, error exits.

Command modules expose ``register(subparsers)``; each command function takes the parsed
arguments and returns an exit code. User errors are raised as MnasError (exit 1) or
UsageError (exit 2) and rendered by ``main`` — never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..diagnostics import MnasError
from ..fsutil import atomic_write_bytes, atomic_write_text  # noqa: F401 - re-exported for commands
from ..ir import Network
from ..lowering import lower
from ..ops import OPS
from ..parser import parse_units, read_source, select

PIPE_WIDTH = 200  # console width when output is not a terminal (rich would assume 80 and wrap tables)


class UsageError(Exception):
    """A bad command line (exit 2)."""


def _console(stderr: bool) -> Console:
    """A console that wraps tables at the terminal's width, but not at rich's default 80 columns when
    piped or redirected (a file or a pipe has no width; COLUMNS, when set, still wins)."""
    con = Console(stderr=stderr, soft_wrap=True, highlight=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con.width = PIPE_WIDTH
    return con


def stdout_console() -> Console:
    return _console(stderr=False)


def stderr_console() -> Console:
    return _console(stderr=True)


def human_count(n: float, decimals: int = 2) -> str:
    """A count at a human scale (312.18M, 2.22T): totals of absurd networks stay readable instead of
    printing as millions with ten digits."""
    for unit, scale in (("", 1.0), ("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("P", 1e15)):
        v = n / scale
        if round(abs(v), decimals) < 1000 or unit == "P":
            if not unit:
                return f"{n:.0f}" if float(n).is_integer() else f"{n:.{decimals}f}"
            return f"{v:.{decimals}f}{unit}"
    raise AssertionError("unreachable")


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def finite_float(text: str) -> float:
    """Any real number: NaN and infinities would turn every result they touch into NaN or inf."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive_int(text: str, least: int = 1) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {v}")
    return v


def seed_arg(text: str) -> int:
    """A usage error for a negative seed: numpy's seed sequences take only non-negative integers."""
    return positive_int(text, least=0)


def resolution_arg(text: str) -> int | tuple[int, int]:
    try:
        if "x" in text:
            h, w = text.split("x", 1)
            return (positive_int(h), positive_int(w))
        return positive_int(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected R or HxW, got {text!r}") from None


def add_network_args(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """The options every command that takes a network accepts."""
    p.add_argument("--network", metavar="NAME", help="which network of a multi-network file")
    add_override_args(p)
    if json_flag:
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def add_override_args(p: argparse.ArgumentParser) -> None:
    """--width/--depth/--resolution/--classes, typed alike in every command (bad values are usage errors)."""
    p.add_argument("--width", type=positive_float, metavar="W", help="width multiplier (replaces the file's)")
    p.add_argument("--depth", type=positive_float, metavar="D", help="depth multiplier (replaces the file's)")
    p.add_argument("--resolution", type=resolution_arg, metavar="R", help="input resolution R or HxW")
    p.add_argument("--classes", type=positive_int, metavar="C", help="number of classes")


OVERRIDES = ("width", "depth", "resolution", "classes")


def load_network(args: argparse.Namespace, path: str | None = None) -> Network:
    """Load the selected network of ``args.file`` and apply command-line overrides.

    The overridden network is lowered once here: a rule only the overrides break (a block's `i` no
    longer matching after --width) is then reported in the file, with its source line and caret, and
    names the override that caused it.
    """
    path = path or args.file
    text = read_source(path)
    net = select(parse_units(text, path), getattr(args, "network", None), path, "network")
    assert isinstance(net, Network)
    given = {k: getattr(args, k, None) for k in OVERRIDES}
    scaled = net.scaled(**given)
    if scaled is not net:
        try:
            lower(scaled)
        except MnasError as err:
            used = [f"--{k} {_override_text(v)}" for k, v in given.items() if v is not None]
            shaping = [u for u in used if u.startswith(("--width", "--depth"))] or used
            raise err.located(path, text, f"this holds at the file's own settings; the command-line "
                                          f"{' '.join(shaping)} breaks it") from None
    return scaled


def _override_text(v: Any) -> str:
    return "x".join(str(x) for x in v) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def enable_compilation_cache() -> None:
    """Persist XLA executables across runs (CLI only, so train, eval, predict and compile of one
    network compile once). MNASDSL_JAX_CACHE=0 disables it; MNASDSL_JAX_CACHE=DIR names the directory;
    a JAX_COMPILATION_CACHE_DIR set by the user wins."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    where = os.environ.get("MNASDSL_JAX_CACHE")
    if where in ("0", ""):
        return
    base = Path(where) if where else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnasdsl/jax"
    try:
        base.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(base))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (OSError, AttributeError, ValueError):
        pass  # a cache is an optimization; never fail a compile over it


def cost_table(title: str) -> Table:
    """The per-layer params/MACs table `cost` and `compile` print (rows: name, op, output, params, MACs)."""
    t = Table(title=title)
    t.add_column("layer")
    t.add_column("op")
    t.add_column("output")
    t.add_column("params", justify="right")
    t.add_column("MACs", justify="right")
    return t


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(x) for x in shape)


def layer_text(layer: Any) -> str:
    """One table cell describing a lowered layer: op, kernel, stride, expansion, SE, skip."""
    if layer.op == "fc":  # the classifier; MobileNetV3's pooled head (dense + bias + act)
        return "pool+fc" if layer.kind == "classifier" else f"pool+fc {layer.act}"
    parts = [layer.op, f"k{layer.kernel}", f"s{layer.stride[0]}{layer.stride[1]}"]
    if OPS[layer.op].expands:
        parts.append(f"e{layer.expansion:g}")
    if layer.se:
        parts.append(f"se{layer.se_ratio:g}({layer.se})")
    if layer.skip != "none":
        parts.append(layer.skip)
    return " ".join(parts)

