"""The typed intermediate representation: frozen pydantic models for blocks, networks and spaces.

Source spans ride along on every node so validation can point at the text, but they are
excluded from equality, hashing and the JSON schema: two networks written differently but
meaning the same thing compare equal.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .diagnostics import Span
from .ops import OP_ALIASES as OP_ALIASES
from .ops import OP_NAMES, OPS, SE_KINDS
from .ops.fields import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_EXPANSION,
    MAX_FACTOR,
    MAX_KERNEL,
    MAX_MULTIPLIER,
    MAX_REPEATS,
    MAX_RESOLUTION,
    STRIDES,
    int_error,
)

Op = Literal[OP_NAMES]  # type: ignore[valid-type]  # the registry's canonical tokens
Skip = Literal["default", "noskip", "pool"]
SeKindName = Literal[tuple(SE_KINDS)]  # type: ignore[valid-type]  # mnasdsl/ops/se.py
Activation = Literal["relu", "relu6", "swish", "hswish"]
Padding = Literal["same", "symmetric"]
HeadMode = Literal["fixed", "scaled"]

ACTIVATIONS: tuple[str, ...] = ("relu", "relu6", "swish", "hswish")
ACT_ALIASES: dict[str, str] = {"nre": "relu", "nr6": "relu6", "nsw": "swish", "nhs": "hswish"}

_NO_COMPARE = frozenset({"span", "spans"})


def _freeze(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


class Node(BaseModel):
    """Frozen base; equality and hash ignore source spans."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)

    span: Span | None = Field(default=None, exclude=True, repr=False)
    spans: dict[str, Span] = Field(default_factory=dict, exclude=True, repr=False)

    def _key(self) -> tuple[Any, ...]:
        return tuple(_freeze(v) for k, v in self.__dict__.items() if k not in _NO_COMPARE)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def field_span(self, name: str) -> Span | None:
        return self.spans.get(name, self.span)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # spans are not user data
        schema = super().model_json_schema(*args, **kwargs)
        _strip_spans(schema)
        return schema


def _strip_spans(schema: Any) -> None:
    if isinstance(schema, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            props.pop("span", None)
            props.pop("spans", None)
        defs = schema.get("$defs")
        if isinstance(defs, dict):
            defs.pop("Span", None)
        for v in schema.values():
            _strip_spans(v)
    elif isinstance(schema, list):
        for v in schema:
            _strip_spans(v)


class Block(Node):
    """One block string: a stage of ``repeats`` identical layers (only the first strided)."""

    op: Op = "mb"
    repeats: int = Field(1, ge=1, le=MAX_REPEATS)
    kernel: int = Field(ge=1, le=MAX_KERNEL)
    stride: tuple[int, int] = (1, 1)
    expansion: float = Field(1.0, ge=1.0, le=MAX_EXPANSION)
    input: int | None = Field(None, ge=1, le=MAX_CHANNELS)
    output: int = Field(ge=1, le=MAX_CHANNELS)
    output_factor: float = Field(1.0, gt=0.0, le=MAX_FACTOR)
    # `fc24` (timm's force_in_chs): the expansion is sized from these channels (scaled by the width
    # multiplier as outputs are) instead of the actual input's; only ops declaring `force_in` take it.
    force_in: int | None = Field(None, ge=1, le=MAX_CHANNELS)
    se: float = Field(0.0, ge=0.0, le=1.0)
    # The SE variant (flag `hsig`: MobileNetV3's hard-sigmoid SE; `seact`: the block's activation).
    se_kind: SeKindName = "tf"
    skip: Skip = "default"
    act: Activation | None = None
    # `fixed` in the block string: the depth multiplier leaves this stage's repeats alone
    # (EfficientNet-Lite keeps its first and last stages at every depth, as timm's fix_first_last).
    fixed_repeats: bool = False

    @model_validator(mode="after")
    def _rules(self) -> Block:
        msg = int_error("k", self.kernel)  # the block strings' own rule (mnasdsl/ops/fields.py)
        if msg:
            raise ValueError(msg)
        if self.stride not in STRIDES.values():
            raise ValueError(f"stride must be 1 or 2 per axis, got {self.stride}")
        spec = OPS[self.op]
        if spec.e1_op is not None and self.expansion == 1.0:
            raise ValueError(f"an `{self.op}` block with expansion 1 is a `{spec.e1_op}` block; use op='{spec.e1_op}'")
        if not spec.expands and self.expansion != 1.0:
            raise ValueError(f"expansion has no meaning for a `{self.op}` block")
        if self.se and not spec.takes("se"):
            raise ValueError(f"squeeze-excitation has no meaning for a `{self.op}` block")
        if self.se_kind != "tf" and not self.se:
            raise ValueError(f"squeeze-excitation variant `{self.se_kind}` without squeeze-excitation (se0)")
        if self.force_in is not None and not spec.takes("force_in"):
            raise ValueError(f"a forced input width (fc) has no meaning for a `{self.op}` block")
        if round(self.output * self.output_factor) > MAX_CHANNELS:
            raise ValueError("output channels too large")
        return self


class Network(Node):
    """A concrete architecture: header settings, stem, blocks, head."""

    name: str
    input: tuple[int, int, int] = (224, 224, 3)
    classes: int = Field(1000, ge=1, le=MAX_CLASSES)
    width: float = Field(1.0, gt=0.0, le=MAX_MULTIPLIER)
    depth: float = Field(1.0, gt=0.0, le=MAX_MULTIPLIER)
    divisor: int = Field(8, ge=1, le=1024)
    min_depth: int | None = Field(None, ge=1, le=MAX_CHANNELS)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    bn_momentum: float = Field(0.99, ge=0.0, lt=1.0)
    bn_eps: float = Field(1e-3, gt=0.0, le=1.0)
    padding: Padding = "same"
    activation: Activation = "relu"
    stem: Block
    blocks: tuple[Block, ...]
    head: Block
    head_mode: HeadMode = "fixed"
    # `stem ... fixed`: the stem keeps its channels at every width (EfficientNet-Lite); default scaled.
    stem_mode: HeadMode = "scaled"
    # `expansion_divisor 8`: expanded widths are rounded to a multiple of 8 (timm's make_divisible,
    # so e2.3 lands on a multiple); 1 (the default) is TF's round(in x e).
    expansion_divisor: int = Field(1, ge=1, le=1024)
    # `head ... pooled`: MobileNetV3's efficient head: global pool, then the 1x1 conv with a bias and
    # no BN, then the activation, then the classifier (default: conv + BN + act, then pool).
    head_pooled: bool = False

    @model_validator(mode="after")
    def _rules(self) -> Network:
        h, w, c = self.input
        for v in (h, w):
            if not 1 <= v <= MAX_RESOLUTION:
                raise ValueError(f"resolution must be between 1 and {MAX_RESOLUTION}, got {v}")
        if not 1 <= c <= MAX_CHANNELS:
            raise ValueError(f"input channels must be between 1 and {MAX_CHANNELS}, got {c}")
        if not self.blocks:
            raise ValueError("a network needs at least one block")
        return self

    @property
    def resolution(self) -> tuple[int, int]:
        return self.input[0], self.input[1]

    def scaled(
        self,
        *,
        width: float | None = None,
        depth: float | None = None,
        resolution: int | tuple[int, int] | None = None,
        classes: int | None = None,
    ) -> Network:
        """Overrides replace the file's values (they never multiply them)."""
        if width is None and depth is None and resolution is None and classes is None:
            return self
        from .validate import check_overrides

        check_overrides(width=width, depth=depth, resolution=resolution, classes=classes)
        upd: dict[str, Any] = {}
        if width is not None:
            upd["width"] = float(width)
        if depth is not None:
            upd["depth"] = float(depth)
        if resolution is not None:
            hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
            upd["input"] = (int(hw[0]), int(hw[1]), self.input[2])
        if classes is not None:
            upd["classes"] = int(classes)
        return self.model_copy(update=upd) if upd else self


FieldValue = int | float | str | tuple[int, int]


class Option(Node):
    """One alternative of a decision: the block fields it sets, and its spelling."""

    assign: tuple[tuple[str, FieldValue], ...]
    label: str


class Choice(Node):
    """One decision of a search space (one controller token)."""

    fields: tuple[str, ...]
    options: tuple[Option, ...]
    form: Literal["set", "joint", "rel"] = "set"


class SpaceBlock(Node):
    """A block whose fields may be decisions; ``fixed`` holds the ones that are not."""

    fixed: tuple[tuple[str, FieldValue], ...]
    choices: tuple[Choice, ...] = ()


class SpaceDef(Node):
    """A search space: a network header plus blocks with decisions."""

    name: str
    input: tuple[int, int, int] = (224, 224, 3)
    classes: int = Field(1000, ge=1, le=MAX_CLASSES)
    width: float = Field(1.0, gt=0.0, le=MAX_MULTIPLIER)
    depth: float = Field(1.0, gt=0.0, le=MAX_MULTIPLIER)
    divisor: int = Field(8, ge=1, le=1024)
    min_depth: int | None = None
    dropout: float = 0.2
    bn_momentum: float = 0.99
    bn_eps: float = 1e-3
    padding: Padding = "same"
    activation: Activation = "relu"
    stem: Block
    blocks: tuple[SpaceBlock, ...]
    head: Block
    head_mode: HeadMode = "fixed"
    stem_mode: HeadMode = "scaled"
    expansion_divisor: int = Field(1, ge=1, le=1024)
    head_pooled: bool = False


HEADER_FIELDS: tuple[str, ...] = (
    "input",
    "classes",
    "width",
    "depth",
    "divisor",
    "min_depth",
    "dropout",
    "bn_momentum",
    "bn_eps",
    "padding",
    "activation",
    "expansion_divisor",
)
