"""Weight files from strangers: the legacy ``.pth`` reader and the ``.safetensors`` reader must answer
a crafted file with one clear error naming it (the CLI's exit 1), never a crash by signal, a read
outside the file's bytes, memory out of proportion to what the file holds, or a change in how the
next file is read. Valid files, including views, shared tensors and every dtype, read back exactly.

The crafted reproducers live in ``tests/fixtures/untrusted`` (written by ``make_fixtures.py`` there).
Those that once crashed, hung or ate memory are read in a child process, with its address space
capped, so a regression fails one test instead of taking pytest (or the machine) down.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from mnasdsl.diagnostics import MnasError
from mnasdsl.interop import torch_legacy
from mnasdsl.interop.statedict import read_safetensors, read_state_dict
from mnasdsl.interop.torch_legacy import read_legacy

from .conftest import ROOT, run_cli
from .test_lite import _Storage as WStorage
from .test_lite import _Tensor as WTensor
from .test_lite import _write_legacy

FIXTURES = ROOT / "tests" / "fixtures" / "untrusted"
_spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
assert _spec and _spec.loader
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)

BUILD_REFUSED = r"refused: the pickle sets the state of {} \(BUILD\)"


def _message(e: pytest.ExceptionInfo[MnasError]) -> str:
    return e.value.diagnostics[0].message


def test_fixtures_are_what_the_script_writes() -> None:
    """The kept binaries are reproducible from their opcodes (and all of them are present)."""
    for name, data in {**mk.pth_files(), **mk.st_files()}.items():
        assert (FIXTURES / name).read_bytes() == data, f"{name}: run tests/fixtures/untrusted/make_fixtures.py"


# -- reading in a child process, address space capped ---------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a memory bomb fails here, not the host
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from mnasdsl.diagnostics import MnasError
    from mnasdsl.interop.statedict import read_state_dict
    t0 = time.perf_counter()
    try:
        sd = read_state_dict(sys.argv[1])
        out = {"outcome": "ok", "message": repr({k: (str(v.dtype), v.shape) for k, v in sd.items()})}
    except MnasError as e:
        out = {"outcome": "error", "message": e.diagnostics[0].message}
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out))
""")


def _read_isolated(path: Path) -> dict[str, Any]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=30,
                           env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{path.name}: still reading after 30 s")
    assert r.returncode == 0, f"{path.name}: the reader died (exit {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout.splitlines()[-1])


_IN_A_CHILD = {
    "pth_negative_stride.pth": BUILD_REFUSED.format("a tensor"),  # was SIGSEGV
    "pth_build_stride.pth": BUILD_REFUSED.format("a tensor"),  # was 64 floats from before the storage
    "pth_build_offset.pth": BUILD_REFUSED.format("a tensor"),
    "pth_zero_stride_huge.pth": r"the object\['w'\]: a tensor of size \(134217728,\) \(stride \(0,\)\) would bring "
                                r"the arrays read past 4 x the 4 bytes of storage",  # was 512 MiB
    "pth_shared_list_bomb.pth": r"entry 'w' is a list, not a tensor",  # was 2**40 copies
}


@pytest.mark.parametrize("name", _IN_A_CHILD)
def test_crafted_pth_is_refused_in_a_capped_child(name: str) -> None:
    match = _IN_A_CHILD[name]
    got = _read_isolated(FIXTURES / name)
    assert got["outcome"] == "error", f"{name} was accepted: {got['message']}"
    assert name in got["message"] and re.search(match, got["message"]), got["message"]
    assert got["seconds"] < 5


_IN_PROCESS = {
    "pth_build_storage.pth": BUILD_REFUSED.format("a storage"),
    "pth_build_storage_type.pth": BUILD_REFUSED.format("`torch.FloatStorage`"),
    "pth_negative_offset.pth": "bad tensor storage offset -64",
}


@pytest.mark.parametrize("name", _IN_PROCESS)
def test_crafted_pth_is_refused(name: str) -> None:
    match = _IN_PROCESS[name]
    with pytest.raises(MnasError, match=match) as e:
        read_state_dict(FIXTURES / name)
    assert str(FIXTURES / name) in _message(e)


def _no_core_dump() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def test_the_cli_exits_1_on_the_file_that_crashed_it(tmp_path: Path) -> None:
    """The 347-byte reproducer made ``mnasdsl import`` die with SIGSEGV (exit 139)."""
    for name in ("pth_negative_stride.pth", "pth_zero_stride_huge.pth", "st_deep_json.safetensors"):
        out = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "mnasdsl.cli.main", "import", "efficientnet-pytorch",
                            "efficientnet-lite0", "--weights", str(FIXTURES / name), "-o", str(out)],
                           capture_output=True, text=True, timeout=60, preexec_fn=_no_core_dump)
        assert r.returncode == 1, f"{name}: exit {r.returncode}: {r.stderr[-2000:]}"
        assert str(FIXTURES / name) in r.stderr and "Traceback" not in r.stderr and "internal error" not in r.stderr
        assert not out.exists()


# -- BUILD is refused on everything but an OrderedDict instance ------------------------------------------------

_KINDS = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
          "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
          "ByteStorage": "u1", "BoolStorage": "?"}
_FUNCTIONS = ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter", "_rebuild_parameter_with_state")
_ST4 = mk.storage("FloatStorage", "0", 4)
_BUILD_TARGETS = {
    **{f"torch.{kind}": (mk.glob("torch", kind), f"`torch.{kind}`") for kind in _KINDS},
    **{f"torch._utils.{fn}": (mk.glob("torch._utils", fn), f"`torch._utils.{fn}`") for fn in _FUNCTIONS},
    "collections.OrderedDict": (mk.glob("collections", "OrderedDict"), "`collections.OrderedDict`"),
    "a tensor": (mk.tensor(_ST4, 0, (4,), (1,)), "a tensor"),
    "a storage": (_ST4, "a storage"),
    "a parameter": (mk.glob("torch._utils", "_rebuild_parameter") + mk.tup(mk.tensor(_ST4, 0, (4,), (1,))) + b"R",
                    "a tensor"),
    "a list": (b"]", "a list"),
}
_STATES = {"dict": b"}" + mk.text("name") + mk.text("HalfStorage") + b"s",
           "slots": mk.tup(b"N", b"}" + mk.text("_fn") + mk.text("x") + b"s"),
           "fields": mk.tup(_ST4, mk.num(0), mk.tup(mk.num(4)), mk.tup(mk.num(-1)))}


@pytest.mark.parametrize("state", _STATES)
@pytest.mark.parametrize("target", _BUILD_TARGETS)
def test_build_is_refused_on_every_allowed_object(tmp_path: Path, target: str, state: str) -> None:
    opcodes, described = _BUILD_TARGETS[target]
    p = tmp_path / "build.pth"
    p.write_bytes(mk.legacy(mk.one("w", mk.tensor(_ST4, 0, (4,), (1,))) + b"0" + opcodes + _STATES[state] + b"b",
                            {"0": ("FloatStorage", mk.floats(4))}))
    with pytest.raises(MnasError, match=BUILD_REFUSED.format(re.escape(described))):
        read_legacy(p)
    _assert_a_legit_file_reads(tmp_path)


def _assert_a_legit_file_reads(tmp_path: Path) -> None:
    values = np.array([1.5, -2.25, 3e-5, 65504.5], "<f4")  # 65504.5 and 3e-5 are not float16 values
    s = WStorage("0", "FloatStorage", values)
    d = WStorage("1", "DoubleStorage", values.astype("<f8") / 3)
    p = tmp_path / "legit.pth"
    _write_legacy(p, collections.OrderedDict([("w", WTensor(s, 0, (2, 2), (2, 1))), ("d", WTensor(d, 1, (3,), (1,)))]),
                  [s, d])
    got = read_state_dict(p)
    assert got["w"].dtype == np.float32 and got["w"].tobytes() == values.reshape(2, 2).tobytes()
    assert got["d"].dtype == np.float64 and got["d"].tobytes() == (values.astype("<f8") / 3)[1:].tobytes()


def test_one_file_cannot_change_how_the_next_is_read(tmp_path: Path) -> None:
    """BUILD on torch.FloatStorage renamed the shared allow-list entry: the next file's floats came
    back as float16 garbage, with no error."""
    with pytest.raises(MnasError, match=BUILD_REFUSED.format("`torch.FloatStorage`")):
        read_state_dict(FIXTURES / "pth_build_storage_type.pth")
    _assert_a_legit_file_reads(tmp_path)
    # Refused through every entry point, the Python API's included: the next read is still right.
    # (pth_negative_stride.pth, which crashed the process, is read only in a child: see above)
    for name in ("pth_build_storage.pth", "pth_build_stride.pth", "pth_build_offset.pth"):
        with pytest.raises(MnasError):
            read_legacy(FIXTURES / name)
        _assert_a_legit_file_reads(tmp_path)


def test_state_dict_metadata_is_the_build_that_is_allowed(tmp_path: Path) -> None:
    """``Module.state_dict()`` sets ``_metadata`` on its OrderedDict, which pickles as BUILD: read,
    and the attribute dropped. Any other state on it (slots) is refused."""
    s = WStorage("0", "FloatStorage", np.arange(4, dtype="<f4"))
    sd = collections.OrderedDict([("w", WTensor(s, 0, (4,), (1,)))])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])  # type: ignore[attr-defined]
    p = tmp_path / "meta.pth"
    _write_legacy(p, sd, [s])
    assert b"b" in p.read_bytes() and b"_metadata" in p.read_bytes()
    got = read_legacy(p)
    assert type(got) is collections.OrderedDict and not hasattr(got, "_metadata")
    assert np.array_equal(got["w"], np.arange(4, dtype=np.float32))
    p.write_bytes(mk.legacy(mk.glob("collections", "OrderedDict") + b")R"
                            + mk.tup(b"N", b"}" + mk.text("x") + b"K\x01s") + b"b", {}))
    with pytest.raises(MnasError, match=BUILD_REFUSED.format("an OrderedDict")):
        read_legacy(p)


# -- bounds, checked on the final values ---------------------------------------------------------------------

def _ref(numel: int, offset: Any, size: Any, stride: Any) -> Any:
    """A tensor reference whose fields are set after construction, as a BUILD could once do."""
    storage = torch_legacy._Storage("0", "FloatStorage", numel)
    ref = torch_legacy._rebuild_tensor_v2(storage, 0, (1,), (1,))
    for k, v in {"offset": offset, "size": size, "stride": stride}.items():
        object.__setattr__(ref, k, v)
    return ref


@pytest.mark.parametrize(("offset", "size", "stride", "match"), [
    (0, (4,), (-(2**40),), "stride"),
    (0, (64,), (-1,), "stride"),
    (-64, (4,), (1,), "offset -64"),
    (5, (4,), (1,), "reads past its storage of 8 elements"),
    (0, (3, 3), (3, 1), "reads past its storage of 8 elements"),
    (0, (2, 2), (1, 7), "reads past its storage of 8 elements"),
    (0, (4,), (1.0,), "stride"),
    (0, (4, 1), (1,), "size"),
    (0, (2**63,), (0,), "size"),
])
def test_materialize_checks_the_final_values(offset: Any, size: Any, stride: Any, match: str) -> None:
    data = {"0": np.arange(8, dtype="<f4")}
    with pytest.raises(ValueError, match=match):
        torch_legacy._Materializer(data)(_ref(8, offset, size, stride))


def test_materialize_reads_the_last_element_and_ignores_the_stride_of_size_1() -> None:
    data = {"0": np.arange(8, dtype="<f4")}
    got = torch_legacy._Materializer(data)(_ref(8, 5, (3,), (1,)))
    assert np.array_equal(got, [5, 6, 7])
    got = torch_legacy._Materializer(data)(_ref(8, 1, (1, 2, 3), (2**62, 1, 2)))  # no stride overflows numpy
    assert np.array_equal(got, [[[1, 3, 5], [2, 4, 6]]])


# -- the memory budget, and shared objects ---------------------------------------------------------------------

def test_expanded_tensors_within_the_budget_read(tmp_path: Path) -> None:
    """A stride-0 (expanded) tensor is legitimate: up to 4 x the storage bytes + 16 MiB in all."""
    s = WStorage("0", "FloatStorage", np.array([2.5], "<f4"))
    p = tmp_path / "expanded.pth"
    _write_legacy(p, {"a": WTensor(s, 0, (1000, 1000), (0, 0))}, [s])  # 4 MB from 4 bytes
    got = read_state_dict(p)
    assert got["a"].shape == (1000, 1000) and (got["a"] == 2.5).all()


def test_the_budget_counts_all_tensors_and_shared_ones_once(tmp_path: Path) -> None:
    s = WStorage("0", "FloatStorage", np.array([1.0], "<f4"))
    t = WTensor(s, 0, (3_000_000,), (0,))  # 12 MB each
    p = tmp_path / "two.pth"
    _write_legacy(p, {"a": t, "b": WTensor(s, 0, (3_000_000,), (0,))}, [s])
    with pytest.raises(MnasError, match=r"\['b'\]: a tensor of size \(3000000,\) .* past 4 x the 4 bytes"):
        read_state_dict(p)
    _write_legacy(p, {"a": t, "b": t}, [s])  # one tensor object, pickled once, referenced twice
    got = read_legacy(p)
    assert got["a"] is got["b"] and got["a"].shape == (3_000_000,)
    big = WStorage("0", "FloatStorage", np.ones(2_000_000, "<f4"))  # 8 MB stored: 32 MB + 16 MiB allowed
    _write_legacy(p, {"a": WTensor(big, 0, (2_000_000,), (1,)), "t": WTensor(big, 0, (1000, 2000), (1, 1000)),
                      "e": WTensor(big, 0, (3, 2_000_000), (0, 1))}, [big])  # 40 MB in all
    got = read_legacy(p)
    assert got["e"].shape == (3, 2_000_000) and got["t"].shape == (1000, 2000)
    _write_legacy(p, {"a": WTensor(big, 0, (13, 2_000_000), (0, 1))}, [big])  # 104 MB > 32 MB + 16 MiB
    with pytest.raises(MnasError, match="past 4 x the 8000000 bytes of storage"):
        read_legacy(p)


def test_shared_lists_are_materialized_once(tmp_path: Path) -> None:
    """Lists that hold one list twice, 20 levels deep: 2**20 paths, 21 objects (and the identities kept)."""
    s = WStorage("0", "FloatStorage", np.array([1.0], "<f4"))
    x: Any = WTensor(s, 0, (1,), (1,))
    for _ in range(20):
        x = [x, x]
    p = tmp_path / "dag.pth"
    _write_legacy(p, {"w": x}, [s])
    t0 = time.perf_counter()
    got = read_legacy(p)["w"]
    assert time.perf_counter() - t0 < 2
    for _ in range(20):
        assert type(got) is list and got[0] is got[1]
        got = got[0]
    assert isinstance(got, np.ndarray) and got.tolist() == [1.0]


def test_object_count_cycles_and_keys_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "many.pth"
    _write_legacy(p, {"w": list(range(2000))}, [])
    assert read_legacy(p)["w"] == list(range(2000))
    monkeypatch.setattr(torch_legacy, "_MAX_NODES", 1000)
    with pytest.raises(MnasError, match="holds more than 1,000 values"):
        read_legacy(p)
    loop: list[Any] = []
    loop.append(loop)
    _write_legacy(p, {"w": loop}, [])
    with pytest.raises(MnasError, match=r"the object\['w'\]\[0\] contains itself"):
        read_legacy(p)
    s = WStorage("0", "FloatStorage", np.zeros(4, "<f4"))
    _write_legacy(p, {WTensor(s, 0, (4,), (1,)): 1}, [s])
    with pytest.raises(MnasError, match="a tensor as a dict key"):
        read_legacy(p)


# -- property: any valid legacy file round-trips --------------------------------------------------------------

@st.composite
def _legacy_state_dicts(draw: st.DrawFn) -> tuple[collections.OrderedDict[str, Any], list[WStorage],
                                                  dict[str, np.ndarray]]:
    """Views into random storages, as numpy slices and transposes make them; the expected arrays are
    those numpy views (offset and strides read back from numpy, not computed here)."""
    storages: list[WStorage] = []
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(sorted(_KINDS)))
        dt = np.dtype(_KINDS[kind])
        n = draw(st.integers(1, 60))
        raw = draw(st.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize))
        a = np.frombuffer(raw, np.uint8).copy() % 2 if kind == "BoolStorage" else np.frombuffer(raw, dt).copy()
        storages.append(WStorage(str(i), kind, a.view(dt)))
    sd: collections.OrderedDict[str, Any] = collections.OrderedDict()
    expected: dict[str, np.ndarray] = {}
    for j in range(draw(st.integers(1, 4))):
        s = draw(st.sampled_from(storages))
        flat = s.data
        start = draw(st.integers(0, flat.size - 1))
        dims = draw(st.lists(st.integers(1, 4), max_size=3))
        while int(np.prod(dims)) > flat.size - start:
            dims.pop()
        base = flat[start:start + int(np.prod(dims))].reshape(dims)
        if dims:  # (indexing a 0-d array with () would give a numpy scalar, not a view)
            base = base[tuple(slice(draw(st.integers(0, d)), None, draw(st.integers(1, 2))) for d in dims)]
        view = base.transpose(draw(st.permutations(range(base.ndim))))
        item = flat.itemsize
        offset = (view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // item
        sd[f"t{j}"] = WTensor(s, offset, view.shape, tuple(x // item for x in view.strides))
        want = view.copy()
        expected[f"t{j}"] = (want.astype(np.uint32) << 16).view(np.float32) if s.kind == "BFloat16Storage" else want
    if draw(st.booleans()):
        sd._metadata = collections.OrderedDict([("", {"version": 1})])  # type: ignore[attr-defined]
    return sd, storages, expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_legacy_state_dicts())
def test_valid_legacy_files_round_trip(tmp_path: Path, case: Any) -> None:
    sd, storages, expected = case
    used = {t.args[0].key for t in sd.values()}
    p = tmp_path / "rt.pth"
    _write_legacy(p, sd, [s for s in storages if s.key in used])
    got = read_legacy(p)
    assert list(got) == list(expected)
    for k, want in expected.items():
        assert got[k].dtype == want.dtype and got[k].shape == want.shape and got[k].tobytes() == want.tobytes(), k


# -- .safetensors ---------------------------------------------------------------------------------------------

_SAFETENSORS = {
    "st_offsets_int.safetensors": r"tensor 'w': data_offsets 5 is not \[begin, end\]",
    "st_offsets_strings.safetensors": r"tensor 'w': data_offsets \['x', 'y'\] is not \[begin, end\]",
    "st_offsets_short.safetensors": r"tensor 'w': data_offsets \[0\] is not \[begin, end\]",
    "st_offsets_inf.safetensors": r"tensor 'w': data_offsets \[0, inf\] is not \[begin, end\]",
    "st_offsets_negative.safetensors": r"tensor 'w': data_offsets \[-16, 0\] is not",
    "st_offsets_reversed.safetensors": r"tensor 'w': data_offsets \[16, 0\] is not .* 0 <= begin <= end",
    "st_offsets_bool.safetensors": r"tensor 'w': data_offsets \[False, True\] is not",
    "st_offsets_past_end.safetensors": r"truncated: tensor 'w' ends at byte 1099511627776 of the data, the file "
                                       "holds 16",
    "st_offsets_overlap.safetensors": r"tensor 'v': its data_offsets \[8, 16\] overlap tensor 'w'",
    "st_deep_json.safetensors": r"tensor 'w': its header entry nests too deep",
    "st_deep_json_top.safetensors": r"not a safetensors file \(its header is not a JSON object\)",
    "st_dtype_unknown.safetensors": r"tensor 'w': dtype 'F8_E4M3' is not one of F64, F32",
    "st_shape_negative.safetensors": r"tensor 'w': shape \[-4, -1\] is not a list of at most 32 non-negative",
    "st_shape_float.safetensors": r"tensor 'w': shape \[4.0\] is not a list",
    "st_shape_mismatch.safetensors": r"tensor 'w': shape \[4611686018427387904, 4\] of F32 takes "
                                     r"73786976294838206464 bytes, its data_offsets span 16",
    "st_header_array.safetensors": r"its header is not a JSON object",
    "st_header_too_long.safetensors": r"a header of 1099511627776 bytes in a file of 86",
    "st_header_huge.safetensors": r"a header of 18446744073709551615 bytes in a file of 86",
}


@pytest.mark.parametrize("name", _SAFETENSORS)
def test_crafted_safetensors_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    match, path = _SAFETENSORS[name], FIXTURES / name
    with pytest.raises(MnasError, match=match) as e:
        read_state_dict(path)
    assert _message(e).startswith(f"{path}: ")
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "import", "efficientnet-pytorch", "efficientnet-lite0", "--weights", str(path),
                         "-o", str(out))
    assert rc == 1 and str(path) in err and "internal error" not in err and "Traceback" not in err
    assert not out.exists()


def _st(header: bytes | dict[str, Any], data: bytes = b"\x00" * 16) -> bytes:
    return mk.safetensors(header, data)


_F32 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}


_F32_ENTRY = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}'


def _w(**kw: Any) -> dict[str, Any]:
    return {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], **kw}}


_MALFORMED: dict[str, tuple[bytes, str]] = {
    "gap": (_st(_w(shape=[2], data_offsets=[8, 16])), r"tensor 'w': 8 bytes before it belong to no tensor"),
    "trailing_bytes": (_st(_w(), b"\x00" * 20), r"4 bytes after the last tensor belong to no tensor"),
    "duplicate_name": (_st(_F32_ENTRY + b', "w": ' + json.dumps(_F32).encode() + b"}"),
                       r"tensor 'w' appears twice in the header"),
    "metadata_not_strings": (_st({**_w(), "__metadata__": {"format": 1}}), r"__metadata__ is not an object of strings"),
    "entry_a_list": (_st({"w": [0, 16]}), r"tensor 'w': its header entry is a list, not an object with dtype"),
    "entry_incomplete": (_st({"w": {"dtype": "F32", "shape": [4]}}), r"tensor 'w': its header entry has no "
                                                                     "data_offsets"),
    "dtype_not_a_string": (_st(_w(dtype=7)), r"tensor 'w': dtype 7 is not one of"),
    "shape_bool": (_st(_w(shape=[True, 4])), r"tensor 'w': shape \[True, 4\] is not a list"),
    "shape_not_a_list": (_st(_w(shape=4)), r"tensor 'w': shape 4 is not a list"),
    "shape_33_dims": (_st(_w(shape=[1] * 33, data_offsets=[0, 4]), b"\x00" * 4), r"tensor 'w': shape \[1, 1, 1"),
    "shape_size_mismatch": (_st(_w(shape=[3])), r"tensor 'w': shape \[3\] of F32 takes 12 bytes, its data_offsets "
                                                "span 16"),
    "shape_empty_but_huge": (_st(_w(shape=[0, 2**62], data_offsets=[0, 0]), b""),
                             r"tensor 'w': shape \[0, 4611686018427387904\] is too large"),
    "offsets_nan": (_st(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, NaN]}}'),
                    r"tensor 'w': data_offsets \[0, nan\] is not"),
    "offsets_5001_digits": (_st(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1' + b"0" * 5000 + b"]}}"),
                            r"tensor 'w': its header entry is not JSON"),
    "text_after_header": (_st(_F32_ENTRY + b"} {}"), r"text follows its header's JSON"),
    "no_comma": (_st(_F32_ENTRY + b' "v"'), r"tensor 'w': its header entry is not followed by"),
    "unterminated": (_st(_F32_ENTRY[:-1]), r"tensor 'w': its header entry is not JSON"),
    "bad_escape": (_st(b'{"w\\ud8": 1}'), r"its header is not JSON"),
    "not_utf8": (_st(b'{"\xff": 1}'), r"its header is not UTF-8"),
    "no_colon": (_st(b'{"w" 1}'), r"tensor 'w': its header entry is not JSON \(no ':'"),
    "name_not_a_string": (_st(b"{7: 1}"), r"its header is not JSON \(a name expected"),
    "empty_header": (_st(b""), r"its header is not JSON"),
    "header_past_the_end": (_st(_w())[:30], r"a header of \d+ bytes in a file of 30"),
}


@pytest.mark.parametrize("case", _MALFORMED)
def test_malformed_safetensors_headers(tmp_path: Path, case: str) -> None:
    blob, match = _MALFORMED[case]
    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(MnasError, match=match) as e:
        read_safetensors(p)
    assert _message(e).startswith(f"{p}: ")


_NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "U64": "<u8", "I32": "<i4", "U32": "<u4",
       "I16": "<i2", "U16": "<u2", "I8": "i1", "U8": "u1", "BOOL": "?"}


@st.composite
def _arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    out = {}
    for i in range(draw(st.integers(1, 4))):
        dt = np.dtype(_NP[draw(st.sampled_from(sorted(_NP)))])
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        n = int(np.prod(shape)) * dt.itemsize
        raw = np.frombuffer(draw(st.binary(min_size=n, max_size=n)), np.uint8)
        out[f"t{i}"] = (raw % 2 if dt.kind == "b" else raw).view(dt).reshape(shape)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=_arrays(), metadata=st.booleans())
def test_valid_safetensors_round_trip(tmp_path: Path, arrays: dict[str, np.ndarray], metadata: bool) -> None:
    """The reader against the format's own library: same names, order, dtypes, shapes and bytes."""
    p = tmp_path / "rt.safetensors"
    save_file(arrays, str(p), metadata={"format": "np"} if metadata else None)
    got, ref = read_safetensors(p), load_file(str(p))
    assert sorted(got) == sorted(ref) == sorted(arrays)
    for k, want in arrays.items():
        assert got[k].dtype == want.dtype and got[k].shape == want.shape and got[k].tobytes() == want.tobytes(), k


def test_bfloat16_safetensors_widen_to_float32(tmp_path: Path) -> None:
    values = np.array([1.5, -2.0, 3.25, 1e30], np.float32)
    p = tmp_path / "bf16.safetensors"
    p.write_bytes(mk.safetensors({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}},
                                 (values.view(np.uint32) >> 16).astype("<u2").tobytes()))
    got = read_state_dict(p)["w"]
    assert got.dtype == np.float32 and got.shape == (2, 2)
    assert np.array_equal(got.ravel(), (values.view(np.uint32) & 0xFFFF0000).view(np.float32))
