"""PyTorch's legacy (non-zip) ``.pth`` format, read without torch and without trusting the pickle.

``torch.save(..., _use_new_zipfile_serialization=False)`` (and every torch before 1.6) writes five
pickles one after another: a magic number, the format version (1001), a dict of system facts, the
object itself, whose tensors refer to storages by key (``persistent_id``), and the sorted list of
those keys; then, per key, an 8-byte little-endian element count and the storage's raw bytes.

Every pickle is read by an allow-list unpickler: only ``torch._utils._rebuild_tensor_v2`` (and its
parameter/v1 siblings), the ``torch.*Storage`` types and ``collections.OrderedDict`` resolve; any
other global (``os.system``, ``builtins.eval``, a model class) is refused before anything is called.
The pickle's BUILD opcode (``__setstate__``) is refused on everything but an OrderedDict instance
(see ``_Unpickler``), so nothing the reader checked can change afterwards, and what a global
resolves to is made afresh per lookup, so one file cannot alter how the next one is read.

Tensors come back as numpy arrays (copies). Each is bounds-checked, on its final values, against
the bytes actually read: non-negative offset and strides, first and last element inside the
storage. Together they may take at most ``_BUDGET_FACTOR`` x the storage bytes in the file (plus
``_BUDGET_FLOOR``), so a stride-0 tensor of huge size is refused before anything is allocated;
shared objects are materialized once (their identity kept), so a DAG of shared lists costs its
size, not its unfolding.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..diagnostics import MnasError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_MAX_DIMS = 32
_MAX_DEPTH = 100
# A state dict materializes each stored element about once (a saved view, e.g. a transposed copy of
# a weight, adds one more); 4x leaves room for that while tying memory to what the file holds. The
# floor lets a small file hold a few expanded (stride-0) tensors; 16 MiB harms nobody.
_BUDGET_FACTOR = 4
_BUDGET_FLOOR = 16 << 20
# Objects visited (each shared one once): far above any checkpoint, far below minutes of work.
_MAX_NODES = 2_000_000

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


def show_value(x: Any) -> str:
    """A value from the file, for a message: short, and never an error itself (a huge int's repr is)."""
    try:
        text = repr(x)
    except ValueError:
        return f"a {type(x).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _ints(x: Any, what: str) -> tuple[int, ...]:
    """Sizes, strides: non-negative and below 2**63, as torch's int64 holds them."""
    if not isinstance(x, (tuple, list)) or len(x) > _MAX_DIMS or not all(
            type(v) is int and 0 <= v < 1 << 63 for v in x):
        raise ValueError(f"bad tensor {what} {show_value(x)}")
    return tuple(x)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> _TensorRef:
    if type(storage) is not _Storage:
        raise ValueError("a tensor without a valid storage")
    if type(storage_offset) is not int or not 0 <= storage_offset < 1 << 63:
        raise ValueError(f"bad tensor storage offset {show_value(storage_offset)}")
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

    __slots__ = ("_fn", "name")

    def __init__(self, fn: Any, name: str) -> None:
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "name", name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("read-only")

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


_FUNCTIONS = {"_rebuild_tensor_v2": _rebuild_tensor_v2, "_rebuild_tensor": _rebuild_tensor,
              "_rebuild_parameter": _rebuild_parameter, "_rebuild_parameter_with_state": _rebuild_parameter}

# (module, name) -> a factory of what the global resolves to: a fresh object per lookup, so nothing a
# pickle could do to it outlives the read.
_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,  # a built-in type: read-only attributes
    **{("torch._utils", name): (lambda name=name, fn=fn: _Call(fn, f"torch._utils.{name}"))
       for name, fn in _FUNCTIONS.items()},
    **{("torch", name): (lambda name=name: _StorageType(name)) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler, on purpose: see below
    """Resolves only the allow-listed globals; storages (persistent ids) only where ``storages`` is given.

    BUILD (``__setstate__``) is refused on everything except an OrderedDict instance, whose state it
    drops. Why the pure-Python unpickler: the C one (``pickle.Unpickler``) has no per-opcode hook, so
    there BUILD can only be stopped object by object (a ``__setstate__`` that raises on each allowed
    type, on the objects the allowed functions return, on OrderedDict ...), and every type that is
    missed (a frozen slotted dataclass still has a ``__setstate__`` writing through
    ``object.__setattr__``) lets a file rewrite what was already checked. Refusing the opcode itself
    is default-deny: a new allowed type cannot reopen the hole. The price is speed, and the pickle
    of a state dict is small (its tensors' bytes are read outside it): about 40 kB for
    EfficientNet-Lite0. OrderedDict is the one legitimate target: ``Module.state_dict()`` sets a
    ``_metadata`` attribute on it, which pickles as BUILD; mnasdsl never reads it.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f: IO[bytes], storages: dict[str, _Storage] | None) -> None:
        super().__init__(f)
        self._storages = storages

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is not collections.OrderedDict or type(state) is not dict:
            raise ValueError(f"refused: the pickle sets the state of {_describe(inst)} (BUILD), which a state dict "
                             "never does")

    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str) -> Any:
        make = _ALLOWED.get((module, name)) if isinstance(module, str) and isinstance(name, str) else None
        if make is None:
            what = f"{module}.{name}"
            raise Refused(what if len(what) <= 120 else what[:117] + "...")
        return make()

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None or not isinstance(pid, tuple) or not pid:
            raise ValueError(f"unexpected persistent id {show_value(pid)}")
        tag = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if tag != "storage" or len(pid) != 6:
            raise Refused(f"persistent object {tag!r}" if tag == "module" else f"persistent id {show_value(pid)}")
        _, kind, key, _location, numel, view = pid
        if type(kind) is not _StorageType or type(key) is not str or type(numel) is not int \
                or not 0 <= numel < 1 << 63:
            raise ValueError(f"malformed storage reference {show_value(pid)}")
        if view is not None:
            raise ValueError("storage views (PyTorch before 0.4) are not supported")
        st = self._storages.get(key)
        if st is None:
            st = self._storages[key] = _Storage(key, kind.name, numel)
        elif (st.kind, st.numel) != (kind.name, numel):
            raise ValueError(f"storage {show_value(key)} is referenced as two different storages")
        return st


def _describe(x: Any) -> str:
    if type(x) is _StorageType:
        return f"`torch.{x.name}`"
    if type(x) is _Call:
        return f"`{x.name}`"
    if x is collections.OrderedDict:
        return "`collections.OrderedDict`"
    if type(x) is collections.OrderedDict:
        return "an OrderedDict"
    return {_TensorRef: "a tensor", _Storage: "a storage"}.get(type(x), f"a {type(x).__name__}")


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


_LEAVES = (int, float, bool, str, bytes, type(None))


def _where(path: tuple[Any, ...]) -> str:
    """``path`` (the keys from the top, the first few) as text, for a message."""
    def text(k: Any) -> str:
        if type(k) is str:
            return repr(k if len(k) <= 80 else k[:77] + "...")
        return str(k) if type(k) is int and abs(k) < 1 << 63 else f"<{type(k).__name__}>"
    return "the object" + "".join(f"[{text(k)}]" for k in path) if path else "the object"


class _Materializer:
    """Replaces tensor references by numpy arrays (copies), inside dicts, lists and tuples.

    Each object is visited once (memoized by id, so a shared tensor stays one array and lists that
    hold one list twice, level after level, cost their size, not 2**levels); the bytes of all
    arrays are budgeted against the storage bytes read before any is allocated."""

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.data = data
        stored = sum(b.nbytes for b in data.values())
        self.stored = stored
        self.left = _BUDGET_FACTOR * stored + _BUDGET_FLOOR
        self.memo: dict[int, Any] = {}
        self.busy: set[int] = set()
        self.plain: set[int] = set()  # ids of the tuples and frozensets found to hold plain data only
        self.nodes = 0

    def _count(self) -> None:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise ValueError(f"the object holds more than {_MAX_NODES:,} values, far more than a state dict")

    def key(self, k: Any, depth: int = 0) -> None:
        """A dict key or set element must be plain data: a tensor or an allowed global there would
        escape the checks (and the arrays)."""
        self._count()
        if type(k) in _LEAVES:
            return
        if type(k) not in (tuple, frozenset) or depth > _MAX_DEPTH:
            raise ValueError(f"{_describe(k)} as a dict key or set element")
        if id(k) not in self.plain:
            for v in k:
                self.key(v, depth + 1)
            self.plain.add(id(k))

    def __call__(self, x: Any, path: tuple[Any, ...] = (), depth: int = 0) -> Any:
        self._count()
        if type(x) in _LEAVES or type(x) is bytearray:
            return x
        if id(x) in self.memo:
            return self.memo[id(x)]
        if depth > _MAX_DEPTH:
            raise ValueError(f"{_where(path)} nests more than {_MAX_DEPTH} levels deep")
        if id(x) in self.busy:
            raise ValueError(f"{_where(path)} contains itself")
        self.busy.add(id(x))
        out: Any
        if type(x) is _TensorRef:
            out = self.tensor(x, _where(path))
        elif type(x) in (dict, collections.OrderedDict):
            out = type(x)()
            for k, v in x.items():
                self.key(k)
                out[k] = self(v, path + (k,) if depth < 4 else path, depth + 1)
        elif type(x) in (list, tuple):
            out = type(x)(self(v, path + (i,) if depth < 4 else path, depth + 1) for i, v in enumerate(x))
        elif type(x) in (set, frozenset):
            for v in x:
                self.key(v, depth + 1)
            out = x
        else:
            raise ValueError(f"{_where(path)} is {_describe(x)}, outside a tensor")
        self.busy.discard(id(x))
        self.memo[id(x)] = out
        return out

    def tensor(self, x: _TensorRef, where: str) -> np.ndarray:
        """The checks ``_rebuild_tensor_v2`` made, again, on the final values: ``as_strided`` trusts
        its arguments, so nothing that could have changed in between may reach it unchecked."""
        st, offset, size, stride = x.storage, x.offset, x.size, x.stride
        if type(st) is not _Storage or st.key not in self.data:
            raise ValueError(f"{where}: a tensor without a valid storage")
        if not (type(offset) is int and offset >= 0 and type(size) is tuple and type(stride) is tuple
                and len(size) == len(stride) <= _MAX_DIMS
                and all(type(v) is int and 0 <= v < 1 << 63 for v in (offset, *size, *stride))):
            raise ValueError(f"{where}: a tensor with offset {show_value(offset)}, size {show_value(size)}, "
                             f"stride {show_value(stride)}")
        buf = self.data[st.key]
        item = 4 if st.kind == "BFloat16Storage" else buf.dtype.itemsize  # bfloat16 is widened
        if not all(size):
            if math.prod(n for n in size if n) * item >= 1 << 62:  # numpy refuses such a shape, even empty
                raise ValueError(f"{where}: a tensor of size {size}")
            a = np.zeros(size, buf.dtype)
        else:
            nbytes = math.prod(size) * item
            if nbytes > self.left:
                raise ValueError(
                    f"{where}: a tensor of size {size} (stride {stride}) would bring the arrays read past "
                    f"{_BUDGET_FACTOR} x the {self.stored} bytes of storage in the file (+{_BUDGET_FLOOR >> 20} MiB); "
                    "a state dict repeats its stored values no more than that")
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))  # strides >= 0: first is offset
            if last >= buf.size:
                raise ValueError(f"{where}: a tensor of size {size} reads past its storage of {buf.size} elements")
            self.left -= nbytes
            # A dimension of size 1 never steps: its stride is set to 0, so no product can overflow.
            strides = tuple(s * buf.dtype.itemsize if n > 1 else 0 for n, s in zip(size, stride))
            a = np.lib.stride_tricks.as_strided(buf[offset:], shape=size, strides=strides).copy()
        if st.kind == "BFloat16Storage":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a


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
        raise MnasError(f"legacy PyTorch format version {show_value(version)}, expected {PROTOCOL_VERSION}")
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
            raise MnasError(f"truncated: storage {show_value(key)} is missing")
        n = int.from_bytes(head, "little", signed=True)
        if n != st.numel:
            raise MnasError(f"storage {show_value(key)} holds {n} elements, its tensors expect {st.numel}")
        dtype = np.dtype(_STORAGE_DTYPES[st.kind])
        start = f.tell()
        nbytes = n * dtype.itemsize
        if start + nbytes > len(raw):
            raise MnasError(f"truncated: storage {show_value(key)} needs {nbytes} bytes, "
                            f"the file has {len(raw) - start} left")
        data[key] = np.frombuffer(raw, dtype, count=n, offset=start)
        f.seek(start + nbytes)
    return _Materializer(data)(obj)
