"""PyTorch state dicts (timm / torchvision layouts) mapped onto the Flax backend's variables.

The mapping is derived from the lowered layer list, so it follows width, depth and class-count
changes; every tensor on both sides must be used exactly once with the right shape, and a state
dict of another architecture is reported by its first mismatches, never loaded half-way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import MnasError
from ..fsutil import staged_dir
from ..lowering import Layer, LoweredNetwork
from .statedict import as_float32

Transform = Callable[[np.ndarray], np.ndarray]


def _conv(a: np.ndarray) -> np.ndarray:  # OIHW -> HWIO
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def _dw(a: np.ndarray) -> np.ndarray:  # (C, 1, kh, kw) -> (kh, kw, 1, C)
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def _dense_1x1(a: np.ndarray) -> np.ndarray:  # SE 1x1 conv (O, I, 1, 1) -> (I, O)
    return a[:, :, 0, 0].T if a.ndim == 4 and a.shape[2:] == (1, 1) else a


def _linear(a: np.ndarray) -> np.ndarray:  # (classes, cin) -> (cin, classes)
    return a.T if a.ndim == 2 else a


def _same(a: np.ndarray) -> np.ndarray:
    return a


def torch_shape(slot: Slot, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape a Flax variable of ``flax_shape`` comes from (for error messages)."""
    if slot.transform in (_conv, _dw) and len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if slot.transform is _dense_1x1:
        return (flax_shape[1], flax_shape[0], 1, 1)
    if slot.transform is _linear:
        return flax_shape[::-1]
    return flax_shape


@dataclass(frozen=True)
class Slot:
    """One state-dict tensor and where it goes: (collection, path inside the nnx pure dict)."""

    key: str
    collection: str  # params | batch_stats
    path: tuple[Any, ...]
    transform: Transform


def _conv_bn(conv: str, bn: str, path: tuple[Any, ...], kernel: Transform = _conv) -> Iterator[Slot]:
    yield Slot(f"{conv}.weight", "params", (*path, "kernel"), kernel)
    yield Slot(f"{bn}.weight", "params", (*path, "bn", "scale"), _same)
    yield Slot(f"{bn}.bias", "params", (*path, "bn", "bias"), _same)
    yield Slot(f"{bn}.running_mean", "batch_stats", (*path, "bn", "mean"), _same)
    yield Slot(f"{bn}.running_var", "batch_stats", (*path, "bn", "var"), _same)


def _se(prefix: str, path: tuple[Any, ...]) -> Iterator[Slot]:
    yield Slot(f"{prefix}.conv_reduce.weight", "params", (*path, "reduce_kernel"), _dense_1x1)
    yield Slot(f"{prefix}.conv_reduce.bias", "params", (*path, "reduce_bias"), _same)
    yield Slot(f"{prefix}.conv_expand.weight", "params", (*path, "expand_kernel"), _dense_1x1)
    yield Slot(f"{prefix}.conv_expand.bias", "params", (*path, "expand_bias"), _same)


def _not_representable(scheme: str, ly: Layer, what: str) -> MnasError:
    return MnasError(f"{ly.name}: {what} has no counterpart in the {scheme} layout")


def _timm_cv(p: str, at: tuple[Any, ...], ly: Layer) -> Iterator[Slot]:
    if ly.se:  # timm's ConvBnAct has no squeeze-excite
        raise _not_representable("timm", ly, "a regular conv with squeeze-excite")
    yield from _conv_bn(f"{p}.conv", f"{p}.bn1", (*at, "conv"))


def _timm_ds(p: str, at: tuple[Any, ...], ly: Layer) -> Iterator[Slot]:
    yield from _conv_bn(f"{p}.conv_dw", f"{p}.bn1", (*at, "dw"), _dw)
    if ly.se:
        yield from _se(f"{p}.se", (*at, "se"))
    yield from _conv_bn(f"{p}.conv_pw", f"{p}.bn2", (*at, "project"))


def _timm_mb(p: str, at: tuple[Any, ...], ly: Layer) -> Iterator[Slot]:
    yield from _conv_bn(f"{p}.conv_pw", f"{p}.bn1", (*at, "expand"))
    yield from _conv_bn(f"{p}.conv_dw", f"{p}.bn2", (*at, "dw"), _dw)
    if ly.se:
        yield from _se(f"{p}.se", (*at, "se"))
    yield from _conv_bn(f"{p}.conv_pwl", f"{p}.bn3", (*at, "project"))


def _timm_er(p: str, at: tuple[Any, ...], ly: Layer) -> Iterator[Slot]:
    yield from _conv_bn(f"{p}.conv_exp", f"{p}.bn1", (*at, "conv"))
    if ly.se:
        yield from _se(f"{p}.se", (*at, "se"))
    yield from _conv_bn(f"{p}.conv_pwl", f"{p}.bn2", (*at, "project"))


# timm's tensor names per registered op (mnasdsl.ops): its block class for that op, at prefix ``p``.
TIMM_NAMES: dict[str, Callable[[str, tuple[Any, ...], Layer], Iterator[Slot]]] = {
    "cv": _timm_cv, "ds": _timm_ds, "mb": _timm_mb, "er": _timm_er}


def _timm(low: LoweredNetwork, stages: tuple[int, ...] | None = None) -> Iterator[Slot]:
    """timm's EfficientNet / MobileNetV3 family: blocks.STAGE.INDEX. ``stages`` is how many block
    strings each timm stage holds (MobileNetV3 puts several in one); None: one stage per string."""
    where: dict[int, tuple[int, int]] = {}  # block string -> (stage, index of its first layer)
    n_blocks = 1 + max((ly.block for ly in low.blocks), default=-1)
    groups = stages or (1,) * n_blocks
    if sum(groups) != n_blocks:
        raise MnasError(f"the timm layout groups {sum(groups)} block strings into stages; the network has {n_blocks}")
    reps = {b: 1 + max(ly.repeat for ly in low.blocks if ly.block == b) for b in range(n_blocks)}
    b = 0
    for stage, count in enumerate(groups):
        first = 0
        for _ in range(count):
            where[b] = (stage, first)
            first += reps[b]
            b += 1
    for i, ly in enumerate(low.layers):
        at = ("layers", i)
        if ly.kind == "stem":
            yield from _conv_bn("conv_stem", "bn1", at)
        elif ly.kind == "head" and ly.op == "fc":  # MobileNetV3's pooled head: conv_head has a bias, no BN
            yield Slot("conv_head.weight", "params", (*at, "kernel"), _dense_1x1)
            yield Slot("conv_head.bias", "params", (*at, "bias"), _same)
        elif ly.kind == "head":
            yield from _conv_bn("conv_head", "bn2", at)
        elif ly.kind == "classifier":
            yield Slot("classifier.weight", "params", ("classifier_kernel",), _linear)
            yield Slot("classifier.bias", "params", ("classifier_bias",), _same)
        else:
            if ly.skip == "pool":
                raise _not_representable("timm", ly, "a pool skip")
            stage, first = where[ly.block]
            yield from TIMM_NAMES[ly.op](f"blocks.{stage}.{first + ly.repeat}", at, ly)


def _tv_mnasnet(low: LoweredNetwork) -> Iterator[Slot]:
    """torchvision's MNASNet: one flat ``layers`` Sequential (stem conv, the depthwise-separable
    first block unrolled, one _stack per later block string, head conv) and ``classifier.1``."""
    n_blocks = 1 + max(ly.block for ly in low.blocks)
    for i, ly in enumerate(low.layers):
        at = ("layers", i)
        if ly.kind == "stem":
            yield from _conv_bn("layers.0", "layers.1", at)
        elif ly.kind == "head":
            yield from _conv_bn(f"layers.{7 + n_blocks}", f"layers.{8 + n_blocks}", at)
        elif ly.kind == "classifier":
            yield Slot("classifier.1.weight", "params", ("classifier_kernel",), _linear)
            yield Slot("classifier.1.bias", "params", ("classifier_bias",), _same)
        elif ly.block == 0:
            if ly.op != "ds" or ly.se or ly.repeat:
                raise _not_representable("torchvision MNASNet", ly, "a first block other than one plain ds")
            yield from _conv_bn("layers.3", "layers.4", (*at, "dw"), _dw)
            yield from _conv_bn("layers.6", "layers.7", (*at, "project"))
        else:
            if ly.op != "mb" or ly.se or ly.skip == "pool":
                raise _not_representable("torchvision MNASNet", ly, "a block other than a plain inverted residual")
            p = f"layers.{7 + ly.block}.{ly.repeat}.layers"
            yield from _conv_bn(f"{p}.0", f"{p}.1", (*at, "expand"))
            yield from _conv_bn(f"{p}.3", f"{p}.4", (*at, "dw"), _dw)
            yield from _conv_bn(f"{p}.6", f"{p}.7", (*at, "project"))


def _tv_mobilenet_v2(low: LoweredNetwork) -> Iterator[Slot]:
    """torchvision's MobileNetV2: ``features.N`` counts every block (repeats unrolled)."""
    n = 0
    for i, ly in enumerate(low.layers):
        at = ("layers", i)
        if ly.kind in ("stem", "head"):
            yield from _conv_bn(f"features.{n}.0", f"features.{n}.1", at)
            n += 1
        elif ly.kind == "classifier":
            yield Slot("classifier.1.weight", "params", ("classifier_kernel",), _linear)
            yield Slot("classifier.1.bias", "params", ("classifier_bias",), _same)
        else:
            if ly.se or ly.skip == "pool" or ly.op not in ("mb", "ds"):
                raise _not_representable("torchvision MobileNetV2", ly, "a block other than an inverted residual")
            p = f"features.{n}.conv"
            if ly.op == "ds":
                yield from _conv_bn(f"{p}.0.0", f"{p}.0.1", (*at, "dw"), _dw)
                yield from _conv_bn(f"{p}.1", f"{p}.2", (*at, "project"))
            else:
                yield from _conv_bn(f"{p}.0.0", f"{p}.0.1", (*at, "expand"))
                yield from _conv_bn(f"{p}.1.0", f"{p}.1.1", (*at, "dw"), _dw)
                yield from _conv_bn(f"{p}.2", f"{p}.3", (*at, "project"))
            n += 1


def _efficientnet_pytorch(low: LoweredNetwork) -> Iterator[Slot]:
    """The efficientnet_pytorch layout (lukemelas' EfficientNet, and the EfficientNet-Lite ports of it):
    ``_blocks.N`` counts every layer (repeats unrolled); BN ``_bn0`` after the stem, ``_bn1`` after the head."""
    n = 0
    for i, ly in enumerate(low.layers):
        at = ("layers", i)
        if ly.kind == "stem":
            yield from _conv_bn("_conv_stem", "_bn0", at)
        elif ly.kind == "head":
            yield from _conv_bn("_conv_head", "_bn1", at)
        elif ly.kind == "classifier":
            yield Slot("_fc.weight", "params", ("classifier_kernel",), _linear)
            yield Slot("_fc.bias", "params", ("classifier_bias",), _same)
        else:
            # Its squeeze-excite gates with swish where the language's uses ReLU: not the same network.
            if ly.se or ly.skip == "pool" or ly.op not in ("mb", "ds"):
                raise _not_representable("efficientnet_pytorch", ly, "a block other than an MBConv without SE")
            p = f"_blocks.{n}"
            if ly.op == "mb":
                yield from _conv_bn(f"{p}._expand_conv", f"{p}._bn0", (*at, "expand"))
            yield from _conv_bn(f"{p}._depthwise_conv", f"{p}._bn1", (*at, "dw"), _dw)
            yield from _conv_bn(f"{p}._project_conv", f"{p}._bn2", (*at, "project"))
            n += 1


SCHEMES: dict[str, Callable[[LoweredNetwork], Iterator[Slot]]] = {
    "timm": _timm, "tv_mnasnet": _tv_mnasnet, "tv_mobilenet_v2": _tv_mobilenet_v2,
    "efficientnet_pytorch": _efficientnet_pytorch}


def slots(low: LoweredNetwork, scheme: str, stages: tuple[int, ...] | None = None) -> list[Slot]:
    if stages is not None:
        return list(_timm(low, stages))  # only timm's layout groups block strings into stages
    return list(SCHEMES[scheme](low))


def _get(tree: dict[Any, Any], path: tuple[Any, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict[Any, Any], path: tuple[Any, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


def _leaf_paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaf_paths(v, (*prefix, k))
    else:
        yield prefix


def _listing(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def map_state_dict(sd: dict[str, np.ndarray], low: LoweredNetwork, scheme: str,
                   variables: dict[str, Any], what: str, stages: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Fill a copy of ``variables`` (the Flax pure dicts) from ``sd``; strict both ways."""
    plan = slots(low, scheme, stages)
    expected = {s.key for s in plan}
    missing = [s.key for s in plan if s.key not in sd]
    # BN's num_batches_tracked is PyTorch bookkeeping, not a weight: never required, never reported.
    unexpected = [k for k in sd if k not in expected and not k.endswith(".num_batches_tracked")]
    wrong: list[str] = []
    out = {c: _deep_copy(v) for c, v in variables.items()}
    filled: set[tuple[str, tuple[Any, ...]]] = set()
    for s in plan:
        if s.key not in sd:
            continue
        target = _get(out[s.collection], s.path)
        a = s.transform(np.asarray(sd[s.key]))
        if tuple(a.shape) != tuple(target.shape):
            wrong.append(f"{s.key} is {tuple(np.shape(sd[s.key]))}, expected {torch_shape(s, tuple(target.shape))}")
            continue
        _set(out[s.collection], s.path, as_float32(s.key, a))
        if (s.collection, s.path) in filled:  # pragma: no cover - a scheme bug, not user input
            raise MnasError(f"internal error: {'.'.join(map(str, s.path))} assigned twice")
        filled.add((s.collection, s.path))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape: {_listing(wrong, 3)}")
        raise MnasError(f"the state dict is not {what}: " + "; ".join(parts))
    unfilled = [".".join(map(str, p)) for c in out for p in _leaf_paths(out[c]) if (c, p) not in filled]
    if unfilled:  # pragma: no cover - a scheme bug, not user input
        raise MnasError(f"internal error: no tensor maps to {_listing(unfilled)}")
    return out


def _deep_copy(tree: Any) -> Any:
    return {k: _deep_copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_import(out: Path, spec_name: str, spec_text: str, model: Any, provenance: dict[str, Any],
                 preprocess: dict[str, Any] | None = None) -> Path:
    """DIR = the spec, the weights (the Flax backend's params checkpoint, reached through
    ckpt.json as a training directory's are) and import.json. Assembled in a temporary directory
    beside DIR and renamed into place: a failure leaves nothing half-written, and an existing DIR
    is replaced only when the new one is complete. ``preprocess`` (the input the weights were
    trained on) goes into the checkpoint's mnasdsl.json, where eval, predict, exports and
    train --init look for it."""
    from ..backends.flax import save_params
    from ..fsutil import atomic_write_text

    out = out.absolute()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "import.json").is_file())):
        raise MnasError(f"{out}: exists and is not an import directory; choose another -o")
    with staged_dir(out) as tmp:
        (tmp / spec_name).write_text(spec_text)
        save_params(model, tmp / "weights")
        if preprocess is not None:
            card = tmp / "weights" / "mnasdsl.json"
            meta = json.loads(card.read_text())
            meta["preprocess"] = preprocess
            atomic_write_text(card, json.dumps(meta, indent=2) + "\n")
        (tmp / "ckpt.json").write_text(json.dumps({"latest": "weights"}, indent=1) + "\n")
        (tmp / "import.json").write_text(json.dumps(provenance, indent=1) + "\n")
    return out
