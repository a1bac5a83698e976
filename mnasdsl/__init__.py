"""mnasdsl: a compiler for MnasNet-style mobile CNN architectures and search spaces."""

from __future__ import annotations

from .blocks import parse_block
from .cost import Cost, cost
from .diagnostics import Diagnostic, MnasError, Span
from .formatter import format, format_source
from .ir import Block, Network, SpaceDef
from .lowering import Layer, LoweredNetwork, lower
from .parser import load, parse
from .space import Space, load_space

__version__ = "0.1.0"

__all__ = [
    "Block",
    "Cost",
    "Diagnostic",
    "Layer",
    "LoweredNetwork",
    "MnasError",
    "Network",
    "Space",
    "SpaceDef",
    "Span",
    "cost",
    "format",
    "format_source",
    "load",
    "load_space",
    "lower",
    "parse",
    "parse_block",
]
