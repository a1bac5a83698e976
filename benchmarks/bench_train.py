"""Training throughput: MnasNet-A1 @224 under mnasdsl (Flax, jitted, data-parallel step) vs timm's
``semnasnet_100`` (the same architecture) in PyTorch eager, same machine, same run, same batch.

Both train on one fixed synthetic batch (random images and labels), so only the training step is
timed: forward, backward, optimizer update (RMSProp, label smoothing 0.1 on both sides), after
warm-up steps that absorb compilation. PyTorch runs in its own interpreter (a benchmark-only venv:
torch==2.14.1, torchvision==0.29.1, timm) named by MNASDSL_TORCH_PYTHON, kept up beside ours: the
two take turns, ``--steps`` steps each per round (the order alternating between rounds), so drift
in a shared machine's speed lands on both alike. Images/s is over all timed steps of all rounds.

    python benchmarks/bench_train.py [--batch 32] [--steps 4] [--rounds 3] [--warmup 2] [--json]
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
from torch_peer import TorchPeer

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "mnasnet-a1.mnas"
CLASSES = 10

# The PyTorch side: builds the model, warms up, then answers each "STEPS" line on stdin with the
# seconds those training steps took.
TORCH_SCRIPT = r"""
import json, sys, time
import torch, timm
batch, warmup, classes, res = (int(a) for a in sys.argv[1:5])
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
    return float(loss.detach())
for _ in range(warmup):
    step()
print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__}),
      flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    for _ in range(int(line)):
        step()
    print(json.dumps(time.perf_counter() - t), flush=True)
"""


def torch_python() -> str | None:
    return os.environ.get("MNASDSL_TORCH_PYTHON") or None


def setup_ours(batch: int, warmup: int, res: int) -> tuple[dict[str, float], Callable[[int], float]]:
    """Build and warm up mnasdsl's trainer; returns its info and ``steps -> seconds``."""
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

    def run(steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            m = trainer.step(b)
        jax.block_until_ready(m)
        return time.perf_counter() - t

    return {"setup_s": setup, "devices": n_dev, "batch": batch}, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    info, ours_run = setup_ours(args.batch, args.warmup, args.resolution)
    batch = int(info["batch"])
    py = torch_python()
    torch_side: TorchPeer | None = None
    skipped = ""
    if py is None:
        skipped = ("no PyTorch interpreter: python -m venv .venv-torch && .venv-torch/bin/pip install "
                   "torch==2.14.1 torchvision==0.29.1 timm, then MNASDSL_TORCH_PYTHON=.venv-torch/bin/python")
    else:
        try:
            torch_side = TorchPeer(py, TORCH_SCRIPT, [str(batch), str(args.warmup), str(CLASSES),
                                                      str(args.resolution)])
        except (OSError, RuntimeError, ValueError) as e:
            skipped = f"PyTorch run failed: {e}"

    ours_s, theirs_s, round_ratios = 0.0, 0.0, []
    try:
        for r in range(args.rounds):
            sides: list[tuple[str, Callable[[int], float]]] = [("ours", ours_run)]
            if torch_side is not None:
                sides.append(("theirs", lambda steps, peer=torch_side: float(peer.ask(str(steps)))))
            got = {name: fn(args.steps) for name, fn in (sides if r % 2 == 0 else sides[::-1])}
            ours_s += got["ours"]
            if "theirs" in got:
                theirs_s += got["theirs"]
                round_ratios.append(got["theirs"] / got["ours"])
    except RuntimeError as e:
        skipped = f"PyTorch run failed: {e}"
    finally:
        if torch_side is not None:
            torch_side.close()
    if skipped:
        torch_side = None

    timed = batch * args.steps * args.rounds
    ours = {"images_per_s": timed / ours_s, **info}
    out: dict[str, object] = {"network": "mnasnet_a1", "resolution": args.resolution, "batch": batch,
                              "steps": args.steps, "rounds": args.rounds, "ours": ours}
    if torch_side is not None:
        out["torch"] = {"images_per_s": timed / theirs_s, **torch_side.info}
        out["speedup"] = theirs_s / ours_s
        out["round_speedups"] = round_ratios
    else:
        out["torch"] = skipped
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"mnasdsl (Flax/XLA): {ours['images_per_s']:8.1f} images/s  (setup incl. compile {info['setup_s']:.0f}s)")
    if torch_side is not None:
        t = out["torch"]
        assert isinstance(t, dict)
        print(f"timm semnasnet_100: {t['images_per_s']:8.1f} images/s  (PyTorch {t['torch']} eager, "
              f"{t['threads']} threads)")
        print(f"speedup: {out['speedup']:.2f}x (target >= 1.5x); per round: "
              + " ".join(f"{x:.2f}" for x in round_ratios))
    else:
        print(f"timm semnasnet_100: skipped: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
