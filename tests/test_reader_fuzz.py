"""Fuzz the readers of files users download: legacy ``.pth``, ``.safetensors``, model cards and ONNX.

Why: these files come from strangers. Whatever their bytes, reading one must end in a result or in
one clear error (the CLI's exit 1) — never a crash by signal, an "internal error", memory in
proportion to what the file *claims* rather than what it holds, or a read that runs on. Unit tests
check the crafted cases somebody found; this drives each reader with files generated at the level
the attacker works at (pickle opcodes, JSON headers, protobuf fields) and with byte mutations of
valid files.

Each file is read in a worker process under ``RLIMIT_AS``, so a memory bomb stops the worker, not
the machine. Per file the worker reports the outcome, the wall time and the growth of its peak
resident set (``VmHWM``, reset before each file through ``/proc/self/clear_refs``). Properties:
- the outcome is a value or a ``MnasError`` naming the file; no other exception, no signal;
- peak RSS growth below 10 x the file size + 200 MB;
- under 10 s per file.

The crafted reproducers of the issues that found these bugs are kept in ``tests/fixtures/untrusted``
and run first, on every run. Profiles: about 70 generated files per reader in CI (well under a
minute); ``MNASDSL_FUZZ_EXAMPLES=20000`` spreads that many over the four readers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import ROOT

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="per-file peak RSS needs Linux's /proc/self/clear_refs")

_LONG = int(os.environ.get("MNASDSL_FUZZ_EXAMPLES", "0") or 0)
EXAMPLES = _LONG // 4 if _LONG else 70
FIXTURES = ROOT / "tests" / "fixtures" / "untrusted"
TIME_LIMIT_S = 10.0
AS_LIMIT = 4 << 30  # the worker's address space: the host survives whatever a file asks for
READERS = ("pth", "safetensors", "card", "onnx")


def _fixture_script() -> Any:
    """The script that writes the crafted fixtures: its valid card and tiny ONNX model are the
    starting points of the card and ONNX generators below."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURE_SCRIPT = _fixture_script()

WORKER = textwrap.dedent("""
    import json, resource, sys, time, traceback
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash is reported, not dumped
    from mnasdsl.diagnostics import MnasError
    from mnasdsl.interop.statedict import read_state_dict
    from mnasdsl.backends.artifact import read_card
    from mnasdsl.backends.onnx_export import load_onnx

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0

    READ = {"pth": read_state_dict, "safetensors": read_state_dict,
            "card": lambda p: read_card(p[:-len(".json")]), "onnx": lambda p: load_onnx(p, intra_op_num_threads=1)}
    from pathlib import Path
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set to the current one
        base = status("VmRSS:")
        t0 = time.perf_counter()
        try:
            path = job["path"] if job["kind"] == "card" else Path(job["path"])
            READ[job["kind"]](path)
            out = {"outcome": "ok"}
        except MnasError as e:
            out = {"outcome": "error", "message": str(e)}
        except BaseException as e:
            out = {"outcome": "crash", "message": "".join(traceback.format_exception(e))[-3000:]}
        out["seconds"] = time.perf_counter() - t0
        out["rss_growth"] = status("VmHWM:") - base
        print(json.dumps(out), flush=True)
""")


class Worker:
    """One reader process, restarted after it dies; ``read`` enforces the time limit from outside."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(AS_LIMIT)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        assert self._line(proc, 120.0) == {"ready": True}
        return proc

    @staticmethod
    def _line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any] | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = proc.stdout.readline()
        return json.loads(line) if line else None

    def read(self, kind: str, path: Path) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"kind": kind, "path": str(path)}) + "\n")
        self.proc.stdin.flush()
        out = self._line(self.proc, TIME_LIMIT_S + 5.0)
        if out is None:
            try:
                code = self.proc.wait(timeout=5.0)  # the pipe closed: it died (a signal is a negative status)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return {"outcome": "timeout", "message": f"no answer in {TIME_LIMIT_S + 5:.0f} s"}
            return {"outcome": "signal" if code < 0 else "died", "message": f"worker exit status {code}"}
        return out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.close()


def check(worker: Worker, kind: str, path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    out = worker.read(kind, path)
    assert out["outcome"] in ("ok", "error"), f"{kind} reader on {path.name}: {out['outcome']}: {out['message']}"
    if out["outcome"] == "error":
        assert path.name in out["message"], out["message"]
        assert "internal error" not in out["message"]
    assert out["seconds"] < TIME_LIMIT_S, f"{path.name}: {out['seconds']:.1f} s"
    assert out["rss_growth"] < 10 * size + (200 << 20), f"{path.name}: peak RSS grew {out['rss_growth'] >> 20} MB"
    return out


def _settings(n: int) -> settings:
    return settings(deadline=None, max_examples=n, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# -- byte mutations -----------------------------------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few byte-level edits: flips, overwrites with boundary bytes, cuts, splices."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not b:
            break
        op = draw(st.sampled_from(["flip", "byte", "truncate", "delete", "insert", "dup"]))
        i = draw(st.integers(0, len(b) - 1))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            b[i] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif op == "truncate":
            del b[i:]
        elif op == "delete":
            del b[i:i + draw(st.integers(1, 16))]
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            j = draw(st.integers(i, min(len(b), i + 64)))
            b[i:i] = b[i:j]
    return bytes(b)


# -- legacy .pth: pickle opcodes ---------------------------------------------------------------------------

MAGIC = 0x1950A86A20F9469CFC6C
KINDS = ("FloatStorage", "HalfStorage", "DoubleStorage", "BFloat16Storage", "LongStorage", "IntStorage",
         "ByteStorage", "BoolStorage", "CharStorage", "ShortStorage")
ITEMSIZE = {"FloatStorage": 4, "HalfStorage": 2, "DoubleStorage": 8, "BFloat16Storage": 2, "LongStorage": 8,
            "IntStorage": 4, "ByteStorage": 1, "BoolStorage": 1, "CharStorage": 1, "ShortStorage": 2}
BIG = st.sampled_from([0, 1, -1, 2, 3, 7, 2**31 - 1, -(2**31), 2**40, -(2**40), 2**62, 2**63 - 1, 2**64, -(2**63)])
SMALL_INT = st.integers(-4, 70) | BIG
DIM = st.integers(0, 8) | st.integers(0, 8) | st.sampled_from([2**20, 2**31 - 1, 2**40, 2**62]) | SMALL_INT


def _pint(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _pstr(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


@st.composite
def pth_files(draw: st.DrawFn) -> bytes:
    """torch.save's legacy framing around an object pickle built from opcodes. A valid state dict
    first (tensors that pass every check at rebuild time, as a real file's do), then one attack:
    BUILD on a tensor (a slotted dataclass's __setstate__ takes its fields in order) or on an
    allow-listed global, a stride-0 tensor of huge size, lists sharing one list (2**levels leaves
    in a few bytes), a storage whose element count lies, tensors with boundary offsets, sizes and
    strides, a foreign global, or byte mutations."""
    import pickle

    keys = [str(i) for i in range(draw(st.integers(1, 3)))]
    kind = {k: draw(st.sampled_from(KINDS)) for k in keys}
    numel = {k: draw(st.integers(1, 64)) for k in keys}
    claimed = dict(numel)
    memo = 0
    used: set[str] = set()
    prefix = b""

    def storage(k: str) -> bytes:
        used.add(k)
        return (b"(" + _pstr("storage") + _global("torch", kind[k]) + _pstr(k) + _pstr("cpu")
                + _pint(claimed[k]) + b"N" + b"tQ")

    def tensor(k: str, offset: int, size: list[int], stride: list[int], wrap: bool = False) -> bytes:
        args = (storage(k) + _pint(offset) + b"(" + b"".join(map(_pint, size)) + b"t" + b"("
                + b"".join(map(_pint, stride)) + b"t" + b"\x89" + _global("collections", "OrderedDict") + b")R")
        out = _global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"
        if wrap:  # nn.Parameter
            out = (_global("torch._utils", "_rebuild_parameter") + b"(" + out + b"\x89"
                   + _global("collections", "OrderedDict") + b")R" + b"tR")
        return out

    def valid() -> bytes:
        k = draw(st.sampled_from(keys))
        offset = draw(st.integers(0, numel[k] - 1))
        n = numel[k] - offset
        if n >= 4 and draw(st.booleans()):
            return tensor(k, offset, [2, n // 2], [n // 2, 1], draw(st.booleans()))
        return tensor(k, offset, [n], [1], draw(st.booleans()))

    entries = [valid() for _ in range(draw(st.integers(1, 3)))]
    attack = draw(st.sampled_from(["none", "build_tensor", "build_global", "zero_stride", "chain", "numel",
                                   "bounds", "global", "bytes"]))
    k = draw(st.sampled_from(keys))
    if attack == "build_tensor":
        dims = draw(st.integers(1, 2))
        size = [draw(st.integers(2, 8) | DIM) for _ in range(dims)]
        stride = [draw(st.sampled_from([-(2**40), -(2**20), -2, -1, 0, 1, 2**40])) for _ in range(dims)]
        state = (b"(" + storage(k) + _pint(draw(st.sampled_from([0, 1, -1, -64]) | SMALL_INT)) + b"("
                 + b"".join(map(_pint, size)) + b"t(" + b"".join(map(_pint, stride)) + b"tt")
        entries.append(valid() + state + b"b")
    elif attack == "build_global":
        target = draw(st.sampled_from([_global("torch", draw(st.sampled_from(KINDS))),
                                       _global("torch._utils", "_rebuild_tensor_v2"),
                                       _global("torch._utils", "_rebuild_parameter"),
                                       _global("collections", "OrderedDict")]))
        state = draw(st.sampled_from([b"(" + _pstr("HalfStorage") + b"t",  # a slotted class's fields, in order
                                      b"N}(" + _pstr("name") + _pstr("HalfStorage") + b"u\x86",
                                      b"}(" + _pstr("__defaults__") + b"(" + _pint(1) + b"tu",
                                      b"}(" + _pstr("_fn") + _global("torch._utils", "_rebuild_parameter") + b"u"]))
        prefix = target + state + b"b0"  # BUILD, then POP: only the side effect stays
    elif attack == "zero_stride":
        entries.append(tensor(k, 0, [draw(st.sampled_from([2**20, 2**28, 2**33, 2**40]))], [0]))
    elif attack == "chain":
        memo += 1
        out = b"](" + valid() + b"e" + b"r" + struct.pack("<I", memo)
        for _ in range(draw(st.integers(2, 40))):
            memo += 1
            out = b"](" + out + b"h" + struct.pack("<I", memo - 1) + b"e" + b"r" + struct.pack("<I", memo)
        entries.append(out)
    elif attack == "numel":
        claimed[k] = draw(SMALL_INT)
    elif attack == "bounds":
        dims = draw(st.integers(0, 4))
        entries.append(tensor(k, draw(SMALL_INT), [draw(DIM) for _ in range(dims)],
                              [draw(DIM) for _ in range(draw(st.sampled_from([dims, dims, dims + 1])))]))
    elif attack == "global":
        entries.append(_global(draw(st.sampled_from(["os", "builtins", "torch", "numpy", "posix"])),
                               draw(st.sampled_from(["system", "eval", "Tensor", "load", "getattr"]))) + b")R")
    obj = b"\x80\x02" + prefix + b"}(" + b"".join(_pstr(f"w{i}") + e for i, e in enumerate(entries)) + b"u."
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC, 1001, {"protocol_version": 1001,
                                                                        "little_endian": True}))
    listed = sorted(used)
    tail = pickle.dumps(listed, protocol=2)
    for key in listed:
        tail += struct.pack("<q", max(min(claimed[key], 2**63 - 1), -(2**63)))
        tail += bytes([draw(st.sampled_from([0, 0x3F, 0xFF]))]) * (numel[key] * ITEMSIZE[kind[key]])
    data = head + obj + tail
    return draw(mutated(data)) if attack == "bytes" else data


# -- safetensors: JSON headers ------------------------------------------------------------------------------

JSON_ODD = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=6), st.booleans(), st.none(),
                     st.lists(st.integers(-5, 100) | st.text(max_size=3), max_size=4))
DTYPES = ("F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "X")


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    header: dict[str, Any] = {}
    body = draw(st.integers(0, 256))
    for i in range(draw(st.integers(0, 4))):
        shape = draw(st.lists(st.integers(0, 8) | BIG, max_size=4)) if draw(st.booleans()) else draw(JSON_ODD)
        a = draw(st.integers(0, body))
        b = draw(st.integers(a, body))
        offsets = [a, b] if draw(st.integers(0, 2)) else draw(JSON_ODD)
        entry: Any = {"dtype": draw(st.sampled_from(DTYPES)) if draw(st.integers(0, 3)) else draw(JSON_ODD),
                      "shape": shape, "data_offsets": offsets}
        header[f"t{i}"] = entry if draw(st.integers(0, 5)) else draw(JSON_ODD)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)
                                      | JSON_ODD)
    text = json.dumps(header)
    if draw(st.integers(0, 9)) == 0:
        depth = draw(st.integers(100, 50_000))
        text = '{"t0": {"dtype": "F32", "shape": [1], "data_offsets": ' + "[" * depth + "]" * depth + "}}"
    raw = text.encode()
    n = len(raw) if draw(st.integers(0, 5)) else draw(BIG | st.integers(0, 400))
    data = struct.pack("<Q", n % 2**64) + raw + bytes(body)
    return draw(mutated(data)) if draw(st.integers(0, 4)) == 0 else data


# -- model cards: JSON --------------------------------------------------------------------------------------

JSON_ANY = st.recursive(JSON_ODD, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=12)


@st.composite
def card_files(draw: st.DrawFn) -> bytes:
    card = FIXTURE_SCRIPT.valid_card()
    for _ in range(draw(st.integers(0, 3))):
        where = card if draw(st.booleans()) else card["preprocess"]
        if not isinstance(where, dict):
            break
        key = draw(st.sampled_from(sorted(where) + ["unknown"]))
        where[key] = draw(JSON_ANY)
    text = json.dumps(card, allow_nan=True)
    if draw(st.integers(0, 7)) == 0:
        depth = draw(st.integers(100, 50_000))
        text = text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    data = text.encode()
    return draw(mutated(data)) if draw(st.integers(0, 3)) == 0 else data


# -- ONNX: protobuf fields ----------------------------------------------------------------------------------

@st.composite
def onnx_files(draw: st.DrawFn) -> bytes:
    import onnx

    m = onnx.load_model_from_string(FIXTURE_SCRIPT.tiny_onnx())
    for _ in range(draw(st.integers(0, 2))):
        edit = draw(st.sampled_from(["dims", "external", "raw", "ir", "opset", "attr", "dtype"]))
        if edit == "dims":
            d = m.graph.input[0].type.tensor_type.shape.dim[draw(st.integers(0, 3))]
            d.dim_value = draw(st.integers(-5, 2**40))
        elif edit == "external":
            t = m.graph.initializer[draw(st.integers(0, 1))]
            e = t.external_data.add()
            e.key, e.value = "location", draw(st.sampled_from(["secret.bin", "/etc/passwd", "../x", ""]))
            t.data_location = onnx.TensorProto.EXTERNAL
        elif edit == "raw":
            t = m.graph.initializer[draw(st.integers(0, 1))]
            t.raw_data = draw(st.binary(max_size=64))
        elif edit == "ir":
            m.ir_version = draw(st.integers(0, 2**40))
        elif edit == "opset":
            m.opset_import[0].version = draw(st.integers(0, 10_000))
        elif edit == "attr":
            m.graph.node[0].attribute.extend([onnx.helper.make_attribute("allowzero", draw(st.integers(-3, 3)))])
        else:
            m.graph.initializer[0].data_type = draw(st.integers(0, 40))
    data = m.SerializeToString()
    return draw(mutated(data)) if draw(st.integers(0, 2)) == 0 else data


GENERATORS = {"pth": pth_files(), "safetensors": safetensors_files(), "card": card_files(), "onnx": onnx_files()}
SUFFIX = {"pth": ".pth", "safetensors": ".safetensors", "card": ".onnx.json", "onnx": ".onnx"}


# -- the properties ----------------------------------------------------------------------------------------

def _kind_of(path: Path) -> str | None:
    name = path.name
    for kind, suffix in SUFFIX.items():
        if name.endswith(suffix):
            return "card" if kind == "onnx" and name.endswith(".json") else kind
    return None


def _fixture_files() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*") if p.is_file() and _kind_of(p) is not None) \
        if FIXTURES.is_dir() else []


def test_crafted_fixtures_exist() -> None:
    kinds = {_kind_of(p) for p in _fixture_files()}
    assert kinds >= set(READERS), f"regression fixtures missing for {set(READERS) - kinds}"


@pytest.mark.parametrize("path", _fixture_files(), ids=lambda p: p.name)
def test_crafted_fixture(worker: Worker, tmp_path: Path, path: Path) -> None:
    """Every crafted reproducer is refused cleanly, within the bounds (run from an empty directory
    holding a ``secret.bin``, which an ONNX file must not be able to read)."""
    kind = _kind_of(path)
    assert kind is not None
    target = tmp_path / path.name
    target.write_bytes(path.read_bytes())
    if kind == "card":
        target.with_suffix("").write_bytes(b"")  # the model beside its card
    out = check(worker, kind, target)
    assert out["outcome"] == "error", f"{path.name} was accepted"


@pytest.mark.parametrize("kind", READERS)
def test_fuzz_reader(worker: Worker, tmp_path_factory: pytest.TempPathFactory, kind: str) -> None:
    d = tmp_path_factory.mktemp(kind)

    @_settings(EXAMPLES)
    @given(data=GENERATORS[kind])
    def run(data: bytes) -> None:
        path = d / f"f{SUFFIX[kind]}"
        path.write_bytes(data)
        check(worker, kind, path)

    run()


def test_worker_catches_what_it_should(worker: Worker, tmp_path: Path) -> None:
    """The harness itself: valid files read as "ok", so the properties above are not vacuous."""
    good = tmp_path / "good.onnx"
    good.write_bytes(FIXTURE_SCRIPT.tiny_onnx())
    assert worker.read("onnx", good)["outcome"] == "ok"
    card = tmp_path / "m.onnx.json"
    card.write_text(json.dumps(FIXTURE_SCRIPT.valid_card()))
    assert worker.read("card", card)["outcome"] == "ok"
    assert worker.read("card", tmp_path / "missing.onnx.json")["outcome"] == "ok"  # no card: None
