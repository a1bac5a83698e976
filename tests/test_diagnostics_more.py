"""Diagnostics for common slips: a misspelled setting, a header without its colon, and rules that only
command-line overrides break (reported in the file, with the source line and caret)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnasdsl.diagnostics import MnasError
from mnasdsl.parser import parse

from .conftest import run_cli as run

BASE = """\
network tiny:
  input 32x32x3
  width 0.5
  stem cv_k3_s22_o32
  blocks
    r1_k3_s11_e6_o16
    r1_k3_s22_e6_o24
  head cv_k1_o1280
"""
# Valid at width 0.5 (both sides round to 16), not at 1.0: o48x0.75 is 40 channels there, i36 stays 36.
OVERRIDDEN = BASE.replace("r1_k3_s11_e6_o16", "r1_k3_s11_e6_o48x0.75").replace("r1_k3_s22_e6_o24",
                                                                                 "r1_k3_s11_e6_i36_o16")


def errors(text: str) -> list[str]:
    with pytest.raises(MnasError) as ei:
        parse(text, "f.mnas")
    return [d.render(text) for d in ei.value.diagnostics]




def test_bases_are_valid() -> None:
    assert parse(BASE)[0].name == parse(OVERRIDDEN)[0].name == "tiny"


def test_misspelled_setting_suggests_the_setting() -> None:
    errs = errors(BASE.replace("width 0.5", "widht 0.5"))
    assert errs == ["f.mnas:3:3: error: unknown setting `widht` (did you mean `width`?)\n"
                    "   3 |   widht 0.5\n"
                    "     |   ^^^^^"]


@pytest.mark.parametrize("line,word,guess", [
    ("  clases 10\n", "clases", "classes"),
    ("  min-depth 8\n", "min-depth", "min_depth"),
    ("  Dropout 0.1\n", "Dropout", "dropout"),
])
def test_misspelled_settings_before_blocks(line: str, word: str, guess: str) -> None:
    errs = errors(BASE.replace("  width 0.5\n", line))
    assert len(errs) == 1 and f"unknown setting `{word}` (did you mean `{guess}`?)" in errs[0]


def test_misspelled_setting_after_blocks_is_not_a_block_string() -> None:
    """Inside `blocks`, a word close to a setting is the setting misspelled, and the setting it probably
    meant is not also reported missing."""
    errs = errors(BASE.replace("  head cv_k1_o1280", "  haed cv_k1_o1280"))
    assert len(errs) == 1 and "8:3: error: unknown setting `haed` (did you mean `head`?)" in errs[0]


def test_unknown_word_outside_blocks_lists_the_settings() -> None:
    errs = errors(BASE.replace("  width 0.5\n", "  frobnicate 3\n"))
    assert len(errs) == 1 and "unknown setting `frobnicate`" in errs[0] and "note: settings are" in errs[0]


def test_misspelled_blocks_keyword_does_not_cascade() -> None:
    errs = errors(BASE.replace("  blocks\n", "  blcoks\n"))
    assert len(errs) == 1 and "unknown setting `blcoks` (did you mean `blocks`?)" in errs[0]


def test_block_string_outside_blocks_still_reported() -> None:
    errs = errors(BASE.replace("  stem cv_k3_s22_o32\n", "  stem cv_k3_s22_o32\n  r1_k3_o8\n"))
    assert any("block string outside a `blocks` section" in e for e in errs)


@pytest.mark.parametrize("kind", ["network", "space"])
def test_header_without_colon_is_one_error(kind: str) -> None:
    text = BASE.replace("network tiny:", f"{kind} tiny  # the colon is missing")
    errs = errors(text)
    assert errs == [f"f.mnas:1:{len(kind) + 6}: error: expected `:` after `{kind} tiny`\n"
                    f"   1 | {kind} tiny  # the colon is missing\n"
                    f"     | {' ' * (len(kind) + 5)}^"]


def test_header_without_colon_keeps_other_errors() -> None:
    errs = errors(BASE.replace("network tiny:", "network tiny").replace("r1_k3_s22", "r1_k4_s22"))
    assert len(errs) == 2 and "expected `:`" in errs[0] and "kernel must be odd" in errs[1]


def test_override_lowering_error_points_into_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "n.mnas"
    p.write_text(OVERRIDDEN)
    assert run(capsys, "show", str(p))[0] == 0
    rc, _, err = run(capsys, "show", str(p), "--width", "1")
    assert rc == 1
    assert err.startswith(f"{p}:7:19: error: block 1 declares 36 input channels (i36) but receives 40\n"
                          "   7 |     r1_k3_s11_e6_i36_o16\n"
                          "     |                   ^^\n")
    assert "--width 1 breaks it" in err and "<input>" not in err
    rc, _, err = run(capsys, "cost", str(p), "--width", "1", "--json")
    diag = json.loads(err.strip().splitlines()[-1])[0]
    assert rc == 1 and diag["path"] == str(p) and (diag["line"], diag["col"]) == (7, 19)
