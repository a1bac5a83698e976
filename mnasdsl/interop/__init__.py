"""Interop: architectures and weights from timm, torchvision, efficientnet_pytorch and TF block-string lists.

``archs`` turns other tools' architecture descriptions into `.mnas` text (no jax); ``statedict``
reads weight files safely (``torch_legacy``: legacy .pth files without torch); ``weights`` maps
PyTorch layouts onto the Flax backend's variables; ``packages`` finds weights that pip packages ship.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..diagnostics import MnasError
from .archs import MODELS, ModelDef, Settings, arch_from_tf, arch_from_timm, find_model, model_text, parsed_network
from .statedict import read_state_dict

__all__ = ["MODELS", "ModelDef", "Settings", "arch_from_tf", "arch_from_timm", "find_model", "import_weights",
           "model_text", "parsed_network", "read_state_dict", "write_model_dir"]


def import_weights(model_def: ModelDef, spec_text: str, state_dict: dict[str, Any], origin: str | None = None) -> Any:
    """The Flax model of ``spec_text`` holding ``state_dict``'s weights (strictly mapped);
    ``origin`` (the weights file) is where a mismatch is reported."""
    from flax import nnx

    from ..backends.flax import build, variables
    from ..lowering import lower
    from .weights import map_state_dict

    net = parsed_network(spec_text)
    low = lower(net)
    model = build(low, rngs=nnx.Rngs(0))
    what = f"{model_def.source}'s {model_def.name} at width {net.width:g} with {net.classes} classes"
    try:
        filled = map_state_dict(state_dict, low, model_def.scheme, variables(model), what, model_def.stages)
    except MnasError as e:
        raise MnasError(e.diagnostics[0].message, path=origin) from None
    for key, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, kind)
        nnx.replace_by_pure_dict(state, filled[key])
        nnx.update(model, state)
    return model


def write_model_dir(out: str | Path, model_def: ModelDef, spec_text: str, model: Any, weights: Path | None,
                    tensors: int) -> Path:
    """Write DIR (spec, Flax checkpoint, provenance); ``weights`` None means fetched pretrained."""
    from .weights import file_sha256, write_import

    prov = {"format": "mnasdsl-import/1", "source": model_def.source, "model": model_def.name,
            "weights": weights.name if weights else f"pretrained, through {model_def.source}",
            "sha256": file_sha256(weights) if weights else None, "tensors": tensors,
            "spec": f"{model_def.name}.mnas"}
    h, w, _ = model.lowered.input_shape
    return write_import(Path(out), f"{model_def.name}.mnas", spec_text, model, prov, model_def.preprocess((h, w)))
