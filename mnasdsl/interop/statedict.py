"""Reading PyTorch state dicts without trusting them: safetensors through numpy (no torch needed),
legacy (non-zip) ``.pth`` files through mnasdsl's allow-list unpickler (no torch needed, see
``torch_legacy``), zip-format ``.pth``/``.pt`` only through ``torch.load(weights_only=True)`` when
torch is installed. A pickle is never unpickled any other way, and a file that is not what its name
promises is an error."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import numpy as np

from ..diagnostics import MnasError
from .torch_legacy import show_value as _show

_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _looks_pickled(head: bytes) -> bool:
    # A pickle of protocol 2+ starts with 0x80 and the protocol number; torch.save writes a zip.
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04"


def _not_safetensors(path: Path, head: bytes, why: str) -> MnasError:
    if _looks_pickled(head):
        return MnasError(f"{path}: this is a pickle (PyTorch .pth/.pt format), not safetensors; "
                         "rename it to .pth to read it with torch (weights only), or convert it")
    return MnasError(f"{path}: not a safetensors file ({why})")


# safetensors dtype -> little-endian numpy dtype; BF16 is read as its 16 bits and widened to float32
# (numpy has no bfloat16), as the legacy .pth and torch readers do.
_ST_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "U64": "<u8", "I32": "<i4",
    "U32": "<u4", "I16": "<i2", "U16": "<u2", "I8": "i1", "U8": "u1", "BOOL": "?", "C64": "<c8",
}
_MAX_HEADER = 100_000_000
_MAX_DIMS = 32
_WS = re.compile(r"[ \t\n\r]*")


def _check_safetensors_header(path: Path, data_len: int, head: bytes) -> int:
    """The header's length, once it fits the file: a readable reason for a bad file."""
    if data_len < 8:
        raise _not_safetensors(path, head, f"only {data_len} bytes")
    (n,) = struct.unpack("<Q", head[:8])
    if n > data_len - 8 or n > _MAX_HEADER:
        raise _not_safetensors(path, head, f"a header of {n} bytes in a file of {data_len}")
    return n


def _header_entries(path: Path, head: bytes, text: str) -> list[tuple[str, object]]:
    """The header's top-level (name, value) pairs, in order.

    The top level is parsed here and only each value by ``json``: a value nested too deep for the
    decoder (a RecursionError) or broken is then reported with the tensor it belongs to, and a name
    given twice (which ``json`` would silently collapse) is caught."""
    dec = json.JSONDecoder()
    i = _WS.match(text).end()
    if not text.startswith("{", i):
        try:
            dec.raw_decode(text, i)
        except ValueError:
            raise _not_safetensors(path, head, "its header is not JSON") from None
        except RecursionError:
            pass  # a deeply nested array
        raise _not_safetensors(path, head, "its header is not a JSON object")
    i = _WS.match(text, i + 1).end()
    out: list[tuple[str, object]] = []
    seen: set[str] = set()
    closed = text.startswith("}", i)
    while not closed:
        if not text.startswith('"', i):
            raise _not_safetensors(path, head, f"its header is not JSON (a name expected at character {i})")
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        where = f"{path}: tensor {_show(key)}"
        if key in seen:
            raise MnasError(f"{where} appears twice in the header")
        seen.add(key)
        i = _WS.match(text, i).end()
        if not text.startswith(":", i):
            raise MnasError(f"{where}: its header entry is not JSON (no ':' at character {i})")
        i = _WS.match(text, i + 1).end()
        try:
            value, i = dec.raw_decode(text, i)
        except RecursionError:
            raise MnasError(f"{where}: its header entry nests too deep") from None
        except ValueError as e:
            raise MnasError(f"{where}: its header entry is not JSON ({str(e).splitlines()[0]})") from None
        out.append((key, value))
        i = _WS.match(text, i).end()
        if text.startswith(",", i):
            i = _WS.match(text, i + 1).end()
        elif text.startswith("}", i):
            closed = True
        else:
            raise MnasError(f"{where}: its header entry is not followed by ',' or '}}' (character {i})")
    if _WS.match(text, i + 1).end() != len(text):
        raise _not_safetensors(path, head, "text follows its header's JSON object")
    return out


def _is_int(v: object) -> bool:
    return type(v) is int  # not bool, not float: JSON's 1e400 is a float (inf)


def _tensor_entry(where: str, v: object) -> tuple[str, tuple[int, ...], int, int]:
    """dtype, shape, begin, end of one tensor, each checked, so nothing later can fail on them."""
    if not isinstance(v, dict):
        raise MnasError(f"{where}: its header entry is a {type(v).__name__}, not an object with dtype, shape "
                        "and data_offsets")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in v]
    if missing:
        raise MnasError(f"{where}: its header entry has no {', '.join(missing)}")
    dtype, shape, offsets = v["dtype"], v["shape"], v["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise MnasError(f"{where}: dtype {_show(dtype)} is not one of {', '.join(_ST_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(_is_int(n) and n >= 0 for n in shape):
        raise MnasError(f"{where}: shape {_show(shape)} is not a list of at most {_MAX_DIMS} non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise MnasError(f"{where}: data_offsets {_show(offsets)} is not [begin, end], two integers with "
                        "0 <= begin <= end")
    begin, end = offsets
    item = np.dtype(_ST_DTYPES[dtype]).itemsize
    nbytes = math.prod(shape) * item
    if nbytes != end - begin:
        raise MnasError(f"{where}: shape {_show(shape)} of {dtype} takes {_show(nbytes)} bytes, its data_offsets "
                        f"span {end - begin}")
    if nbytes == 0 and math.prod(n for n in shape if n) * item >= 1 << 62:  # numpy refuses it, even empty
        raise MnasError(f"{where}: shape {_show(shape)} is too large")
    return dtype, tuple(shape), begin, end


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """name -> array, in the order of the data. The header is parsed and checked here, in full, before
    any tensor is read: every tensor's dtype, shape and span, and that the spans tile the data
    exactly (no overlap, no gap, nothing after, as the format requires). A damaged or crafted file
    is an MnasError naming the file and the tensor, never a crash, and memory stays at the file's
    size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            n = _check_safetensors_header(path, size, head)
            text = f.read(n).decode("utf-8")
            entries = _header_entries(path, head, text)
            tensors: list[tuple[str, str, tuple[int, ...], int, int]] = []
            for key, v in entries:
                where = f"{path}: tensor {_show(key)}"
                if key == "__metadata__":
                    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                        raise MnasError(f"{path}: __metadata__ is not an object of strings")
                    continue
                tensors.append((key, *_tensor_entry(where, v)))
            data_len = size - 8 - n
            tensors.sort(key=lambda t: (t[3], t[4]))
            at, prev = 0, ""
            for key, _, _, begin, end in tensors:
                where = f"{path}: tensor {_show(key)}"
                if end > data_len:
                    raise MnasError(f"{path}: truncated: tensor {_show(key)} ends at byte {end} of the data, "
                                    f"the file holds {data_len}")
                if begin < at:
                    raise MnasError(f"{where}: its data_offsets [{begin}, {end}] overlap tensor {_show(prev)}")
                if begin > at:
                    raise MnasError(f"{where}: {begin - at} bytes before it belong to no tensor (data_offsets "
                                    f"[{begin}, {end}])")
                at, prev = end, key
            if at != data_len:
                raise MnasError(f"{path}: {data_len - at} bytes after the last tensor belong to no tensor")
            data = bytearray(data_len)
            if f.readinto(data) != data_len:
                raise MnasError(f"{path}: truncated while reading (did the file change?)")
    except OSError as e:
        raise MnasError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise _not_safetensors(path, head, "its header is not UTF-8") from None
    except ValueError as e:  # a broken name string: json's scanstring
        raise _not_safetensors(path, head, f"its header is not JSON ({str(e).splitlines()[0]})") from None
    out: dict[str, np.ndarray] = {}
    for key, dtype, shape, begin, end in tensors:
        dt = np.dtype(_ST_DTYPES[dtype])
        a = (np.frombuffer(data, dt, count=(end - begin) // dt.itemsize, offset=begin).reshape(shape) if end > begin
             else np.zeros(shape, dt))
        out[key] = (a.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else a
    return out


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
