"""Search spaces: decisions, sampling, mutation and encoding over a SpaceDef.

A decision vector has one index per decision (``decisions()`` order: block by block, fields in
canonical order) and ``decode`` maps it to a concrete Network. ``decode`` is many-to-one (a
block whose relative repeats reach 0 contributes no layer, whatever its other decisions), so
network identity is judged on the lowered form.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .blocks import make_block
from .diagnostics import Diagnostic, DiagnosticSink, MnasError, Span
from .ir import Block, FieldValue, Network, SpaceBlock, SpaceDef
from .lowering import LoweredNetwork, lower

RngLike = "np.random.Generator | random.Random | int | None"
_MAX_CHECK = 20000  # combinations per block that load-time validation enumerates exhaustively


@dataclass(frozen=True)
class Decision:
    """One controller token: where it is, which fields it sets, and its alternatives."""

    index: int
    block: int
    location: str
    fields: tuple[str, ...]
    choices: tuple[str, ...]

    def __iter__(self) -> Any:  # unpacks as (location, choices)
        return iter((self.location, self.choices))


def _rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    return np.random.default_rng(rng)


def _merge(sb: SpaceBlock, picks: Sequence[int]) -> dict[str, FieldValue]:
    fields = dict(sb.fixed)
    for c, i in zip(sb.choices, picks):
        for f, v in c.options[i].assign:
            fields[f] = v
    if "repeats_delta" in fields:
        fields["repeats"] = int(fields.get("repeats", 1)) + int(fields.pop("repeats_delta"))  # type: ignore[arg-type]
    return fields


def _block_from(sb: SpaceBlock, picks: Sequence[int], sink: DiagnosticSink) -> Block | None:
    fields = _merge(sb, picks)
    if int(fields.get("repeats", 1)) == 0:  # type: ignore[arg-type]
        return None
    return make_block(fields, None, sb.span, sink)


def check_space_blocks(space: SpaceDef, block_spans: list[Span], sink: DiagnosticSink) -> None:
    """Every combination of a block's decisions must give a valid block (cross-field rules)."""
    can_vanish = []
    for sb, span in zip(space.blocks, block_spans):
        sizes = [len(c.options) for c in sb.choices]
        total = math.prod(sizes)
        combos: Iterable[tuple[int, ...]]
        if total <= _MAX_CHECK:
            combos = itertools.product(*[range(n) for n in sizes])
        else:
            r = np.random.default_rng(0)
            combos = [tuple(int(r.integers(n)) for n in sizes) for _ in range(_MAX_CHECK)]
        vanish = False
        for picks in combos:
            trial = DiagnosticSink(sink.path)
            fields = _merge(sb, picks)
            if int(fields.get("repeats", 1)) == 0:  # type: ignore[arg-type]
                vanish = True
                continue
            make_block(fields, None, span, trial)
            if trial:
                labels = [c.options[i].label for c, i in zip(sb.choices, picks)]
                msg = trial.items[0].message
                sink.error(f"invalid combination of choices ({', '.join(labels)}): {msg}", span)
                break
        can_vanish.append(vanish)
    if space.blocks and all(can_vanish):
        sink.error("every block of this space can reach 0 repeats: a sample could have no blocks", space.span)


class Space:
    """The API a controller sees: size, decisions, sample, mutate, encode, decode."""

    def __init__(self, spec: SpaceDef) -> None:
        self.spec = spec
        self.name = spec.name
        decs: list[Decision] = []
        for bi, sb in enumerate(spec.blocks):
            for c in sb.choices:
                loc = f"blocks[{bi}].{'+'.join(c.fields)}"
                decs.append(Decision(len(decs), bi, loc, c.fields, tuple(o.label for o in c.options)))
        self._decisions = tuple(decs)
        self._per_block = [len(sb.choices) for sb in spec.blocks]
        self._block_cache: dict[tuple[int, tuple[int, ...]], Block | None] = {}
        self._sig_cache: dict[tuple[int, ...], tuple[Network, LoweredNetwork, tuple[object, ...]]] = {}
        self._header = {k: getattr(spec, k) for k in (
            "input", "classes", "width", "depth", "divisor", "min_depth", "dropout", "bn_momentum", "bn_eps",
            "padding", "activation", "head_mode", "stem_mode", "expansion_divisor", "head_pooled")}

    # -- shape of the space -------------------------------------------------------------------
    def size(self) -> int:
        """Exact number of decision vectors (the paper's count; several may give one network)."""
        return math.prod(len(d.choices) for d in self._decisions)

    def decisions(self) -> list[Decision]:
        return list(self._decisions)

    @property
    def num_choices(self) -> list[int]:
        return [len(d.choices) for d in self._decisions]

    # -- decision vectors <-> networks ----------------------------------------------------------
    def split(self, indices: Sequence[int]) -> list[tuple[int, ...]]:
        """A decision vector as one tuple of picks per block (in block order)."""
        out, k = [], 0
        for n in self._per_block:
            out.append(tuple(int(i) for i in indices[k:k + n]))
            k += n
        return out

    def decode(self, indices: Sequence[int]) -> Network:
        idx = [int(i) for i in indices]
        if len(idx) != len(self._decisions):
            raise MnasError(f"decision vector has {len(idx)} entries; space `{self.name}` has "
                            f"{len(self._decisions)} decisions")
        for d, i in zip(self._decisions, idx):
            if not 0 <= i < len(d.choices):
                raise MnasError(f"decision {d.location} index {i} is out of range 0..{len(d.choices) - 1}")
        blocks = []
        for bi, picks in enumerate(self.split(idx)):
            key = (bi, picks)
            if key not in self._block_cache:
                sink = DiagnosticSink()
                blk = _block_from(self.spec.blocks[bi], picks, sink)
                if sink:
                    raise MnasError(sink.items)
                self._block_cache[key] = blk
            b = self._block_cache[key]
            if b is not None:
                blocks.append(b)
        if not blocks:
            raise MnasError("this decision vector gives a network with no blocks")
        return Network.model_construct(name=self.name, stem=self.spec.stem, head=self.spec.head,
                                       blocks=tuple(blocks), span=None, spans={}, **self._header)

    def sample_indices(self, rng: Any = None) -> list[int]:
        g = _rng(rng)
        while True:
            idx = [int(g.integers(len(d.choices))) for d in self._decisions]
            if self._nonempty(idx):
                return idx

    def _nonempty(self, idx: Sequence[int]) -> bool:
        for bi, picks in enumerate(self.split(idx)):
            if int(_merge(self.spec.blocks[bi], picks).get("repeats", 1)) > 0:  # type: ignore[arg-type]
                return True
        return False

    def sample(self, rng: Any = None) -> Network:
        return self.decode(self.sample_indices(rng))

    def encode(self, network: Network) -> list[int]:
        """A decision vector that decodes to ``network`` (exact, on the IR)."""
        target = list(network.blocks)
        per_block_opts: list[list[tuple[tuple[int, ...], Block | None]]] = []
        for bi, sb in enumerate(self.spec.blocks):
            opts = []
            for picks in itertools.product(*[range(len(c.options)) for c in sb.choices]):
                key = (bi, tuple(picks))
                if key not in self._block_cache:
                    self._block_cache[key] = _block_from(sb, picks, DiagnosticSink())
                opts.append((tuple(picks), self._block_cache[key]))
            per_block_opts.append(opts)
        # Align space blocks with network blocks (a space block may vanish).
        n, m = len(per_block_opts), len(target)
        memo: dict[tuple[int, int], list[tuple[int, ...]] | None] = {}

        def solve(i: int, j: int) -> list[tuple[int, ...]] | None:
            if (i, j) in memo:
                return memo[(i, j)]
            res: list[tuple[int, ...]] | None = None
            if i == n:
                res = [] if j == m else None
            else:
                for picks, blk in per_block_opts[i]:
                    if blk is None:
                        rest = solve(i + 1, j)
                    elif j < m and blk == _strip_input(target[j]):
                        rest = solve(i + 1, j + 1)
                    else:
                        continue
                    if rest is not None:
                        res = [picks] + rest
                        break
            memo[(i, j)] = res
            return res

        header_ok = all(getattr(network, k) == v for k, v in self._header.items()) and \
            network.stem == self.spec.stem and network.head == self.spec.head
        sol = solve(0, 0) if header_ok else None
        if sol is None:
            raise MnasError(f"network `{network.name}` is not in space `{self.name}`")
        return [i for picks in sol for i in picks]

    # -- mutation -------------------------------------------------------------------------------
    def mutate_indices(self, indices: Sequence[int], rng: Any = None) -> list[int]:
        """Change exactly one decision so that the lowered network changes."""
        g = _rng(rng)
        base = list(int(i) for i in indices)
        sig = self._signature(base)
        moves = [(d, o) for d in range(len(self._decisions)) for o in range(len(self._decisions[d].choices))
                 if o != base[d]]
        order = g.permutation(len(moves))
        for k in order:
            d, o = moves[int(k)]
            cand = list(base)
            cand[d] = o
            if not self._nonempty(cand):
                continue
            if self._signature(cand) != sig:
                return cand
        raise MnasError(f"no single-decision change of this network gives a different network in `{self.name}`")

    def built(self, indices: Sequence[int]) -> tuple[Network, LoweredNetwork, tuple[object, ...]]:
        """Decoded network, its lowering and signature, memoized for recently seen vectors
        (mutation lowers candidates; the search loop then reuses them)."""
        key = tuple(int(i) for i in indices)
        hit = self._sig_cache.get(key)
        if hit is None:
            if len(self._sig_cache) > 4096:
                self._sig_cache.clear()
            net = self.decode(key)
            low = lower(net)
            hit = self._sig_cache[key] = (net, low, low.signature())
        return hit

    def _signature(self, indices: list[int]) -> tuple[object, ...]:
        return self.built(indices)[2]

    def mutate(self, network: Network, rng: Any = None) -> Network:
        return self.decode(self.mutate_indices(self.encode(network), rng))


def _strip_input(b: Block) -> Block:
    if b.input is None:
        return b
    return b.model_copy(update={"input": None})


def load_space(path: str | Path, name: str | None = None) -> Space:
    from .parser import parse_units, read_source, select

    text = read_source(path)
    spec = select(parse_units(text, str(path)), name, str(path), "space")
    assert isinstance(spec, SpaceDef)
    return Space(spec)


def space_from_text(text: str, name: str | None = None) -> Space:
    from .parser import parse_units, select

    spec = select(parse_units(text), name, None, "space")
    assert isinstance(spec, SpaceDef)
    return Space(spec)


__all__ = ["Decision", "Space", "load_space", "space_from_text", "Diagnostic"]
