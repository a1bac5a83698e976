"""The op registry: one module per ConvOp, each defining one :class:`OpSpec`.

Adding an op is one module here plus one entry in each backend's table; everything that needs
the list of ops (the IR, the grammar's op token, the fast paths, the formatter) reads it here.
"""

from __future__ import annotations

from . import cv, ds, er, mb
from .base import OpSpec, expanded_channels, make_divisible, se_channels
from .se import SE_FLAGS, SE_KINDS, SeKind

OPS: dict[str, OpSpec] = {s.name: s for s in (mb.SPEC, ds.SPEC, cv.SPEC, er.SPEC)}
OP_NAMES: tuple[str, ...] = tuple(OPS)
# Every spelling of an op (aliases are timm's) -> the canonical token.
OP_ALIASES: dict[str, str] = {a: s.name for s in OPS.values() for a in s.aliases}
OP_TOKENS: tuple[str, ...] = OP_NAMES + tuple(OP_ALIASES)


def op_spec(name: str) -> OpSpec:
    """The spec of a canonical op token (a KeyError names an op no table knows)."""
    return OPS[name]


__all__ = ["OPS", "OP_ALIASES", "OP_NAMES", "OP_TOKENS", "SE_FLAGS", "SE_KINDS", "OpSpec", "SeKind",
           "expanded_channels", "make_divisible", "op_spec", "se_channels"]
