"""The one-shot supernet: a subnet computes what its standalone network computes, sampling never
recompiles, an interrupted run resumes bit for bit, and the CLI trains, scores and extracts.

Kept cheap: the shipped spaces only run the eval forward (at 32 px, compiled for compile speed), and
everything that trains uses small spaces at 16 px whose every decision kind still occurs (op families
with separate weights, kernels, widths, SE variants, every skip, vanishing and added layers). Runs with
the same plan and settings share their executables within the process, as the CLI test relies on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnasdsl.backends import flax as fb
from mnasdsl.diagnostics import MnasError
from mnasdsl.formatter import format as format_ir
from mnasdsl.oneshot import model as M
from mnasdsl.oneshot.plan import SharedSpace
from mnasdsl.oneshot.train import train_supernet
from mnasdsl.parser import parse
from mnasdsl.space import load_space, space_from_text
from mnasdsl.train import checkpoint as ck

from .conftest import SPECS, run_cli

pytestmark = pytest.mark.usefixtures("no_user_compile_cache")

SHIPPED = ("mnasnet.mnas", "mnasnet-descendants.mnas")
MICRO = """\
space micro:
  input 16x16x3
  classes 10
  stem cv_k3_s22_o8
  blocks
    {ds,mb_e3}_r1{-1,+0,+1}_k{3,5}_s11_o8x{0.75,1}_se{0,0.25}_{pool,id,noskip}
    {mb_e3,er_e4,cv}_r1_k3_s22_o16_{se0,se0.25_hsig,se0.25_seact}_{pool,noskip}
  head cv_k1_o32 fixed
"""
NANO = """\
space nano:
  input 16x16x3
  classes 10
  stem cv_k3_s22_o8
  blocks
    {ds,mb_e3}_r1{+0,+1}_k{3,5}_s22_o8x{0.75,1}
  head cv_k1_o16 fixed
"""
RUN = {"epochs": 2, "batch": 16, "seed": 0, "rule": "spos", "steps_per_epoch": 3}
RUN_ARGS = ("--epochs", "2", "--batch", "16", "--seed", "0", "--rule", "spos", "--steps-per-epoch", "3")
QUICK = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# -- the plan ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
def test_every_decision_of_the_shipped_spaces_is_shared(name: str) -> None:
    """Every alternative of every decision gives a subnet the supernet runs, and a network's decision
    vector is recovered from the network alone."""
    space = load_space(SPECS / "spaces" / name)
    shared = SharedSpace(space, 32, 10)
    rng = np.random.default_rng(0)
    for d in space.decisions():
        for option in range(len(d.choices)):
            idx = shared.sample(rng)
            idx[d.index] = option
            if not space._nonempty(idx):
                continue
            shared.config(idx)
    for k in range(5):
        idx = shared.sample(rng)
        net = shared.network(idx, name=f"n{k}")
        assert shared.space.decode(shared.indices_of(net)) == shared.space.decode(idx)
    assert shared.plan.slots and all(s.families for s in shared.plan.slots)


def test_network_outside_the_space_names_the_decision() -> None:
    shared = SharedSpace(space_from_text(MICRO), 16, 10)
    net = shared.network(shared.largest())

    def without(**upd: Any) -> str:
        blocks = list(net.blocks)
        blocks[0] = blocks[0].model_copy(update=upd)
        with pytest.raises(MnasError) as e:
            shared.indices_of(net.model_copy(update={"blocks": tuple(blocks)}))
        return str(e.value)

    assert "blocks[0].kernel" in without(kernel=7) and "k3, k5" in without(kernel=7)
    assert "stride" in without(stride=(2, 2))
    assert "blocks[0].repeats_delta" in without(repeats=4)
    with pytest.raises(MnasError, match="width"):
        shared.indices_of(net.model_copy(update={"width": 0.5}))
    with pytest.raises(MnasError, match="cannot be left out"):
        shared.indices_of(net.model_copy(update={"blocks": net.blocks[:1]}))


@pytest.mark.parametrize("text,decision", [
    ("{ds_s11,ds_s22}_r1_k3_o16", "blocks[0].op+stride"),
    ("ds_r1{-1,+0}_k3_s22_o16", "blocks[0].repeats_delta"),
])
def test_decisions_a_supernet_cannot_share_are_errors(text: str, decision: str) -> None:
    space = space_from_text(MICRO.replace(MICRO.splitlines()[5].strip(), text))
    with pytest.raises(MnasError, match=decision.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        SharedSpace(space, 16, 10)


# -- exactness: a subnet inside the supernet is its standalone network -------------------------------------

_SUPER: dict[str, Any] = {}


def _supernet(name: str) -> Any:
    """A supernet of a shipped space at 32 px with random weights and non-trivial BN, its eval forward
    compiled once, for compile speed (XLA's convolutions and no optimization passes: what is under test is
    the selection of a subnet by masks, which is the same whichever kernels run the convolutions)."""
    if name not in _SUPER:
        shared = SharedSpace(load_space(SPECS / "spaces" / name), 32, 10)
        params, stats = M.init(shared.plan, 0)
        rng = np.random.default_rng(1)
        params = jax.tree_util.tree_map_with_path(
            lambda p, a: a + rng.uniform(-0.3, 0.3, a.shape).astype(np.float32) if "bn" in jax.tree_util.keystr(p)
            else a, params)
        stats = jax.tree_util.tree_map_with_path(
            lambda p, a: (rng.uniform(0.5, 1.5, a.shape) if "var" in jax.tree_util.keystr(p)
                          else rng.uniform(-0.2, 0.2, a.shape)).astype(np.float32), stats)
        x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
        traces = [0]

        def fwd(p: Any, s: Any, c: Any) -> Any:
            traces[0] += 1
            return M.forward(shared.plan, p, s, x, c, train=False, impl="grouped")[0]

        run = jax.jit(fwd).lower(params, stats, shared.config(shared.largest())).compile(compiler_options=QUICK)
        _SUPER[name] = (shared, params, stats, x, run, traces)
    return _SUPER[name]


def _check_subnet(name: str, idx: list[int]) -> None:
    from flax import nnx

    shared, params, stats, x, run, traces = _supernet(name)
    inside = np.asarray(run(params, stats, shared.config(idx)))
    low, slot_of = shared.layout(idx)
    model = fb.build(low, rngs=nnx.Rngs(0))
    v = M.subnet_variables(low, slot_of, params, stats, fb.variables(model))
    for key, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, kind)
        nnx.replace_by_pure_dict(state, v[key])
        nnx.update(model, state)
    alone = np.asarray(fb.quick_compile_fn(model)(x))
    np.testing.assert_allclose(inside, alone, rtol=1e-5, atol=1e-5)
    assert traces[0] == 1


@pytest.mark.parametrize("name", SHIPPED)
def test_largest_and_smallest_equal_their_standalone_networks(name: str) -> None:
    shared = _supernet(name)[0]
    _check_subnet(name, shared.largest())
    _check_subnet(name, shared.smallest())


@pytest.mark.parametrize("name", SHIPPED)
@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_subnets_equal_their_standalone_networks(name: str, seed: int) -> None:
    shared = _supernet(name)[0]
    _check_subnet(name, shared.sample(np.random.default_rng(seed)))


# -- training: one executable, exact resume ----------------------------------------------------------------

class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run A: two epochs. Run B: the same, stopped right after epoch 1's checkpoint, then resumed."""
    root = tmp_path_factory.mktemp("supernet")
    space = space_from_text(MICRO)
    rows: list[dict[str, Any]] = []
    a = train_supernet(space, "digits", out=root / "a", on_epoch=rows.append, **RUN)

    def kill(row: dict[str, Any]) -> None:
        if row["epoch"] == 1:
            raise _Killed

    with pytest.raises(_Killed):
        train_supernet(space, "digits", out=root / "b", on_epoch=kill, **RUN)
    b = train_supernet(space, "digits", out=root / "b", resume=True, **RUN)
    return {"root": root, "a": a, "rows": rows, "b": b}


def test_sampling_subnets_never_recompiles(runs: dict[str, Any]) -> None:
    a, rows = runs["a"], runs["rows"]
    assert a.subnets == 6
    assert rows[0]["executables"] == rows[1]["executables"] == a.executables  # epoch 2 built nothing new
    assert a.executables <= 6
    assert a.traces == {"train_step": 1, "recalibrate": 1, "evaluate": 1}  # the first run of this plan traces
    meta = json.loads((runs["root"] / "a" / "checkpoints" / "epoch_0002" / "meta.json").read_text())
    assert meta["executables"] == a.executables and meta["traces"] == a.traces


def test_sandwich_rule_never_recompiles(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = []
    r = train_supernet(space_from_text(NANO), "digits", out=tmp_path / "s", on_epoch=rows.append,
                       **(RUN | {"rule": "sandwich", "steps_per_epoch": 2}))
    assert r.subnets == 2 * 2 * 4  # largest, smallest and two random per step
    assert rows[0]["executables"] == rows[1]["executables"] and max(r.traces.values()) == 1
    assert all(np.isfinite(row["train_loss"]) for row in rows)


def _final_state(out: Path) -> list[np.ndarray]:
    edir = out / "checkpoints" / "epoch_0002"
    meta = json.loads((edir / "meta.json").read_text())
    tmpl = [jax.ShapeDtypeStruct(tuple(s), np.dtype(d)) for s, d in meta["leaves"]]
    return [np.asarray(x) for x in ck.load_leaves(edir, tmpl)]


def test_resume_after_a_kill_equals_an_uninterrupted_run(runs: dict[str, Any]) -> None:
    root = runs["root"]
    a, b = _final_state(root / "a"), _final_state(root / "b")
    assert len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [r["train_loss"] for r in runs["a"].history] == [r["train_loss"] for r in runs["b"].history]
    assert (root / "b" / "metrics.csv").read_text().count("\n") == 3


def test_resume_refuses_other_settings(runs: dict[str, Any]) -> None:
    with pytest.raises(MnasError, match="seed differs"):
        train_supernet(space_from_text(MICRO), "digits", out=runs["root"] / "a", resume=True, **(RUN | {"seed": 1}))
    with pytest.raises(MnasError, match="already holds a supernet run"):
        train_supernet(space_from_text(MICRO), "digits", out=runs["root"] / "a", **RUN)


def test_recalibration_leaves_inactive_channels_alone(runs: dict[str, Any]) -> None:
    """BN statistics of channels (and families) a subnet does not use are never touched by it."""
    from mnasdsl.oneshot.evaluate import Supernet

    sn = Supernet(runs["root"] / "a")
    idx = sn.shared.smallest()
    cfg = sn.shared.config(idx)
    new = jax.device_get(sn.scorer.recalibrate(sn.params, sn.stats, cfg))
    old = jax.device_get(sn.stats)
    for k, slot in enumerate(sn.plan.slots):
        op = slot.branches[int(cfg["branch"][k])]
        for fam in slot.families:
            before, after = old["slots"][str(k)][fam.op], new["slots"][str(k)][fam.op]
            # Untouched statistics come back as the mean of ten copies of themselves (float rounding only).
            if fam.op != op:
                assert all(np.allclose(x, y, rtol=1e-6, atol=1e-7)
                           for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
                continue
            last = "project" if "project" in after else "conv"
            c = int(cfg["cout"][k])
            old_mean, new_mean = before[last]["bn"]["mean"], after[last]["bn"]["mean"]
            assert np.allclose(new_mean[c:], old_mean[c:], rtol=1e-6, atol=1e-7)
            assert not np.allclose(new_mean[:c], old_mean[:c], rtol=1e-6, atol=1e-7)


# -- the CLI --------------------------------------------------------------------------------------------------

def test_cli_train_eval_extract_and_the_standalone_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              runs: dict[str, Any]) -> None:
    space = tmp_path / "micro.mnas"
    space.write_text(MICRO)
    out = tmp_path / "sn"
    rc, stdout, err = run_cli(capsys, "supernet", "train", str(space), "--data", "digits", "--out", str(out),
                              *RUN_ARGS, "--json", "-q")
    assert rc == 0, err
    info = json.loads(stdout)
    assert info["rule"] == "spos" and info["subnets"] == 6 and max(info["traces"].values()) <= 1
    for name in ("supernet.json", "metrics.csv", "curves.png", "result.json"):
        assert (out / name).is_file()

    shared = SharedSpace(space_from_text(MICRO), 16, 10)
    nets = [shared.network(shared.sample(np.random.default_rng(s)), name=f"pick{s}") for s in (3, 4)]
    both = tmp_path / "nets.mnas"
    both.write_text("\n".join(format_ir(n) for n in nets))
    rc, stdout, err = run_cli(capsys, "supernet", "eval", str(out), str(both), "--json")
    assert rc == 0, err
    rows = json.loads(stdout)["networks"]
    assert [r["network"] for r in rows] == ["pick3", "pick4"]
    assert all(0.0 <= r["acc"] <= 1.0 and r["seconds"] > 0 and "spec" in r for r in rows)

    one = tmp_path / "one.mnas"
    one.write_text(format_ir(nets[0].scaled(resolution=224, classes=1000)))  # the file's own size: the supernet's wins
    ckpt = tmp_path / "ckpt"
    rc, stdout, err = run_cli(capsys, "supernet", "extract", str(out), str(one), "-o", str(ckpt), "--json")
    assert rc == 0, err
    extracted = json.loads(stdout)
    assert extracted["acc"] == rows[0]["acc"]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert parse(meta["spec"])[0] == nets[0] and meta["classes"] == [str(i) for i in range(10)]

    rc, stdout, err = run_cli(capsys, "eval", str(one), "--ckpt", str(ckpt), "--data", "digits", "--json")
    assert rc == 0, err
    standalone = json.loads(stdout)
    assert standalone["top1"] == rows[0]["acc"]  # the same weights and the same recalibrated BN statistics
    assert standalone["loss"] == pytest.approx(rows[0]["loss"], abs=1e-4)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], runs: dict[str, Any]) -> None:
    good = runs["root"] / "a"
    shared = SharedSpace(space_from_text(MICRO), 16, 10)
    net = shared.network(shared.largest(), name="big")
    outside = tmp_path / "outside.mnas"
    outside.write_text(format_ir(net).replace("_k5_", "_k7_", 1))
    rc, _, err = run_cli(capsys, "supernet", "eval", str(good), str(outside))
    assert rc == 1 and "blocks[0].kernel" in err and "outside.mnas" in err, err
    inside = tmp_path / "inside.mnas"
    inside.write_text(format_ir(net))

    corrupt = tmp_path / "corrupt"
    (corrupt / "checkpoints" / "epoch_0001" / "state").mkdir(parents=True)
    (corrupt / "checkpoints" / "epoch_0001" / "weights").mkdir()
    (corrupt / "checkpoints" / "epoch_0001" / "meta.json").write_text("{not json")
    (corrupt / "supernet.json").write_text("[]")
    empty = tmp_path / "empty"
    empty.mkdir()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    stride = tmp_path / "stride.mnas"
    stride.write_text(MICRO.replace(MICRO.splitlines()[5].strip(), "{ds_s11,ds_s22}_r1_k3_o16"))
    cases = [
        (1, ["supernet", "eval", str(tmp_path / "missing"), str(inside)], "no such supernet directory"),
        (1, ["supernet", "eval", str(corrupt), str(inside)], "unreadable supernet metadata"),
        (1, ["supernet", "eval", str(empty), str(inside)], "not a supernet directory"),
        (1, ["supernet", "extract", str(good), str(inside), "-o", str(busy)], "holds other files"),
        (1, ["supernet", "train", str(stride), "--data", "digits", "--out", str(tmp_path / "o1")], "stride"),
        (1, ["supernet", "train", str(inside), "--data", "digits", "--out", str(tmp_path / "o2")], "no space"),
        (2, ["supernet", "train", str(stride), "--data", "digits", "--out", "x", "--rule", "bogus"], "invalid choice"),
        (2, ["supernet", "train", str(stride), "--data", "digits", "--out", "x", "--epochs", "0"], "--epochs"),
        (2, ["supernet", "extract", str(good), str(inside)], "-o"),
        (2, ["supernet"], "COMMAND"),
    ]
    for code, argv, text in cases:
        rc, _, err = run_cli(capsys, *argv)
        assert rc == code and text in err and "Traceback" not in err, (argv, rc, err)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert (busy / "keep.txt").read_text() == "mine"
