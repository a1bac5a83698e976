"""The latency lookup-table (LUT) file: format, validation, reading, writing, importing.

A LUT is one JSON object (``format: "mnasdsl-lut"``, ``version: 1``) holding per-op measured
latencies keyed by a canonical signature of a lowered layer, and optionally a fitted fallback
model. Everything that reads a file validates it fully here, so a corrupt, truncated or
incompatible file is one clear MnasError rather than a traceback later.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics import MnasError
from ..lowering import Layer
from ..ops import OP_NAMES, OPS, se_channels
from .features import FEATURES

FORMAT = "mnasdsl-lut"
VERSION = 1
# Activations whose entries may stand in for each other. On TFLite (and XLA) ReLU and ReLU6 are
# both fused into the preceding conv as a clamp: the cost difference is negligible.
DEFAULT_ACT_EQUIVALENT: tuple[tuple[str, ...], ...] = (("relu", "relu6"),)


@dataclass(frozen=True)
class Entry:
    """One measured op: mean latency (ms), its standard deviation, and how many runs."""

    mean: float
    std: float = 0.0
    count: int = 1

    def to_json(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "count": self.count}


@dataclass(frozen=True)
class Calibration:
    """Global terms fitted on whole networks: the sum of isolated per-op times misses fusion,
    cache warmth and fixed per-inference overhead. total = scale * sum(layer) + per_op_ms * ops
    + per_network_ms."""

    scale: float = 1.0
    per_op_ms: float = 0.0
    per_network_ms: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"scale": self.scale, "per_op_ms": self.per_op_ms, "per_network_ms": self.per_network_ms}


@dataclass(frozen=True)
class Model:
    """The fallback: ms = coef . layer_features(layer) (non-negative coefficients)."""

    coef: tuple[float, ...]
    calibration: Calibration = field(default_factory=Calibration)
    fit: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "coef": list(self.coef), "calibration": self.calibration.to_json(),
                "fit": self.fit}


@dataclass(frozen=True)
class Lut:
    device: str
    runtime: str
    batch: int = 1
    units: str = "ms"
    provenance: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    model: Model | None = None
    act_equivalent: tuple[tuple[str, ...], ...] = DEFAULT_ACT_EQUIVALENT

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "device": self.device, "runtime": self.runtime,
            "batch": self.batch, "units": self.units, "provenance": self.provenance,
            "act_equivalent": [list(g) for g in self.act_equivalent],
            "entries": {k: self.entries[k].to_json() for k in sorted(self.entries)},
        }
        if self.model is not None:
            out["model"] = self.model.to_json()
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1) + "\n"

    def replace(self, **changes: Any) -> Lut:
        from dataclasses import replace

        return replace(self, **changes)


# -- canonical op signatures ------------------------------------------------------------------

def _num(x: float) -> str:
    return f"{x:g}"


def op_key(layer: Layer, act: str | None = None) -> str:
    """The canonical signature of what a layer computes (names and positions excluded):
    ``mb-i56x56x24-o28x28x40-k5-s2-e3-se0-skip:none-act:relu6``. Derived quantities (mid and SE
    channels, the pool-skip projection) follow from these fields; a width the op's own rule would
    not give (``fc``, rounded expansions) is appended as ``-mid:N``, an SE other than TF's as
    ``-se:GATE:ACT:WIDTH``."""
    hi, wi, ci = layer.in_shape
    ho, wo, co = layer.out_shape
    sh, sw = layer.stride
    s = f"{sh}" if sh == sw else f"{sh}x{sw}"
    op = "fc" if layer.kind == "classifier" else layer.op
    return (f"{op}-i{hi}x{wi}x{ci}-o{ho}x{wo}x{co}-k{layer.kernel}-s{s}-e{_num(layer.expansion)}"
            f"-se{_num(layer.se_ratio)}-skip:{layer.skip}-act:{act or layer.act}{_extras(layer)}")


def _extras(layer: Layer) -> str:
    """Key suffixes for what the fields before them do not determine (empty for TF's own rules)."""
    if layer.op == "fc":
        return ""
    rule = OPS[layer.op].mid(layer.in_shape[2], layer.out_shape[2], layer.expansion, None, 1)
    out = f"-mid:{layer.mid}" if layer.mid != rule else ""
    if layer.se and (layer.se_gate, layer.se_act, layer.se) != ("sigmoid", "relu",
                                                               se_channels(layer.in_shape[2], layer.se_ratio)):
        out += f"-se:{layer.se_gate}:{layer.se_act}:{layer.se}"
    return out


# The numbers in a key, one strict pattern for every reader (tables, kit manifests, ProxylessNAS keys).
# NUMBER takes what `_num` writes for any finite value >= 0 below 1e100, and only strings that float()
# reads as a finite number: at most 16 + 16 mantissa digits, and an exponent of two digits upwards
# (three downwards), so `1..2` or `1e999` is no signature rather than a crash or an infinity later.
# INT: at most 9 digits, far above any tensor size, and every feature computed from them stays finite.
NUMBER = r"[0-9]{1,16}(?:\.[0-9]{1,16})?(?:[eE](?:-[0-9]{1,3}|\+?[0-9]{1,2}))?"
INT = r"[0-9]{1,9}"
_OPS_RE = "|".join((*OP_NAMES, "fc"))  # the registered ops and the classifier
_KEY = re.compile(
    rf"^(?P<op>{_OPS_RE})-i(?P<hi>{INT})x(?P<wi>{INT})x(?P<ci>{INT})-o(?P<ho>{INT})x(?P<wo>{INT})x(?P<co>{INT})"
    rf"-k(?P<k>{INT})-s(?P<sh>{INT})(?:x(?P<sw>{INT}))?-e(?P<e>{NUMBER})-se(?P<ratio>{NUMBER})"
    rf"-skip:(?P<skip>none|identity|pool)-act:(?P<act>[a-z0-9_]+)(?:-mid:(?P<mid>{INT}))?"
    rf"(?:-se:(?P<gate>[a-z]+):(?P<se_act>[a-z0-9]+):(?P<se>{INT}))?$")


def key_variants(layer: Layer, act_equivalent: tuple[tuple[str, ...], ...]) -> list[str]:
    """The exact key first, then the same op under each equivalent activation."""
    keys = [op_key(layer)]
    for group in act_equivalent:
        if layer.act in group:
            keys.extend(op_key(layer, a) for a in group if a != layer.act)
    return keys


# -- reading and validation -------------------------------------------------------------------

def _bad(path: str, msg: str) -> MnasError:
    return MnasError(msg, path=path)


# The largest number a table may hold (times in ms, coefficients, counts): far above any real one, and small
# enough that an estimate summing them over the largest network the language allows stays finite.
MAX_NUMBER = 1e12


def _num_field(path: str, where: str, obj: dict[str, Any], name: str, *, minimum: float = 0.0,
               required: bool = True, default: float = 0.0) -> float:
    if name not in obj:
        if required:
            raise _bad(path, f"{where}: missing `{name}`")
        return default
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < minimum:
        raise _bad(path, f"{where}: `{name}` must be a finite number >= {minimum:g}, got {v!r}")
    if v > MAX_NUMBER:
        raise _bad(path, f"{where}: `{name}` is {v:g}, above {MAX_NUMBER:g} (no latency table's number; corrupt?)")
    return float(v)


def lut_from_json(obj: Any, path: str = "<lut>") -> Lut:
    """Validate a parsed LUT object; every defect is a MnasError naming the file and the field."""
    if not isinstance(obj, dict):
        raise _bad(path, "not a latency table (expected a JSON object)")
    if obj.get("format") != FORMAT:
        raise _bad(path, f"not a latency table (format is {obj.get('format')!r}, expected {FORMAT!r}); "
                   "import foreign tables with `mnasdsl lut import`")
    ver = obj.get("version")
    if ver != VERSION:
        raise _bad(path, f"incompatible latency table version {ver!r} (this mnasdsl reads version {VERSION})")
    for name in ("device", "runtime"):
        if not isinstance(obj.get(name), str) or not obj[name]:
            raise _bad(path, f"missing or empty `{name}`")
    if obj.get("units", "ms") != "ms":
        raise _bad(path, f"units {obj.get('units')!r} are not supported (expected \"ms\")")
    batch = obj.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise _bad(path, f"`batch` must be a positive integer, got {batch!r}")
    prov = obj.get("provenance", {})
    if not isinstance(prov, dict):
        raise _bad(path, "`provenance` must be an object")
    raw = obj.get("entries", {})
    if not isinstance(raw, dict):
        raise _bad(path, "`entries` must be an object keyed by op signature")
    entries: dict[str, Entry] = {}
    for k, e in raw.items():
        if not _KEY.match(k):
            raise _bad(path, f"entry {k!r} is not a canonical op signature (see `mnasdsl lut --help`)")
        if not isinstance(e, dict):
            raise _bad(path, f"entry {k!r} must be an object with mean/std/count")
        mean = _num_field(path, f"entry {k!r}", e, "mean")
        std = _num_field(path, f"entry {k!r}", e, "std", required=False)
        count = _num_field(path, f"entry {k!r}", e, "count", minimum=1, required=False, default=1)
        entries[k] = Entry(mean, std, int(count))
    eq = obj.get("act_equivalent", [list(g) for g in DEFAULT_ACT_EQUIVALENT])
    if not isinstance(eq, list) or not all(isinstance(g, list) and all(isinstance(a, str) for a in g) for g in eq):
        raise _bad(path, "`act_equivalent` must be a list of lists of activation names")
    model = None
    if obj.get("model") is not None:
        model = _model_from_json(obj["model"], path)
    return Lut(obj["device"], obj["runtime"], batch, "ms", prov, entries, model, tuple(tuple(g) for g in eq))


def _model_from_json(m: Any, path: str) -> Model:
    if not isinstance(m, dict):
        raise _bad(path, "`model` must be an object")
    feats = m.get("features")
    if feats != list(FEATURES):
        raise _bad(path, f"incompatible model: fitted on features {feats!r}, this mnasdsl uses {list(FEATURES)}; "
                   "refit it with `mnasdsl lut fit`")
    coef = m.get("coef")
    if not isinstance(coef, list) or len(coef) != len(FEATURES):
        raise _bad(path, f"model `coef` must be a list of {len(FEATURES)} numbers")
    where = "model"
    vals = [_num_field(path, where, {"coef": c}, "coef") for c in coef]
    cal = m.get("calibration", {})
    if not isinstance(cal, dict):
        raise _bad(path, "model `calibration` must be an object")
    calibration = Calibration(
        _num_field(path, "model calibration", cal, "scale", required=False, default=1.0),
        _num_field(path, "model calibration", cal, "per_op_ms", required=False),
        _num_field(path, "model calibration", cal, "per_network_ms", required=False),
    )
    fit = m.get("fit", {})
    return Model(tuple(vals), calibration, fit if isinstance(fit, dict) else {})


def read_lut(path: str | Path) -> Lut:
    p = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _bad(p, "no such file") from None
    except IsADirectoryError:
        raise _bad(p, "is a directory, not a latency table") from None
    except UnicodeDecodeError:
        raise _bad(p, "not a latency table (not UTF-8 text; corrupt?)") from None
    except OSError as e:
        raise _bad(p, f"cannot read: {e.strerror or e}") from None
    return parse_lut(text, p)


def parse_lut(text: str, path: str = "<lut>") -> Lut:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        what = "truncated" if e.pos >= len(text.rstrip()) else "corrupt"
        raise _bad(path, f"{what} latency table: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    except RecursionError:
        raise _bad(path, "corrupt latency table: nested too deeply") from None
    return lut_from_json(obj, path)


# -- importing ProxylessNAS tables ------------------------------------------------------------

_PX_SHAPE = rf"({INT})x({INT})x({INT})"
_PX_MB = re.compile(rf"^expanded_conv-input:{_PX_SHAPE}-output:{_PX_SHAPE}-expand:({NUMBER})-kernel:({INT})"
                    rf"-stride:({INT})-idskip:([01])$")
_PX_CONV = re.compile(rf"^(Conv|Conv_1)-input:{_PX_SHAPE}-output:{_PX_SHAPE}$")
_PX_LOGITS = re.compile(rf"^Logits-input:{_PX_SHAPE}-output:({INT})$")


def _positive(key: str, *values: float) -> None:
    """A zero-sized tensor, kernel, stride or expansion is no layer: an unrecognised key (not a
    division by zero further on)."""
    if any(v <= 0 for v in values):
        raise ValueError(key)


def _px_layer(key: str, act: str) -> Layer:
    def lay(kind: str, op: str, i: tuple[int, int, int], o: tuple[int, int, int], k: int, s: int, e: float,
            mid: int, skip: str, a: str) -> Layer:
        return Layer(kind, kind, op, -1, 0, i, o, k, (s, s), e, mid, 0.0, 0, skip, False, a)  # type: ignore[arg-type]

    if m := _PX_MB.match(key):
        g = [int(x) for x in m.group(1, 2, 3, 4, 5, 6)]
        e, k, s, idskip = float(m.group(7)), int(m.group(8)), int(m.group(9)), m.group(10) == "1"
        _positive(key, *g, e, k, s)
        i, o = (g[0], g[1], g[2]), (g[3], g[4], g[5])
        op = OPS["mb"].e1_op if e == 1 else "mb"  # ProxylessNAS's expanded_conv is an MBConv
        assert op is not None
        return lay("block", op, i, o, k, s, e, OPS[op].mid(i[2], o[2], e, None, 1), "identity" if idskip else "none",
                   act)
    if m := _PX_CONV.match(key):
        g = [int(x) for x in m.group(2, 3, 4, 5, 6, 7)]
        _positive(key, *g)
        i, o = (g[0], g[1], g[2]), (g[3], g[4], g[5])
        s = max(1, round(i[0] / o[0]))
        k = 3 if m.group(1) == "Conv" else 1  # ProxylessNAS/MobileNetV2: 3x3 s2 stem, 1x1 head
        return lay("stem" if k == 3 else "head", "cv", i, o, k, s, 1.0, o[2], "none", act)
    if m := _PX_LOGITS.match(key):
        g = [int(x) for x in m.group(1, 2, 3, 4)]
        _positive(key, *g)
        return lay("classifier", "fc", (g[0], g[1], g[2]), (1, 1, g[3]), 1, 1, 1.0, g[2], "none", "none")
    raise ValueError(key)


def layer_for_key(key: str) -> Layer:
    """Rebuild a representative Layer from a canonical key (for fitting on table entries)."""
    m = _KEY.match(key)
    if not m:
        raise MnasError(f"{key!r} is not a canonical op signature")
    op = m["op"]
    i = (int(m["hi"]), int(m["wi"]), int(m["ci"]))
    o = (int(m["ho"]), int(m["wo"]), int(m["co"]))
    k, sh = int(m["k"]), int(m["sh"])
    sw = int(m["sw"]) if m["sw"] else sh
    e, ratio, skip, act = float(m["e"]), float(m["ratio"]), m["skip"], m["act"]
    mid = i[2] if op == "fc" else int(m["mid"]) if m["mid"] else OPS[op].mid(i[2], o[2], e, None, 1)
    se = int(m["se"]) if m["se"] else se_channels(i[2], ratio)
    gate, se_act = (m["gate"], m["se_act"]) if m["gate"] else ("sigmoid", "relu")
    kind = "classifier" if op == "fc" else "block"
    return Layer(kind, kind, "fc" if op == "fc" else op, -1, 0, i, o, k, (sh, sw), e, mid, ratio, se,  # type: ignore[arg-type]
                 skip, skip == "pool" and i[2] != o[2], act, gate, se_act)  # type: ignore[arg-type]


def import_proxylessnas(text: str, path: str = "<yaml>", *, device: str = "pixel1", runtime: str = "TFLite",
                        act: str = "relu6") -> Lut:
    """Read a ProxylessNAS LUT (YAML/JSON mapping key -> {mean, var|std, count}; ms)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _bad(path, f"not a ProxylessNAS latency table (invalid YAML: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise _bad(path, "not a ProxylessNAS latency table (expected a mapping of op keys to measurements)")
    entries: dict[str, Entry] = {}
    for key, val in data.items():
        try:
            layer = _px_layer(str(key), act)
        except ValueError:
            raise _bad(path, f"unrecognised ProxylessNAS op key {key!r}") from None
        if not isinstance(val, dict):
            raise _bad(path, f"{key}: expected mean/var/count")
        where = f"op {key!r}"
        mean = _num_field(path, where, val, "mean")
        if "std" in val:
            std = _num_field(path, where, val, "std")
        else:
            std = math.sqrt(_num_field(path, where, val, "var", required=False))
        count = int(_num_field(path, where, val, "count", minimum=1, required=False, default=1))
        entries[op_key(layer)] = Entry(mean, std, count)
    prov = {"source": "ProxylessNAS latency lookup table", "imported_from": Path(path).name,
            "note": f"ProxylessNAS keys mapped to mnasdsl signatures; activation taken as {act}; "
                    "expand:1 is a ds block, idskip:1 an identity residual"}
    return Lut(device, runtime, 1, "ms", prov, entries, None)
