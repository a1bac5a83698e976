"""The `mnasdsl` console script: argument parsing, command dispatch and error rendering."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..diagnostics import MnasError
from .common import UsageError

# Command modules, each with register(subparsers). Order is the order of `mnasdsl --help`.
COMMAND_MODULES = (
    "mnasdsl.cli.core",
    "mnasdsl.cli.latency_cmd",
    "mnasdsl.cli.compile_cmd",
    "mnasdsl.cli.train_cmd",
    "mnasdsl.cli.search_cmd",
    "mnasdsl.cli.supernet_cmd",
    "mnasdsl.cli.fidelity_cmd",
    "mnasdsl.cli.interop_cmd",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors: message and exit 2, no traceback
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        """Record the innermost (sub)command parser, so that a UsageError a command raises later prints
        that command's usage, as argparse's own errors do. The subcommand parses first and its
        namespace is copied up, so an outer parser leaves the attribute alone."""
        ns, rest = super().parse_known_args(args, namespace)
        if not hasattr(ns, USAGE_PARSER):
            setattr(ns, USAGE_PARSER, self)
        return ns, rest


USAGE_PARSER = "_usage_parser"


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="mnasdsl", description="A compiler for MnasNet-style mobile CNN architectures.")
    parser.add_argument("--version", action="version", version=f"mnasdsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    want_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args) or 0)
    except MnasError as err:
        sys.stderr.write(err.render() + "\n")
        if want_json:
            sys.stderr.write(json.dumps(err.to_json()) + "\n")
        return 1
    except UsageError as err:
        which = getattr(args, USAGE_PARSER, parser)
        which.print_usage(sys.stderr)
        sys.stderr.write(f"{which.prog}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mnasdsl: interrupted\n")
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except MemoryError:
        sys.stderr.write("mnasdsl: error: out of memory (is the network or batch absurdly large?)\n")
        return 1
    except Exception as exc:  # a bug, not a user error: one line, traceback only on request
        if os.environ.get("MNASDSL_DEBUG"):
            raise
        sys.stderr.write(f"mnasdsl: internal error: {type(exc).__name__}: {exc}\n"
                         "(this is a bug in mnasdsl; rerun with MNASDSL_DEBUG=1 for a traceback and report it)\n")
        return 1


def entry() -> NoReturn:
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
