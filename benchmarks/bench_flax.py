"""Flax backend vs PyTorch eager on the CPU: MnasNet-A1 @224, side by side, one run.

Rows: forward at batch 1, forward at batch 32, one training step (forward + backward + RMSProp)
at batch 32. The PyTorch side is timm's ``semnasnet_100`` (the same architecture, 3,887,038
params) in eager mode, run in a separate interpreter so torch never joins mnasdsl's
dependencies::

    python -m venv .venv-torch
    .venv-torch/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    MNASDSL_TORCH_PYTHON=.venv-torch/bin/python python benchmarks/bench_flax.py

Both sides get the same thread count (``--threads``, default: all cores). The PyTorch interpreter
stays up beside ours and the two take turns: each round times every row on one side and then on
the other (the order alternating between rounds), so drift in a shared machine's speed lands on
both alike. Medians over all rounds are reported, with the range of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch_peer import TorchPeer, timer

ROOT = Path(__file__).resolve().parent.parent
ROWS = (("forward_b1", "forward, batch 1"), ("forward_b32", "forward, batch 32"),
        ("train_b32", "train step, batch 32"))

# The PyTorch side: builds the model, then answers "ROW REPS" lines on stdin with a JSON list of
# per-rep milliseconds (warming each row up on first use).
TORCH_SIDE = r"""
import json, sys, time
import torch, timm
threads = int(sys.argv[1])
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
torch.manual_seed(0)
model = timm.create_model("semnasnet_100", num_classes=1000)
params = sum(p.numel() for p in model.parameters())
x1, x32 = torch.randn(1, 3, 224, 224), torch.randn(32, 3, 224, 224)
y32 = torch.randint(0, 1000, (32,))
opt = torch.optim.RMSprop(model.parameters(), lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9)
loss_fn = torch.nn.CrossEntropyLoss()
def forward(x):
    model.eval()
    with torch.inference_mode():
        model(x)
def train():
    model.train()
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x32), y32).backward()
    opt.step()
rows = {"forward_b1": lambda: forward(x1), "forward_b32": lambda: forward(x32), "train_b32": train}
warm = {"forward_b1": 3, "forward_b32": 2, "train_b32": 1}
print(json.dumps({"params": params, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    row, reps = line.split()
    fn = rows[row]
    for _ in range(warm.pop(row, 0)):
        fn()
    ts = []
    for _ in range(int(reps)):
        t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1e3)
    print(json.dumps(ts), flush=True)
"""


def flax_side() -> tuple[dict[str, float | int | str], dict[str, Callable[[int], list[float]]]]:
    import jax
    import optax
    from flax import nnx

    import mnasdsl
    from mnasdsl.backends import flax as fb

    net = mnasdsl.load(str(ROOT / "specs" / "mnasnet-a1.mnas"))
    model = fb.build(net, rngs=nnx.Rngs(0), platform="cpu")
    info: dict[str, float | int | str] = {"params": fb.count_params(model), "jax": jax.__version__,
                                          "device": str(jax.devices()[0])}
    rows: dict[str, Callable[[int], list[float]]] = {}
    infer = fb.inference_fn(model)
    for b in (1, 32):
        x = jax.random.normal(jax.random.key(b), (b, 224, 224, 3))
        t = time.perf_counter()
        compiled = infer.lower(x).compile()
        info[f"compile_b{b}_s"] = time.perf_counter() - t
        rows[f"forward_b{b}"] = timer(lambda c=compiled, x=x: c(x).block_until_ready(), warm=2)

    # One training step: forward in train mode (batch BN statistics, dropout), backward, RMSProp
    # with TF's MnasNet settings, all under one nnx.jit.
    tx = optax.rmsprop(0.016, decay=0.9, eps=1e-3, momentum=0.9)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):  # type: ignore[no-untyped-def]
        def loss_fn(m):  # type: ignore[no-untyped-def]
            return optax.softmax_cross_entropy_with_integer_labels(m(x, train=True), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    x = jax.random.normal(jax.random.key(3), (32, 224, 224, 3))
    y = jax.random.randint(jax.random.key(4), (32,), 0, 1000)
    t = time.perf_counter()
    step(model, optimizer, x, y).block_until_ready()
    info["compile_train_s"] = time.perf_counter() - t
    rows["train_b32"] = timer(lambda: step(model, optimizer, x, y).block_until_ready(), warm=1)
    return info, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads on both sides")
    ap.add_argument("--rounds", type=int, default=3, help="turns each side takes at every row")
    ap.add_argument("--reps1", type=int, default=10, help="timed forwards at batch 1 per round")
    ap.add_argument("--reps32", type=int, default=2, help="timed forwards at batch 32 per round")
    ap.add_argument("--reps-train", type=int, default=3, help="timed training steps per round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.threads
    # Same cores for XLA as for torch: XLA:CPU sizes its pools by the machine, so confine the
    # process (and the torch subprocess, which inherits it) to n cores; before jax is imported.
    if n < (os.cpu_count() or 1) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(f"threads: {n} on both sides ({os.cpu_count()} cores)", flush=True)
    info, ours_rows = flax_side()

    torch_py = os.environ.get("MNASDSL_TORCH_PYTHON")
    torch_side: TorchPeer | None = None
    if not torch_py:
        print("MNASDSL_TORCH_PYTHON is unset: PyTorch side skipped. Make an interpreter for it with\n"
              "  python -m venv .venv-torch && .venv-torch/bin/pip install torch==2.14.1 "
              "torchvision==0.29.1 timm\n  export MNASDSL_TORCH_PYTHON=.venv-torch/bin/python", file=sys.stderr)
    else:
        try:
            env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
            torch_side = TorchPeer(torch_py, TORCH_SIDE, [str(n)], env)
        except (OSError, RuntimeError, ValueError) as e:
            print(f"torch side failed: {e}", file=sys.stderr)
            return 1

    reps = {"forward_b1": args.reps1, "forward_b32": args.reps32, "train_b32": args.reps_train}
    ours: dict[str, list[float]] = {row: [] for row, _ in ROWS}
    theirs: dict[str, list[float]] = {row: [] for row, _ in ROWS}
    round_ratios: dict[str, list[float]] = {row: [] for row, _ in ROWS}
    try:
        for r in range(args.rounds):
            for row, _ in ROWS:
                sides = [("ours", lambda row=row: ours_rows[row](reps[row]))]
                if torch_side is not None:
                    sides.append(("theirs", lambda row=row: torch_side.ask(f"{row} {reps[row]}")))
                got = {}
                for name, fn in sides if r % 2 == 0 else sides[::-1]:
                    got[name] = fn()
                ours[row] += got["ours"]
                if "theirs" in got:
                    theirs[row] += got["theirs"]
                    round_ratios[row].append(float(np.median(got["theirs"]) / np.median(got["ours"])))
    except RuntimeError as e:
        print(f"torch side failed: {e}", file=sys.stderr)
        return 1
    finally:
        if torch_side is not None:
            torch_side.close()

    result = {"threads": n, "flax": {**info, **{f"{row}_ms": float(np.median(v)) for row, v in ours.items()}},
              "torch": None if torch_side is None else
              {**torch_side.info, **{f"{row}_ms": float(np.median(v)) for row, v in theirs.items()}},
              "round_ratios": round_ratios if torch_side is not None else None}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    t_info = torch_side.info if torch_side is not None else None
    print(f"MnasNet-A1 @224, params: flax {info['params']:,}"
          + (f", torch {t_info['params']:,} (torch {t_info['torch']})" if t_info else "") + f", jax {info['jax']}")
    print(f"XLA compile: forward b1 {info['compile_b1_s']:.2f} s, b32 {info['compile_b32_s']:.2f} s, "
          f"train step {info['compile_train_s']:.2f} s")
    print(f"{args.rounds} rounds, turns alternating; medians over all rounds")
    print(f"{'row':<24}{'flax ms':>12}{'torch ms':>12}{'speedup':>10}   per-round speedups")
    for row, label in ROWS:
        ours_ms = float(np.median(ours[row]))
        if torch_side is not None:
            theirs_ms = float(np.median(theirs[row]))
            rr = " ".join(f"{x:.2f}" for x in round_ratios[row])
            print(f"{label:<24}{ours_ms:>12.1f}{theirs_ms:>12.1f}{theirs_ms / ours_ms:>9.2f}x   {rr}")
        else:
            print(f"{label:<24}{ours_ms:>12.1f}{'-':>12}{'-':>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
