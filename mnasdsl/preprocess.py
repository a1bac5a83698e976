"""How a model expects its input: one record that every consumer reads.

Evaluation during training, ``eval``, ``predict``, int8 calibration batches and the exported model
card all feed images to the same weights, so they must agree on the size, the center-crop fraction,
the resize filter and the per-channel mean/std. Imported weights record what their publisher
evaluated with (timm's Lite4 crops 0.92 of the image, Lite1-3 about 0.88-0.90), a training run
records what it used; this module validates such a record once, fills in mnasdsl's defaults only
where nothing was recorded, and says where each value came from. Nothing here knows of Flax.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

EVAL_CROP = 0.875  # resize the shorter side to size/0.875, then center-crop: the usual ImageNet eval transform
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_FILTERS = ("bilinear",)  # what decode_image implements; a record asking for another is refused

PositiveInt = Annotated[StrictInt, Field(gt=0, le=1 << 16)]


def default_norm(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """mnasdsl's own training normalization, per channel in 0..255 units: ImageNet's for RGB-like
    inputs (extra channels cycle through RGB's), 0.5/0.25 for grey."""
    if channels >= 3:
        mean = np.array([IMAGENET_MEAN[i % 3] for i in range(channels)], np.float32)
        std = np.array([IMAGENET_STD[i % 3] for i in range(channels)], np.float32)
    else:
        mean, std = np.full(channels, 0.5, np.float32), np.full(channels, 0.25, np.float32)
    return mean * 255.0, std * 255.0


class Preprocess(BaseModel):
    """uint8 pixels → model input: resize the shorter side to ``size / crop``, center-crop ``size``
    (``resize`` filter), then ``(x - mean) / std`` per channel in 0..255 units. ``recorded`` says
    where the values came from (an import, a training run, or mnasdsl's defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: tuple[PositiveInt, PositiveInt]  # H, W
    channels: PositiveInt
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: float = EVAL_CROP
    resize: Literal["bilinear"] = "bilinear"
    recorded: str = "mnasdsl defaults"

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        if not isinstance(v, (list, tuple)) or not all(_is_number(x) for x in v):
            raise ValueError("must be a list of numbers")
        return v

    @field_validator("mean")
    @classmethod
    def _finite(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(x) and abs(x) <= 1e6 for x in v):
            raise ValueError("every mean must be a finite number (0..255 units)")
        return v

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(x) and 1e-6 <= x <= 1e6 for x in v):
            raise ValueError("every std must be a finite number > 0 (0..255 units)")
        return v

    @field_validator("crop", mode="before")
    @classmethod
    def _crop(cls, v: Any) -> Any:
        if not _is_number(v) or not math.isfinite(v) or not 0.05 <= v <= 1:
            raise ValueError("must be a number in [0.05, 1]: the fraction of the resized image kept")
        return v

    @model_validator(mode="after")
    def _per_channel(self) -> Preprocess:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"{self.channels} channels need {self.channels} means and stds, "
                             f"got {len(self.mean)} and {len(self.std)}")
        return self

    @property
    def norm(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)


def _is_number(x: Any) -> bool:
    """A JSON number (or a numpy scalar from our own code); never a bool or a string such as "inf"."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def error_text(e: ValidationError) -> str:
    """A pydantic error as one line naming the fields: ``preprocess.std: every std must be ...``."""
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def default(size: tuple[int, int], channels: int, crop: float = EVAL_CROP) -> Preprocess:
    mean, std = default_norm(channels)
    return Preprocess(size=size, channels=channels, mean=tuple(float(v) for v in mean),
                      std=tuple(float(v) for v in std), crop=crop)


def resolve(record: Mapping[str, Any] | None, size: tuple[int, int], channels: int, *,
            where: str = "", crop: float = EVAL_CROP) -> Preprocess:
    """The preprocessing of a network evaluated at ``size`` with ``channels``, from a checkpoint's
    or import's ``preprocess`` record (mean/std, and crop/resize where recorded), else mnasdsl's
    defaults (``crop`` among them). A record of the wrong shape raises ValueError naming the field.

    A single mean or std applies to every channel (how TF's 127/128 scaling is recorded). The
    record's own size is the resolution it was made for; the network's ``size`` wins, since a
    crop fraction carries over to another resolution and a pixel count does not."""
    if record is None:
        return default(size, channels, crop)
    if not isinstance(record, Mapping):
        raise ValueError(f"preprocess: expected an object, got {type(record).__name__}")
    unknown = set(record) - {"size", "crop", "mean", "std", "resize", "recorded", "channels"}
    if unknown:
        raise ValueError(f"preprocess: unknown field {sorted(unknown)[0]!r}")
    mean, std = record.get("mean"), record.get("std")
    if mean is None or std is None:
        raise ValueError("preprocess: needs mean and std")
    mean_t, std_t = _per_channel(mean, channels), _per_channel(std, channels)
    fields: dict[str, Any] = {"size": size, "channels": channels, "mean": mean_t, "std": std_t,
                              "crop": record.get("crop", crop), "resize": record.get("resize", "bilinear"),
                              "recorded": str(record.get("recorded", where or "a recorded preprocess"))}
    try:
        return Preprocess(**fields)
    except ValidationError as e:
        raise ValueError("preprocess." + error_text(e)) from None


def _per_channel(v: Any, channels: int) -> Any:
    if _is_number(v):
        v = [v]
    if isinstance(v, (list, tuple)) and len(v) == 1 and channels > 1:
        return tuple(v) * channels
    return v


def center_box(w: int, h: int, size: tuple[int, int], crop: float = EVAL_CROP) -> tuple[float, float, float, float]:
    """The box of a ``w`` x ``h`` image that `resize the shorter side to size/crop, center-crop size`
    keeps, in source pixels (so one resize of that box does both steps, without a blurred double resample)."""
    th, tw = size
    scale = min(w / (tw / crop), h / (th / crop))  # source pixels per resized pixel
    cw, ch = min(w, tw * scale), min(h, th * scale)
    return (w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2
