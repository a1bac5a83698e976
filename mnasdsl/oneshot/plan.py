"""The supernet plan of a search space: which weights its networks share, and each subnet's settings.

Every network of a space is laid out on fixed *layer slots*: slot (block i, repeat r) holds the r-th
layer of block i whenever that block has more than r layers. A slot keeps one set of weights per op
family that can occur there (``cv``, ``ds``, ``mb``, ``er`` differ in structure, so they never share),
each sized to the largest configuration of that family: a kernel choice is one superkernel (k3 is the
centre of k5), expansions and filter multipliers are channel prefixes, SE widths are prefixes and the
SE variants share weights. A subnet is then a set of small integers per slot (which branch, kernel,
channel counts, SE width and gate, skip), read off the subnet's *lowered* network, so the supernet
computes exactly what the standalone network computes and never re-implements a sizing rule.

Capacities are found the same way: every alternative of every block is lowered for every input width
it can receive (a stand-in stem of that width in front of it), and the largest layer of each family is
kept. No JAX here: the plan is plain data, cheap to build and to compare.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..blocks import format_block, new_block
from ..cost import layer_cost
from ..diagnostics import Diagnostic, DiagnosticSink, MnasError
from ..ir import Block, Network, SpaceBlock
from ..lowering import Layer, LoweredNetwork, lower
from ..ops import OPS
from ..space import Space, _block_from, _strip_input

FAMILIES: tuple[str, ...] = tuple(OPS)  # registry order; a slot lists the families that occur there
SKIP_CODES = {"none": 0, "identity": 1, "pool": 2}
SLOT_KEYS = ("branch", "kernel", "cin", "cout", "mid", "se", "gate", "se_act", "act", "skip", "pool_proj")
MAX_COMBINATIONS = 200_000  # alternatives of one block the plan enumerates (the shipped spaces: 432 and 162)


@dataclass(frozen=True)
class Family:
    """The weights of one op family at one slot, at their largest size."""

    op: str
    cin: int
    cout: int
    mid: int
    kernel: int
    kernels: tuple[int, ...]  # the kernel sizes that occur (a mask is needed only when there are several)
    se: int  # SE bottleneck capacity; 0: this family never has an SE here
    se_always: bool  # every configuration of this family here has an SE (no on/off select needed)


@dataclass(frozen=True)
class Slot:
    """One layer position of the supernet (block ``block``, repeat ``repeat``)."""

    name: str
    block: int
    repeat: int
    stride: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    in_width: int  # channels of the tensor entering the slot (the widest input it can receive)
    out_width: int  # channels of the tensor leaving it
    branches: tuple[str, ...]  # "skip" (the layer is absent: identity) first when possible, then families
    families: tuple[Family, ...]
    acts: tuple[str, ...]
    se_acts: tuple[str, ...]
    gates: tuple[str, ...]
    identity: bool  # an identity residual can apply here
    pool: bool  # a pool skip can apply here
    pool_proj: tuple[int, int] | None  # (cin, cout) capacity of the pool skip's 1x1 projection

    def family(self, op: str) -> Family:
        for f in self.families:
            if f.op == op:
                return f
        raise KeyError(op)


@dataclass(frozen=True)
class Fixed:
    """The stem or the head: the same op in every subnet; only the head's input width varies."""

    op: str  # cv, or fc (MobileNetV3's pooled head)
    cin: int  # capacity (the head's input width varies with the last blocks)
    cout: int
    kernel: int
    stride: tuple[int, int]
    act: str
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


@dataclass(frozen=True)
class Plan:
    """Everything the supernet module needs, as plain data (JSON-able for run metadata)."""

    space: str
    input: tuple[int, int, int]
    classes: int
    padding: str
    bn_momentum: float
    bn_eps: float
    dropout: float
    stem: Fixed
    slots: tuple[Slot, ...]
    head: Fixed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        fams = sum(len(s.families) for s in self.slots)
        return f"{len(self.slots)} layer slots, {fams} op-family weight sets"


def _header(space: Space) -> dict[str, Any]:
    return dict(space._header)


class SharedSpace:
    """A search space compiled for weight sharing at one input size and class count.

    ``config(indices)`` gives the integer settings that select a subnet inside the supernet;
    ``indices_of(network)`` finds a network's decision vector, or names the first decision it does
    not fit. Decisions the supernet cannot share (stride choices, strided blocks that can vanish) are
    a MnasError naming the decision when the plan is built."""

    def __init__(self, space: Space, resolution: int | tuple[int, int] | None = None,
                 classes: int | None = None) -> None:
        self.space = space
        spec = space.spec
        if isinstance(resolution, int):
            resolution = (resolution, resolution)
        h, w = resolution if resolution is not None else spec.input[:2]
        self.input = (int(h), int(w), spec.input[2])
        self.classes = int(classes if classes is not None else spec.classes)
        self._hdr = _header(space) | {"input": self.input, "classes": self.classes}
        self._combos: list[dict[tuple[int, ...], Block | None]] = []
        self._block_macs: list[dict[tuple[tuple[int, ...], int], tuple[int, int]]] = []
        self._in_widths: list[frozenset[int]] = []
        self.plan = self._build()

    # -- the plan ---------------------------------------------------------------------------------------
    def _synthetic(self, cin: int, hw: tuple[int, int], blk: Block) -> LoweredNetwork:
        """``blk`` lowered behind a stand-in stem of ``cin`` channels (kept by a fixed stem at any width):
        the block's layers exactly as they are in any network where it receives ``cin`` channels."""
        stem = new_block(None, {}, "cv", 1, 1, (1, 1), 1.0, None, cin, 1.0, 0.0, "default", None)
        hdr = self._hdr | {"input": (hw[0], hw[1], 3), "stem_mode": "fixed"}
        net = Network.model_construct(name="slot", stem=stem, blocks=(blk,), head=self.space.spec.head, span=None,
                                      spans={}, **hdr)
        return lower(net)

    def _enumerate(self, bi: int, sb: SpaceBlock) -> dict[tuple[int, ...], Block | None]:
        sizes = [len(c.options) for c in sb.choices]
        total = int(np.prod(sizes)) if sizes else 1
        if total > MAX_COMBINATIONS:
            raise MnasError(f"block {bi} of space `{self.space.name}` has {total:,} combinations of choices; a "
                            f"supernet plans at most {MAX_COMBINATIONS:,} per block")
        out: dict[tuple[int, ...], Block | None] = {}
        for picks in itertools.product(*[range(n) for n in sizes]):
            sink = DiagnosticSink()
            blk = _block_from(sb, picks, sink)
            if sink:
                raise MnasError(sink.items)
            out[tuple(picks)] = blk
        return out

    def _decision_of(self, bi: int, field: str) -> str:
        for d in self.space.decisions():
            if d.block == bi and field in d.fields:
                return f"decision {d.location} ({', '.join(d.choices)})"
        return f"block {bi}"

    def _build(self) -> Plan:
        spec = self.space.spec
        probe = self.space.decode(self.space.sample_indices(0)).model_copy(update=self._hdr)
        low = lower(probe)
        stem_l, head_l = low.layers[0], low.layers[-2]
        stem = Fixed("cv", stem_l.in_shape[2], stem_l.out_shape[2], stem_l.kernel, stem_l.stride, stem_l.act,
                     stem_l.in_shape[:2], stem_l.out_shape[:2])
        widths = {stem.cout}  # the channel counts that can reach the next block
        hw = stem.out_hw
        slots: list[Slot] = []
        for bi, sb in enumerate(spec.blocks):
            combos = self._enumerate(bi, sb)
            self._combos.append(combos)
            present = {p: b for p, b in combos.items() if b is not None}
            vanish = len(present) < len(combos)
            strides = sorted({b.stride for b in present.values()})
            if len(strides) > 1:
                raise MnasError(Diagnostic(
                    f"{self._decision_of(bi, 'stride')} changes the stride, and with it the feature-map size of "
                    "every later layer: a supernet runs all its subnets in one compiled program of fixed shapes, "
                    "so a stride cannot be a decision", span=sb.span))
            stride = strides[0]
            if vanish and stride != (1, 1):
                raise MnasError(Diagnostic(
                    f"{self._decision_of(bi, 'repeats_delta')} can remove block {bi}, a strided block: the "
                    "feature maps after it would change size, which a supernet of fixed shapes cannot share",
                    span=sb.span))
            per_slot: dict[int, list[Layer]] = {}
            reps: list[int] = []
            outs: set[int] = set()
            macs: dict[tuple[tuple[int, ...], int], tuple[int, int]] = {}
            for picks, blk in present.items():
                for cin in sorted(widths):
                    layers = self._synthetic(cin, hw, blk).blocks
                    for ly in layers:
                        per_slot.setdefault(ly.repeat, []).append(ly)
                    reps.append(len(layers))
                    outs.add(layers[-1].out_shape[2])
                    macs[(picks, cin)] = (sum(layer_cost(ly)[1] for ly in layers), layers[-1].out_shape[2])
            self._block_macs.append(macs)
            self._in_widths.append(frozenset(widths))
            new_widths = outs | (widths if vanish else set())
            in_w, out_w = max(widths), max(new_widths)
            for r in sorted(per_slot):
                can_skip = vanish or min(reps) <= r
                slots.append(self._slot(bi, r, per_slot[r], can_skip, in_w if r == 0 else out_w, out_w))
            if per_slot:  # later repeats have stride 1: the block's output size is its first layer's
                hw = per_slot[0][0].out_shape[:2]
            widths = new_widths
        head = Fixed(head_l.op, max(widths), head_l.out_shape[2], head_l.kernel, head_l.stride, head_l.act,
                     hw, head_l.out_shape[:2])
        self._final_widths = widths
        self._head_layer = head_l
        return Plan(spec.name, self.input, self.classes, low.padding, low.bn_momentum, low.bn_eps, low.dropout,
                    stem, tuple(slots), head)

    def _slot(self, bi: int, r: int, layers: list[Layer], can_skip: bool, in_w: int, out_w: int) -> Slot:
        strides = {ly.stride for ly in layers}
        in_hw = {ly.in_shape[:2] for ly in layers}
        out_hw = {ly.out_shape[:2] for ly in layers}
        assert len(strides) == len(in_hw) == len(out_hw) == 1, (bi, r)
        fams = []
        for op in FAMILIES:
            mine = [ly for ly in layers if ly.op == op]
            if not mine:
                continue
            ses = [ly.se for ly in mine]
            fams.append(Family(op, max(ly.in_shape[2] for ly in mine), max(ly.out_shape[2] for ly in mine),
                               max(ly.mid for ly in mine), max(ly.kernel for ly in mine),
                               tuple(sorted({ly.kernel for ly in mine})), max(ses), min(ses) > 0))
        pp = [ly for ly in layers if ly.pool_proj]
        acts = tuple(sorted({ly.act for ly in layers}))
        with_se = [ly for ly in layers if ly.se]
        return Slot(f"blocks.{bi}.{r}", bi, r, next(iter(strides)), next(iter(in_hw)), next(iter(out_hw)), in_w,
                    out_w, (("skip",) if can_skip else ()) + tuple(f.op for f in fams), tuple(fams), acts,
                    tuple(sorted({ly.se_act for ly in with_se})), tuple(sorted({ly.se_gate for ly in with_se})),
                    any(ly.skip == "identity" for ly in layers), any(ly.skip == "pool" for ly in layers),
                    (max(ly.in_shape[2] for ly in pp), max(ly.out_shape[2] for ly in pp)) if pp else None)

    # -- decision vectors -------------------------------------------------------------------------------
    def network(self, indices: Sequence[int], name: str | None = None) -> Network:
        """The subnet as a standalone network at the supernet's input size and class count."""
        net = self.space.decode(indices).model_copy(update={"input": self.input, "classes": self.classes})
        return net.model_copy(update={"name": name}) if name else net

    def sample(self, rng: Any) -> list[int]:
        """A uniformly random decision vector (SPOS: every decision independently uniform)."""
        return self.space.sample_indices(rng)

    def _extreme(self, largest: bool) -> list[int]:
        """The decision vector with the most (fewest) multiply-adds, exactly: a dynamic program over the
        blocks, whose state is the channel count passed on (ties: the earlier alternative)."""
        n = len(self._combos)
        head = self._head_layer
        best: dict[int, tuple[int, list[tuple[int, ...]]]] = {
            c: (layer_cost(head._replace(in_shape=(*head.in_shape[:2], c), mid=c))[1], []) for c in self._final_widths}
        for bi in range(n - 1, -1, -1):
            combos, macs = self._combos[bi], self._block_macs[bi]
            cins = self._in_widths[bi]
            nxt: dict[int, tuple[int, list[tuple[int, ...]]]] = {}
            for c in cins:
                choice: tuple[int, list[tuple[int, ...]]] | None = None
                for picks, blk in combos.items():
                    if blk is None:
                        if c not in best:
                            continue
                        total, rest = best[c]
                    else:
                        if (picks, c) not in macs:
                            continue
                        m, cout = macs[(picks, c)]
                        if cout not in best:
                            continue
                        total, rest = m + best[cout][0], best[cout][1]
                    if choice is None or (total > choice[0] if largest else total < choice[0]):
                        choice = (total, [picks, *rest])
                if choice is not None:
                    nxt[c] = choice
            best = nxt
        _, picks_list = best[self.plan.stem.cout]
        return [i for p in picks_list for i in p]

    def largest(self) -> list[int]:
        return self._extreme(True)

    def smallest(self) -> list[int]:
        return self._extreme(False)

    # -- a subnet's settings ----------------------------------------------------------------------------
    def config(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The integer settings that select subnet ``indices`` (arrays of one entry per slot, plus the
        head's input width), read off its lowered network."""
        low, slot_of = self.layout(indices)
        n = len(self.plan.slots)
        cfg = {k: np.zeros(n, np.int32) for k in SLOT_KEYS}
        seen = set()
        for ly, k in zip(low.layers, slot_of):
            if k is None:
                continue
            seen.add(k)
            self._fill(cfg, k, self.plan.slots[k], ly)
        for k, s in enumerate(self.plan.slots):
            if k not in seen and s.branches[0] != "skip":
                raise MnasError(f"internal: subnet leaves slot {s.name} empty, which the plan does not allow")
        head = low.layers[-2]
        if head.in_shape[2] > self.plan.head.cin:
            raise MnasError(f"internal: head input {head.in_shape[2]} exceeds the plan's {self.plan.head.cin}")
        out = dict(cfg)
        out["head_cin"] = np.asarray(head.in_shape[2], np.int32)
        return out

    @staticmethod
    def _fill(cfg: dict[str, np.ndarray], k: int, s: Slot, ly: Layer) -> None:
        fam = s.family(ly.op)
        cin, cout = ly.in_shape[2], ly.out_shape[2]
        if (cin > fam.cin or cout > fam.cout or ly.mid > fam.mid or ly.kernel > fam.kernel or ly.se > fam.se
                or ly.stride != s.stride or ly.in_shape[:2] != s.in_hw):
            raise MnasError(f"internal: layer {ly.name} ({ly.op} k{ly.kernel} {cin}->{cout}, mid {ly.mid}, se {ly.se}) "
                            f"does not fit slot {s.name}")
        cfg["branch"][k] = s.branches.index(ly.op)
        cfg["kernel"][k], cfg["cin"][k], cfg["cout"][k], cfg["mid"][k], cfg["se"][k] = \
            ly.kernel, cin, cout, ly.mid, ly.se
        cfg["gate"][k] = s.gates.index(ly.se_gate) if ly.se else 0
        cfg["se_act"][k] = s.se_acts.index(ly.se_act) if ly.se else 0
        cfg["act"][k] = s.acts.index(ly.act)
        cfg["skip"][k] = SKIP_CODES[ly.skip]
        cfg["pool_proj"][k] = int(ly.pool_proj)

    def layout(self, indices: Sequence[int]) -> tuple[LoweredNetwork, list[int | None]]:
        """The subnet's lowered network and, per lowered layer, the slot it occupies (None: stem, head,
        classifier)."""
        low = lower(self.network(indices))
        present = [bi for bi, picks in enumerate(self.space.split(indices)) if self._combos[bi][picks] is not None]
        where = {(s.block, s.repeat): k for k, s in enumerate(self.plan.slots)}
        return low, [where[(present[ly.block], ly.repeat)] if ly.kind == "block" else None for ly in low.layers]

    # -- networks -> decision vectors -------------------------------------------------------------------
    def indices_of(self, network: Network) -> list[int]:
        """The decision vector of ``network`` (any input size and class count: the supernet's replace
        them). A network outside the space is a MnasError naming the first decision it does not fit."""
        net = network.model_copy(update={"input": self.space.spec.input, "classes": self.space.spec.classes})
        try:
            return self.space.encode(net)
        except MnasError:
            pass
        raise MnasError(Diagnostic(f"network `{network.name}` is not in the supernet's space "
                                   f"`{self.space.name}`: {self._why_not(network)}"))

    def _why_not(self, network: Network) -> str:
        spec = self.space.spec
        for key, want in _header(self.space).items():
            if key in ("input", "classes"):
                continue
            have = getattr(network, key)
            if have != want:
                return f"its `{key}` is {have!r}, the space's is {want!r}"
        if network.stem != spec.stem or network.stem_mode != spec.stem_mode:
            return f"its stem `{format_block(network.stem, 'stem')}` is not the space's " \
                   f"`{format_block(spec.stem, 'stem')}`"
        if network.head != spec.head or network.head_mode != spec.head_mode or network.head_pooled != spec.head_pooled:
            return f"its head `{format_block(network.head, 'head')}` is not the space's " \
                   f"`{format_block(spec.head, 'head')}`"
        target = [_strip_input(b) for b in network.blocks]
        n, m = len(self._combos), len(target)
        options = [{b for b in combos.values() if b is not None} for combos in self._combos]
        vanish = [any(b is None for b in combos.values()) for combos in self._combos]
        # Reachable (space block, network block) pairs: a space block is left out (when it can vanish) or
        # matches the next network block.
        frontier = {(0, 0)}
        reach = set(frontier)
        while frontier:
            nxt = set()
            for i, j in frontier:
                if i == n:
                    continue
                if vanish[i]:
                    nxt.add((i + 1, j))
                if j < m and target[j] in options[i]:
                    nxt.add((i + 1, j + 1))
            frontier = nxt - reach
            reach |= frontier
        jmax = max(j for _, j in reach)
        if jmax == m:  # every network block placed, but a later space block cannot be left out
            i = min(i for i, j in reach if j == m)
            if m > 0 and i < n:
                return f"it ends after {m} blocks, but space block {i} cannot be left out (its repeats never reach 0)"
            return "its blocks do not line up with the space's"
        cands = sorted(i for i, j in reach if j == jmax and i < n)
        if not cands:
            return f"it has {m} blocks; the space has at most {n}"
        i = cands[0]
        return f"block {jmax} (`{format_block(network.blocks[jmax])}`) against space block {i}: " \
               + self._block_mismatch(i, target[jmax])

    def _block_mismatch(self, bi: int, blk: Block) -> str:
        """The first decision (or fixed field) of space block ``bi`` that ``blk`` does not fit."""
        sb = self.space.spec.blocks[bi]
        fixed = dict(sb.fixed)
        have: dict[str, Any] = {f: getattr(blk, f) for f in Block.model_fields if f not in ("span", "spans")}
        defaults: dict[str, Any] = {f: Block.model_fields[f].default for f in have}
        base_reps = int(fixed.get("repeats", 1))
        order = [f for f in ("op", "repeats", "kernel", "stride", "expansion", "output", "output_factor", "force_in",
                             "se", "se_kind", "skip", "act", "fixed_repeats") if f in have]
        decided = {f for c in sb.choices for f in c.fields}
        for f in order:
            if f == "repeats" and "repeats_delta" in decided:
                c = next(c for c in sb.choices if "repeats_delta" in c.fields)
                ok = {base_reps + int(o.assign[0][1]) for o in c.options}  # type: ignore[call-overload]
                if blk.repeats not in ok:
                    return (f"decision blocks[{bi}].repeats_delta: {blk.repeats} repeats is not one of "
                            f"{', '.join(str(v) for v in sorted(ok))}")
                continue
            if f in decided:
                c = next(c for c in sb.choices if f in c.fields)
                vals = [dict(o.assign) for o in c.options]
                mine = {g: have[g] for g in c.fields}
                if not any(all(v.get(g, fixed.get(g, defaults[g])) == mine[g] for g in c.fields) for v in vals):
                    labels = ", ".join(o.label for o in c.options)
                    shown = ", ".join(f"{g} {mine[g]!r}" for g in c.fields)
                    return f"decision blocks[{bi}].{'+'.join(c.fields)}: {shown} is not one of {labels}"
                continue
            want = fixed.get(f, defaults[f])
            if have[f] != want:
                return f"its {f} is {have[f]!r}; the space fixes it to {want!r}"
        return "its combination of choices is not one the space allows"
