"""The sidecar that travels with an exported model (``OUT.tflite`` → ``OUT.tflite.json``).

A deployed file alone does not say how to feed it: the resolution, the crop, the normalization and
the class names. The sidecar records them so that ``predict``/``eval`` (or an app) need nothing
else. It is validated fully on read, by the same pydantic models that write it: a hand-edited or
foreign file (a NaN std, a float size, an unknown resize, nesting deep enough to exhaust a
recursive parser) is one clear error naming the field, never NaN predictions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from ..diagnostics import MnasError
from ..preprocess import EVAL_CROP, PositiveInt, Preprocess, error_text

__all__ = ["EVAL_CROP", "FORMAT", "MAX_CARD_BYTES", "ModelCard", "Preprocess", "card_path", "read_card"]

FORMAT = "mnasdsl-model-card/1"
MAX_CARD_BYTES = 16 << 20  # 21k class names fit many times over; more is not a card


class ModelCard(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["mnasdsl-model-card/1"] = FORMAT
    network: StrictStr
    runtime: Literal["litert", "onnx"]
    input: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt]  # N, H, W, C (float32)
    classes: tuple[Annotated[StrictStr, Field(max_length=4096)], ...] = Field(min_length=1)
    preprocess: Preprocess
    quantize: Literal["none", "fp16", "int8"] = "none"
    weights: StrictStr = ""
    spec: StrictStr = ""
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _agree(self) -> ModelCard:
        _, h, w, c = self.input
        if self.preprocess.size != (h, w) or self.preprocess.channels != c:
            raise ValueError(f"preprocess describes a {self.preprocess.size[0]}x{self.preprocess.size[1]}x"
                             f"{self.preprocess.channels} image, input is {h}x{w}x{c}")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def card_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def read_card(model_path: str | Path) -> ModelCard | None:
    """The sidecar of ``model_path``, or None when there is none."""
    p = card_path(model_path)
    if not p.is_file():
        return None
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CARD_BYTES + 1)
    except OSError as e:
        raise MnasError(f"{p}: unreadable model card: {e.strerror or e}") from None
    if len(raw) > MAX_CARD_BYTES:
        raise MnasError(f"{p}: not a model card: larger than {MAX_CARD_BYTES >> 20} MiB")
    try:
        # pydantic's own JSON parser: bounded nesting (an error, not a RecursionError), no NaN surprises
        # left to the validators, and every field checked against the same model that writes cards
        return ModelCard.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        if first["type"] == "json_invalid" or first["loc"] == ():
            raise MnasError(f"{p}: unreadable model card: {str(first['msg'])}") from None
        if first["loc"] == ("format",):
            raise MnasError(f"{p}: invalid model card: not a {FORMAT} file") from None
        raise MnasError(f"{p}: invalid model card: {error_text(e)}") from None
    except (ValueError, RecursionError) as e:  # defensive: a parser error that is not a ValidationError
        raise MnasError(f"{p}: unreadable model card: {e}") from None


def dumps(card: ModelCard) -> str:
    return json.dumps(card.to_json(), indent=2) + "\n"
