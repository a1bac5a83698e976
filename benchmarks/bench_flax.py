"""Flax backend vs PyTorch eager on the CPU: MnasNet-A1 @224, side by side, one run.

Rows: forward at batch 1, forward at batch 32, one training step (forward + backward + RMSProp)
at batch 32. The PyTorch side is timm's ``semnasnet_100`` (the same architecture, 3,887,038
params) in eager mode, run in a separate interpreter so torch never joins mnasdsl's
dependencies::

    python -m venv .venv-torch
    .venv-torch/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    MNASDSL_TORCH_PYTHON=.venv-torch/bin/python python benchmarks/bench_flax.py

Both sides get the same thread count (``--threads``, default: all cores) and report medians.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TORCH_SIDE = r"""
import json, sys, time
import numpy as np
import torch, timm
threads, reps1, reps32, reps_train = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
torch.manual_seed(0)
model = timm.create_model("semnasnet_100", num_classes=1000)
params = sum(p.numel() for p in model.parameters())
def med(fn, reps, warm=2):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)
out = {"params": params, "torch": torch.__version__, "threads": torch.get_num_threads()}
model.eval()
for b, reps in ((1, reps1), (32, reps32)):
    x = torch.randn(b, 3, 224, 224)
    with torch.inference_mode():
        out[f"forward_b{b}_ms"] = med(lambda: model(x), reps)
model.train()
opt = torch.optim.RMSprop(model.parameters(), lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9)
x = torch.randn(32, 3, 224, 224)
y = torch.randint(0, 1000, (32,))
loss_fn = torch.nn.CrossEntropyLoss()
def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
out["train_b32_ms"] = med(step, reps_train, warm=1)
print(json.dumps(out))
"""


def _median_ms(fn, reps: int, warm: int = 1) -> float:  # type: ignore[no-untyped-def]
    import numpy as np

    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def flax_side(threads: int, reps1: int, reps32: int, reps_train: int) -> dict[str, float | int | str]:
    import jax
    import optax
    from flax import nnx

    import mnasdsl
    from mnasdsl.backends import flax as fb

    net = mnasdsl.load(str(ROOT / "specs" / "mnasnet-a1.mnas"))
    model = fb.build(net, rngs=nnx.Rngs(0), platform="cpu")
    out: dict[str, float | int | str] = {"params": fb.count_params(model), "jax": jax.__version__,
                                         "device": str(jax.devices()[0])}
    infer = fb.inference_fn(model)
    for b, reps in ((1, reps1), (32, reps32)):
        x = jax.random.normal(jax.random.key(b), (b, 224, 224, 3))
        t = time.perf_counter()
        compiled = infer.lower(x).compile()
        out[f"compile_b{b}_s"] = time.perf_counter() - t
        out[f"forward_b{b}_ms"] = _median_ms(lambda c=compiled, x=x: c(x).block_until_ready(), reps)

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
    out["compile_train_s"] = time.perf_counter() - t

    def one() -> None:
        step(model, optimizer, x, y).block_until_ready()

    out["train_b32_ms"] = _median_ms(one, reps_train)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads on both sides")
    ap.add_argument("--reps1", type=int, default=30, help="timed forwards at batch 1")
    ap.add_argument("--reps32", type=int, default=5, help="timed forwards at batch 32")
    ap.add_argument("--reps-train", type=int, default=5, help="timed training steps")
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
    ours = flax_side(n, args.reps1, args.reps32, args.reps_train)

    torch_py = os.environ.get("MNASDSL_TORCH_PYTHON")
    theirs: dict[str, float] | None = None
    if not torch_py:
        print("MNASDSL_TORCH_PYTHON is unset: PyTorch side skipped. Make an interpreter for it with\n"
              "  python -m venv .venv-torch && .venv-torch/bin/pip install torch==2.14.1 "
              "torchvision==0.29.1 timm\n  export MNASDSL_TORCH_PYTHON=.venv-torch/bin/python", file=sys.stderr)
    else:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
        proc = subprocess.run([torch_py, "-c", TORCH_SIDE, str(n), str(args.reps1), str(args.reps32),
                               str(args.reps_train)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"torch side failed:\n{proc.stderr}", file=sys.stderr)
            return 1
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])

    if args.json:
        print(json.dumps({"threads": n, "flax": ours, "torch": theirs}, indent=2))
        return 0
    print(f"MnasNet-A1 @224, params: flax {ours['params']:,}"
          + (f", torch {theirs['params']:,} (torch {theirs['torch']})" if theirs else "") + f", jax {ours['jax']}")
    print(f"XLA compile: forward b1 {ours['compile_b1_s']:.2f} s, b32 {ours['compile_b32_s']:.2f} s, "
          f"train step {ours['compile_train_s']:.2f} s")
    print(f"{'row':<24}{'flax ms':>12}{'torch ms':>12}{'speedup':>10}")
    for key, label in (("forward_b1_ms", "forward, batch 1"), ("forward_b32_ms", "forward, batch 32"),
                       ("train_b32_ms", "train step, batch 32")):
        ours_ms = float(ours[key])
        if theirs:
            print(f"{label:<24}{ours_ms:>12.1f}{theirs[key]:>12.1f}{theirs[key] / ours_ms:>9.2f}x")
        else:
            print(f"{label:<24}{ours_ms:>12.1f}{'-':>12}{'-':>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
