"""PyTorch's legacy (non-zip) ``.pth`` format, read without torch and without trusting the pickle.

``torch.save(..., _use_new_zipfile_serialization=False)`` (and every torch before 1.6) writes five
pickles one after another: a magic number, the format version (1001), a dict of system facts, the
object itself, whose tensors refer to storages by key (``persistent_id``), and the sorted list of
those keys; then, per key, an 8-byte little-endian element count and the storage's raw bytes.

Every pickle is read by an allow-list unpickler: only ``torch._utils._rebuild_tensor_v2`` (and its
parameter/v1 siblings), the ``torch.*Storage`` types and ``collections.OrderedDict`` resolve; any
other global (``os.system``, ``builtins.eval``, a model class) is refused before anything is called.
What they resolve to is immutable (slotted, frozen), so a pickle's BUILD cannot alter them for the
next file either. Tensors come back as numpy arrays, bounds-checked against the bytes read.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..diagnostics import MnasError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_MAX_DIMS = 32

# Storage type -> little-endian numpy dtype; bfloat16 is read as its 16 bits and widened to float32.
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class Refused(Exception):
    """A global outside the allow-list: raised by find_class, before the pickle can call it."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: a name, not callable."""

    name: str


@dataclass(frozen=True, slots=True)
class _Storage:
    key: str
    kind: str  # FloatStorage, ...
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _ints(x: Any, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or len(x) > _MAX_DIMS or not all(
            type(v) is int and v >= 0 for v in x):
        raise ValueError(f"bad tensor {what} {x!r}")
    return tuple(x)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> _TensorRef:
    if not isinstance(storage, _Storage) or type(storage_offset) is not int or storage_offset < 0:
        raise ValueError("a tensor without a valid storage")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise ValueError(f"tensor size {shape} and stride {strides} differ in length")
    if all(shape):  # the last element read must lie inside the storage
        last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise ValueError(f"a tensor of size {shape} reads past its storage of {storage.numel} elements")
    return _TensorRef(storage, storage_offset, shape, strides)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *state: Any) -> Any:
    return data


class _Call:
    """An allowed function as the pickle sees it: callable, with no attribute a BUILD could set
    (a bare function's ``__defaults__`` could be rewritten for every later read)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("read-only")

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # a built-in type: its attributes are read-only
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): _Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; storages (persistent ids) only where ``storages`` is given."""

    def __init__(self, f: IO[bytes], storages: dict[str, _Storage] | None) -> None:
        super().__init__(f)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None or not isinstance(pid, tuple) or not pid:
            raise ValueError(f"unexpected persistent id {pid!r}")
        tag = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if tag != "storage" or len(pid) != 6:
            raise Refused(f"persistent object {tag!r}" if tag == "module" else f"persistent id {pid!r}")
        _, kind, key, _location, numel, view = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise ValueError(f"malformed storage reference {pid!r}")
        if view is not None:
            raise ValueError("storage views (PyTorch before 0.4) are not supported")
        st = self._storages.get(key)
        if st is None:
            st = self._storages[key] = _Storage(key, kind.name, numel)
        elif (st.kind, st.numel) != (kind.name, numel):
            raise ValueError(f"storage {key!r} is referenced as two different storages")
        return st


def _load(f: IO[bytes], storages: dict[str, _Storage] | None = None) -> Any:
    return _Unpickler(f, storages).load()


def is_legacy(path: Path) -> bool:
    """Whether the file starts with the legacy format's magic-number pickle (read restricted)."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
        return _load(io.BytesIO(head)) == MAGIC_NUMBER
    except Exception:  # noqa: BLE001 - anything unreadable is simply not this format
        return False


def _materialize(x: Any, data: dict[str, np.ndarray], depth: int = 0) -> Any:
    """Replace tensor references by numpy arrays (copies), inside dicts, lists and tuples."""
    if depth > 100:
        raise ValueError("the object nests too deep")
    if type(x) is _TensorRef:
        st = x.storage
        buf = data[st.key]
        if not all(x.size):
            a = np.zeros(x.size, buf.dtype)
        else:  # checked again against the bytes actually read: as_strided trusts its arguments
            last = x.offset + sum((n - 1) * s for n, s in zip(x.size, x.stride))
            if last >= buf.size:
                raise ValueError(f"a tensor of size {x.size} reads past its storage of {buf.size} elements")
            item = buf.dtype.itemsize
            a = np.lib.stride_tricks.as_strided(buf[x.offset:], shape=x.size,
                                                strides=tuple(s * item for s in x.stride)).copy()
        if st.kind == "BFloat16Storage":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a
    if isinstance(x, dict):
        out = collections.OrderedDict() if isinstance(x, collections.OrderedDict) else {}
        for k, v in x.items():
            out[k] = _materialize(v, data, depth + 1)
        return out
    if isinstance(x, (list, tuple)):
        return type(x)(_materialize(v, data, depth + 1) for v in x)
    if isinstance(x, (_Storage, _StorageType, _Call)) or x is collections.OrderedDict:
        raise ValueError(f"a bare {type(x).__name__} outside a tensor")
    return x


def read_legacy(path: Path) -> Any:
    """The saved object, tensors as numpy arrays. Raises MnasError naming what is wrong, and which
    global was refused; nothing from the file is ever called."""
    try:
        raw = path.read_bytes()  # then every read is bounded by the file: no length in it is trusted
        return _read(io.BytesIO(raw), raw)
    except OSError as e:
        raise MnasError(f"{path}: cannot read: {e.strerror or e}") from None
    except Refused as e:
        raise MnasError(f"{path}: refused: the pickle asks for `{e}`, which a state dict never needs (only tensors, "
                        "storages and OrderedDict are allowed); nothing in it was run") from None
    except MnasError as e:
        raise MnasError(f"{path}: {e.diagnostics[0].message}") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle raises many types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MnasError(f"{path}: not a readable legacy PyTorch file: {msg}") from None


def _read(f: io.BytesIO, raw: bytes) -> Any:
    if _load(f) != MAGIC_NUMBER:
        raise MnasError("not a legacy PyTorch file (no magic number)")
    version = _load(f)
    if version != PROTOCOL_VERSION:
        raise MnasError(f"legacy PyTorch format version {version!r}, expected {PROTOCOL_VERSION}")
    info = _load(f)
    if isinstance(info, dict) and info.get("little_endian") is False:
        raise MnasError("saved on a big-endian machine, which is not supported")
    storages: dict[str, _Storage] = {}
    obj = _load(f, storages)
    keys = _load(f)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or set(keys) != set(storages) \
            or len(keys) != len(set(keys)):
        raise MnasError("the storage key list does not match the tensors' storages")
    data: dict[str, np.ndarray] = {}
    for key in keys:
        st = storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise MnasError(f"truncated: storage {key!r} is missing")
        n = int.from_bytes(head, "little", signed=True)
        if n != st.numel:
            raise MnasError(f"storage {key!r} holds {n} elements, its tensors expect {st.numel}")
        dtype = np.dtype(_STORAGE_DTYPES[st.kind])
        start = f.tell()
        nbytes = n * dtype.itemsize
        if start + nbytes > len(raw):
            raise MnasError(f"truncated: storage {key!r} needs {nbytes} bytes, the file has {len(raw) - start} left")
        data[key] = np.frombuffer(raw, dtype, count=n, offset=start)
        f.seek(start + nbytes)
    return _materialize(obj, data)
