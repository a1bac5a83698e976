"""Training throughput: MnasNet-A1 @224 under mnasdsl (Flax, jitted, data-parallel step) vs timm's
``semnasnet_100`` (the same architecture) in PyTorch eager, same machine, same run, same batch.

Both train on one fixed synthetic batch (random images and labels), so only the training step is
timed: forward, backward, optimizer update (RMSProp, label smoothing 0.1 on both sides), after
warm-up steps that absorb compilation. PyTorch runs in its own interpreter (a benchmark-only venv:
torch==2.14.1, torchvision==0.29.1, timm) named by MNASDSL_TORCH_PYTHON.

    python benchmarks/bench_train.py [--batch 32] [--steps 10] [--warmup 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "mnasnet-a1.mnas"
CLASSES = 10

TORCH_SCRIPT = r"""
import json, sys, time
import torch, timm
batch, steps, warmup, classes, res = (int(a) for a in sys.argv[1:6])
torch.manual_seed(0)
model = timm.create_model("semnasnet_100", pretrained=False, num_classes=classes)
model.train()
opt = torch.optim.RMSprop(model.parameters(), lr=0.016 * batch / 256, alpha=0.9, eps=1e-3, momentum=0.9,
                          weight_decay=1e-5)
loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
y = torch.randint(0, classes, (batch,))
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model((x.float() - mean) / std), y)
    loss.backward()
    opt.step()
    return float(loss)
for _ in range(warmup):
    step()
t = time.perf_counter()
for _ in range(steps):
    step()
dt = time.perf_counter() - t
print(json.dumps({"images_per_s": batch * steps / dt, "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "timm": timm.__version__}))
"""


def torch_python() -> str | None:
    return os.environ.get("MNASDSL_TORCH_PYTHON") or None


def bench_ours(batch: int, steps: int, warmup: int, res: int) -> dict[str, float]:
    import jax

    import mnasdsl
    from mnasdsl.train.data import Batch
    from mnasdsl.train.loop import Trainer

    net = mnasdsl.load(SPEC).scaled(resolution=res, classes=CLASSES)
    n_dev = len(jax.local_devices())
    batch = max(n_dev, batch // n_dev * n_dev)
    t0 = time.perf_counter()
    trainer = Trainer(net, recipe="mnasnet", batch=batch, steps_per_epoch=100, epochs=10, seed=0)
    rng = np.random.default_rng(0)
    b = Batch(rng.integers(0, 256, (batch, res, res, 3), dtype=np.uint8),
              rng.integers(0, CLASSES, batch).astype(np.int32), np.ones(batch, np.float32))
    for _ in range(warmup):
        jax.block_until_ready(trainer.step(b))
    setup = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(steps):
        m = trainer.step(b)
    jax.block_until_ready(m)
    dt = time.perf_counter() - t
    return {"images_per_s": batch * steps / dt, "setup_s": setup, "devices": n_dev}


def bench_torch(batch: int, steps: int, warmup: int, res: int) -> dict[str, float] | str:
    py = torch_python()
    if py is None:
        return ("no PyTorch interpreter: python -m venv .venv-torch && .venv-torch/bin/pip install "
                "torch==2.14.1 torchvision==0.29.1 timm, then MNASDSL_TORCH_PYTHON=.venv-torch/bin/python")
    try:
        r = subprocess.run([py, "-c", TORCH_SCRIPT, str(batch), str(steps), str(warmup), str(CLASSES), str(res)],
                           capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"PyTorch run failed: {e}"
    if r.returncode != 0:
        return f"PyTorch run failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch_r = bench_torch(args.batch, args.steps, args.warmup, args.resolution)
    ours = bench_ours(args.batch, args.steps, args.warmup, args.resolution)
    out: dict[str, object] = {"network": "mnasnet_a1", "resolution": args.resolution, "batch": args.batch,
                              "steps": args.steps, "ours": ours, "torch": torch_r}
    if isinstance(torch_r, dict):
        out["speedup"] = ours["images_per_s"] / torch_r["images_per_s"]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"mnasdsl (Flax/XLA): {ours['images_per_s']:8.1f} images/s  (setup incl. compile {ours['setup_s']:.0f}s)")
        if isinstance(torch_r, dict):
            print(f"timm semnasnet_100: {torch_r['images_per_s']:8.1f} images/s  (PyTorch {torch_r['torch']} eager, "
                  f"{torch_r['threads']} threads)")
            print(f"speedup: {out['speedup']:.2f}x (target >= 1.5x)")
        else:
            print(f"timm semnasnet_100: skipped: {torch_r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
