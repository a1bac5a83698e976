"""The sidecar that travels with an exported model (``OUT.tflite`` → ``OUT.tflite.json``).

A deployed file alone does not say how to feed it: the resolution, the crop, the normalization and
the class names. The sidecar records them so that ``predict``/``eval`` (or an app) need nothing
else; it is validated fully on read, so a hand-edited or foreign file is one clear error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics import MnasError

FORMAT = "mnasdsl-model-card/1"
EVAL_CROP = 0.875


@dataclass(frozen=True)
class Preprocess:
    """uint8 pixels → model input: resize the shorter side to size/crop, center-crop ``size``,
    then ``(x - mean) / std`` per channel in 0..255 units."""

    size: tuple[int, int]  # H, W
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: float = EVAL_CROP
    resize: str = "bilinear"


@dataclass(frozen=True)
class ModelCard:
    network: str
    runtime: str  # "litert" | "onnx"
    input: tuple[int, int, int, int]  # N, H, W, C (float32)
    classes: tuple[str, ...]
    preprocess: Preprocess
    quantize: str = "none"
    weights: str = ""
    spec: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format": FORMAT, **d}


def card_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def read_card(model_path: str | Path) -> ModelCard | None:
    """The sidecar of ``model_path``, or None when there is none."""
    p = card_path(model_path)
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MnasError(f"{p}: unreadable model card: {e}") from None
    try:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        pre = d["preprocess"]
        size = tuple(int(v) for v in pre["size"])
        channels = int(pre["channels"])
        mean = tuple(float(v) for v in pre["mean"])
        std = tuple(float(v) for v in pre["std"])
        if len(size) != 2 or min(size) < 1 or channels < 1 or len(mean) != channels or len(std) != channels:
            raise ValueError("preprocess: size, channels, mean and std disagree")
        if any(s <= 0 for s in std) or not 0 < float(pre.get("crop", EVAL_CROP)) <= 1:
            raise ValueError("preprocess: std must be positive and crop in (0, 1]")
        inp = tuple(int(v) for v in d["input"])
        classes = tuple(str(c) for c in d["classes"])
        if len(inp) != 4:
            raise ValueError("input must be [N, H, W, C]")
        return ModelCard(str(d["network"]), str(d["runtime"]), inp,  # type: ignore[arg-type]
                         classes, Preprocess(size, channels, mean, std, float(pre.get("crop", EVAL_CROP)),
                                             str(pre.get("resize", "bilinear"))),
                         str(d.get("quantize", "none")), str(d.get("weights", "")), str(d.get("spec", "")),
                         dict(d.get("extra", {})))
    except (KeyError, TypeError, ValueError) as e:
        raise MnasError(f"{p}: invalid model card: {e}") from None
