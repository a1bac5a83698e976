"""Reading PyTorch state dicts without trusting them: safetensors through numpy (no torch needed),
legacy (non-zip) ``.pth`` files through mnasdsl's allow-list unpickler (no torch needed, see
``torch_legacy``), zip-format ``.pth``/``.pt`` only through ``torch.load(weights_only=True)`` when
torch is installed. A pickle is never unpickled any other way, and a file that is not what its name
promises is an error."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..diagnostics import MnasError

_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _looks_pickled(head: bytes) -> bool:
    # A pickle of protocol 2+ starts with 0x80 and the protocol number; torch.save writes a zip.
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04"


def _not_safetensors(path: Path, head: bytes, why: str) -> MnasError:
    if _looks_pickled(head):
        return MnasError(f"{path}: this is a pickle (PyTorch .pth/.pt format), not safetensors; "
                         "rename it to .pth to read it with torch (weights only), or convert it")
    return MnasError(f"{path}: not a safetensors file ({why})")


def _check_safetensors_header(path: Path, data_len: int, head: bytes) -> None:
    """A readable reason for a bad file before the library's terse one."""
    if data_len < 8:
        raise _not_safetensors(path, head, f"only {data_len} bytes")
    (n,) = struct.unpack("<Q", head[:8])
    if n > data_len - 8 or n > 100_000_000:
        raise _not_safetensors(path, head, f"a header of {n} bytes in a file of {data_len}")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            _check_safetensors_header(path, size, head)
            (n,) = struct.unpack("<Q", head)
            header = json.loads(f.read(n))
    except OSError as e:
        raise MnasError(f"{path}: cannot read: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError):
        raise _not_safetensors(path, head, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise MnasError(f"{path}: not a safetensors file (its header is not a JSON object)")
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise MnasError(f"{path}: truncated: the header describes {8 + n + end} bytes, the file has {size}")
    has_bf16 = any(isinstance(v, dict) and v.get("dtype") == "BF16" for v in header.values())
    try:
        if has_bf16:  # numpy has no bfloat16: read through jax's ml_dtypes-backed numpy types
            import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - the library raises several types for a damaged file
        raise MnasError(f"{path}: not a valid safetensors file: {str(e).splitlines()[0] if str(e) else e}") from None
    return dict(tensors)


_WRAPPERS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


def _unwrap(obj: object) -> object:
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def read_legacy_pth(path: Path) -> dict[str, np.ndarray]:
    """A legacy-format .pth without torch: tensors, storages and OrderedDicts only."""
    from .torch_legacy import read_legacy

    obj = _unwrap(read_legacy(path))
    if not isinstance(obj, dict):
        raise MnasError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise MnasError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    return {str(k): v for k, v in obj.items()}


def read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        with path.open("rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        what = ("a zip-format PyTorch file (torch.save's default since PyTorch 1.6)" if zipped
                else "not a legacy-format PyTorch file")
        raise MnasError(f"{path}: {what}: reading it needs PyTorch (loaded only with torch.load(weights_only=True)); "
                        "install torch, or convert the state dict to .safetensors, which needs nothing (legacy, "
                        "non-zip .pth files are read without torch)") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad or unsafe files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MnasError(f"{path}: cannot load as a weights-only PyTorch file: {msg}") from None
    obj = _unwrap(obj)
    if not isinstance(obj, dict):
        raise MnasError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise MnasError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        t = v.detach().cpu()
        out[str(k)] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return out


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array. Keys saved from a DataParallel/compiled module (``module.``, ``_orig_mod.``) are
    unwrapped. Float tensors of any precision are accepted; every other dtype is reported."""
    p = Path(path)
    if not p.is_file():
        raise MnasError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        sd = read_safetensors(p)
    elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
        from .torch_legacy import is_legacy

        sd = read_legacy_pth(p) if is_legacy(p) else read_torch(p)
    else:
        raise MnasError(f"{p}: unknown weights format {suffix or '(no extension)'!r} (expected .safetensors, "
                        ".pth or .pt)")
    if not sd:
        raise MnasError(f"{p}: the state dict is empty")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def as_float32(name: str, a: np.ndarray) -> np.ndarray:
    if str(a.dtype) not in _FLOATS:
        raise MnasError(f"tensor {name!r} has dtype {a.dtype}, expected a float")
    out = np.asarray(a, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise MnasError(f"tensor {name!r} holds NaN or infinite values")
    return out
