"""Search throughput: wall time per proxy trial of an evolution search, ours against PyTorch eager.

The search: evolution over specs/spaces/mnasnet.mnas (population 5, tournament 2, so 15 of 20
trials are children that change one decision), the proxy evaluator on digits at 32x32, batch 64,
2 epochs, one worker, a cold compilation cache (an empty persistent cache directory and no
executables in memory). A trial's time is the evaluator's wall time (build, init, compile, train,
BN recalibration, eval), as the trial database records it.

Then, from the same run:
- ``--fused``: the same architectures trained with the whole-network step (``--proxy-steps fused``),
  one cold compile each: the accuracy distribution beside the layerwise one (same seeds; the two
  step forms agree to float rounding, which 2-epoch training amplifies);
- the PyTorch peer, when MNASDSL_TORCH_PYTHON names an interpreter with torch (see
  benchmarks/bench_train.py): the same sampled architectures built layer for layer from the lowered
  networks (pool skips and SE included; PyTorch's default init and symmetric padding) in eager
  PyTorch, trained on the same digits arrays with AdamW at the same schedule, batch and epochs,
  with the same BN recalibration (10 batches) and evaluation after each epoch, in a process kept
  up beside ours. Its images are resized once and not augmented (ours are cropped per step);
- ``--zero-cost``: the same search with the zero-cost evaluator (gradient norm at init).

Threads are enforced: the process is confined to ``--threads`` cores (the PyTorch process inherits
the mask) and torch gets ``set_num_threads``.

    python benchmarks/bench_proxy.py [--trials 20] [--threads 2] [--fused] [--zero-cost] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch_peer import TorchPeer

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "specs" / "spaces" / "mnasnet.mnas"

# The PyTorch side: reads the digits arrays once, then for each request line (a JSON network: the
# lowered layers) builds the network in eager PyTorch, trains it and answers seconds and accuracy.
TORCH_SCRIPT = r"""
import json, math, sys, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
threads, data, epochs, batch, seed = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
d = np.load(data)
xtr = torch.from_numpy(d["xtr"]).permute(0, 3, 1, 2).contiguous()
ytr = torch.from_numpy(d["ytr"]).long()
xva = torch.from_numpy(d["xva"]).permute(0, 3, 1, 2).contiguous()
yva = torch.from_numpy(d["yva"]).long()
mean = torch.from_numpy(d["mean"]).view(1, -1, 1, 1)
std = torch.from_numpy(d["std"]).view(1, -1, 1, 1)
ACT = {"relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU, "none": nn.Identity}

def conv_bn(cin, cout, k, s, act, groups=1, mom=0.01, eps=1e-3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, momentum=mom, eps=eps), ACT[act]())

class SE(nn.Module):
    def __init__(self, ch, se):
        super().__init__()
        self.r, self.e = nn.Conv2d(ch, se, 1), nn.Conv2d(se, ch, 1)
    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.e(F.relu(self.r(s))))

class Block(nn.Module):
    def __init__(self, L, mom, eps):
        super().__init__()
        cin, cout, mid, k, s, act = L["cin"], L["cout"], L["mid"], L["k"], L["s"], L["act"]
        parts = []
        if L["op"] == "mb":
            parts.append(conv_bn(cin, mid, 1, 1, act, mom=mom, eps=eps))
        if L["op"] in ("mb", "ds"):
            parts.append(conv_bn(mid, mid, k, s, act, groups=mid, mom=mom, eps=eps))
        else:
            parts.append(conv_bn(cin, cout, k, s, act, mom=mom, eps=eps))
        if L["se"]:
            parts.append(SE(mid, L["se"]))
        if L["op"] in ("mb", "ds"):
            parts.append(conv_bn(mid, cout, 1, 1, "none", mom=mom, eps=eps))
        self.body = nn.Sequential(*parts)
        self.skip, self.s = L["skip"], s
        self.proj = conv_bn(cin, cout, 1, 1, "none", mom=mom, eps=eps) if L["pool_proj"] else None
    def forward(self, x):
        y = self.body(x)
        if self.skip == "identity":
            return y + x
        if self.skip == "pool":
            p = F.avg_pool2d(x, self.s, self.s, ceil_mode=True, count_include_pad=False) if self.s > 1 else x
            return y + (self.proj(p) if self.proj is not None else p)
        return y

def build(net):
    mom, eps = 1.0 - net["bn_momentum"], net["bn_eps"]
    layers = []
    for L in net["layers"]:
        if L["kind"] in ("stem", "head"):
            layers.append(conv_bn(L["cin"], L["cout"], L["k"], L["s"], L["act"], mom=mom, eps=eps))
        else:
            layers.append(Block(L, mom, eps))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(net["dropout"]),
                         nn.Linear(net["layers"][-1]["cout"], net["classes"]))

def recalibrate(model, g, batches=10):
    # As ours for a short proxy: BN statistics re-estimated as the average over 10 training batches.
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    order = torch.randperm(len(xtr), generator=g)
    with torch.no_grad():
        for b in range(min(batches, len(xtr) // batch)):
            model((xtr[order[b * batch:(b + 1) * batch]].float() - mean) / std)
    for m, mom in zip(bns, saved):
        m.momentum = mom

def trial(net):
    t = time.perf_counter()
    torch.manual_seed(seed)
    model = build(net)
    n = len(xtr) // batch
    total = n * epochs
    warm = max(1, min(total // 10, 5 * n))
    peak = 1e-2
    opt = torch.optim.AdamW(model.parameters(), lr=peak, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    def lr_at(i):  # optax.warmup_cosine_decay_schedule(0, peak, warm, total, peak / 100)
        if i < warm:
            return peak * i / warm
        frac = min(1.0, (i - warm) / max(1, total - warm))
        return peak / 100 + (peak - peak / 100) * 0.5 * (1 + math.cos(math.pi * frac))
    g = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=g)
        for b in range(n):
            idx = order[b * batch:(b + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model((xtr[idx].float() - mean) / std), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        recalibrate(model, g)
        model.eval()
        with torch.no_grad():
            correct = sum(int((model((xva[i:i + 2 * batch].float() - mean) / std).argmax(1)
                               == yva[i:i + 2 * batch]).sum()) for i in range(0, len(xva), 2 * batch))
    return {"s": time.perf_counter() - t, "acc": correct / len(xva)}

print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
for line in sys.stdin:
    print(json.dumps(trial(json.loads(line))), flush=True)
"""


def confine(threads: int) -> int:
    """Run on ``threads`` cores (inherited by the PyTorch process); returns how many we got."""
    try:
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, set(cpus))
        return len(cpus)
    except (AttributeError, OSError):
        return threads


def layers_json(spec: str, resolution: int, classes: int) -> dict[str, Any]:
    """The lowered network as the PyTorch side builds it: one entry per layer, classifier apart."""
    from mnasdsl.lowering import lower
    from mnasdsl.parser import parse_units

    (net,) = parse_units(spec)
    low = lower(net.scaled(resolution=resolution, classes=classes))  # type: ignore[union-attr]
    out = []
    for ly in low.layers:
        if ly.kind == "classifier":
            continue
        out.append({"kind": ly.kind, "op": ly.op, "cin": ly.in_shape[2], "cout": ly.out_shape[2], "mid": ly.mid,
                    "k": ly.kernel, "s": ly.stride[0], "se": ly.se, "skip": ly.skip, "pool_proj": ly.pool_proj,
                    "act": ly.act})
    return {"layers": out, "classes": classes, "dropout": low.dropout, "bn_momentum": low.bn_momentum,
            "bn_eps": low.bn_eps}


def run_ours(trials: int, kind: str, steps: str, args: argparse.Namespace, cache: Path) -> list[Any]:
    """One search from a cold cache; the trials in order (spec, acc, evaluator seconds)."""
    import mnasdsl
    from mnasdsl.search.evaluators import EvalConfig
    from mnasdsl.search.loop import SearchConfig, run_search
    from mnasdsl.search.storage import Store
    from mnasdsl.train import layerwise

    layerwise.clear_cache()
    space = mnasdsl.load_space(SPACE)
    ev = EvalConfig(kind=kind, data="digits", epochs=args.epochs, resolution=32, batch=64, seed=0,
                    cache_dir=str(cache), steps=steps)
    cfg = SearchConfig(trials=trials, target_ms=75.0, algo="evolution", population=args.population,
                       tournament=args.tournament, seed=args.seed, evaluator=ev)
    db = cache.parent / f"{kind}-{steps}.sqlite"
    run_search(space, db, cfg)
    store = Store(db, create=False, read_only=True)
    try:
        return [t for t in store.trials() if t.status == "done"]
    finally:
        store.close()


def fused_same(specs: list[str], args: argparse.Namespace) -> list[dict[str, float]]:
    """The same architectures under the whole-network step, each a cold compile (no cache)."""
    from mnasdsl.search.evaluators import EvalConfig, evaluate

    ev = EvalConfig(kind="proxy", data="digits", epochs=args.epochs, resolution=32, batch=64, seed=0,
                    steps="fused")
    return [evaluate(ev, s) for s in specs]


def summary(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f}" if xs else "     -"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--population", type=int, default=5)
    ap.add_argument("--tournament", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--fused", action="store_true", help="also train the same architectures with the fused step")
    ap.add_argument("--zero-cost", action="store_true", help="also run the search with the zero-cost evaluator")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    threads = confine(args.threads)
    out: dict[str, Any] = {"threads": threads, "trials": args.trials}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "xla-cache"
        t0 = time.perf_counter()
        ours = run_ours(args.trials, "proxy", "auto", args, cache)
        out["search_s"] = time.perf_counter() - t0
        fresh = [t for t in ours if t.cached_from is None]
        out["ours"] = [{"spec_id": t.id, "acc": t.acc, "s": t.eval_s} for t in fresh]
        specs = [t.spec for t in fresh]
        if args.zero_cost:
            zc = run_ours(args.trials, "zero-cost", "auto", args, Path(tmp) / "xla-cache-zc")
            out["zero_cost_s"] = [float(t.eval_s or 0.0) for t in zc if t.cached_from is None]
        if args.fused:
            out["fused"] = fused_same(specs, args)
        peer = None
        if py := os.environ.get("MNASDSL_TORCH_PYTHON"):
            from mnasdsl.train import open_source
            from mnasdsl.train.data import Loader, norm_stats

            src = open_source("digits")
            arrays = {}
            for name, split in (("tr", src.train), ("va", src.val)):
                batches = list(Loader(split, batch=len(split), size=(32, 32), channels=3, train=False))
                arrays[f"x{name}"], arrays[f"y{name}"] = batches[0].images, batches[0].labels.astype(np.int64)
            mean, std = norm_stats(3)
            npz = Path(tmp) / "digits.npz"
            np.savez(npz, mean=mean, std=std, **arrays)
            peer = TorchPeer(py, TORCH_SCRIPT, [str(threads), str(npz), str(args.epochs), "64", str(args.seed)])
            out["peer_info"] = peer.info
            out["peer"] = [peer.ask(json.dumps(layers_json(s, 32, src.num_classes))) for s in specs]
            peer.close()
    report(out, args)
    return 0


def report(out: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(out, indent=1))
        return
    ours = [r["s"] for r in out["ours"]]
    peer = [r["s"] for r in out.get("peer", [])]
    print(f"proxy trial wall time, s (median; {len(ours)} distinct architectures of {out['trials']} trials, "
          f"{out['threads']} threads)")
    print(f"{'':<34}{'all':>8}{'first 5':>9}{'rest':>8}")
    print(f"{'mnasdsl (layerwise, auto)':<34}{summary(ours):>8}{summary(ours[:5]):>9}{summary(ours[5:]):>8}")
    if out.get("fused"):
        fs = [float(r["eval_s"]) for r in out["fused"]]
        print(f"{'mnasdsl (fused step, cold)':<34}{summary(fs):>8}{summary(fs[:5]):>9}{summary(fs[5:]):>8}")
    if peer:
        print(f"{'PyTorch eager (same archs)':<34}{summary(peer):>8}{summary(peer[:5]):>9}{summary(peer[5:]):>8}")
        r = [a / b for a, b in zip(ours, peer, strict=True)]
        print(f"{'ratio ours / PyTorch':<34}{statistics.median(r):>8.2f}{statistics.median(r[:5]):>9.2f}"
              f"{statistics.median(r[5:]) if r[5:] else float('nan'):>8.2f}")
    if "zero_cost_s" in out:
        z = out["zero_cost_s"]
        print(f"{'zero-cost evaluator':<34}{summary(z):>8}{summary(z[:5]):>9}{summary(z[5:]):>8}")
    accs = {"layerwise": [float(r["acc"]) for r in out["ours"]]}
    if out.get("fused"):
        accs["fused"] = [float(r["acc"]) for r in out["fused"]]
    if peer:
        accs["PyTorch"] = [float(r["acc"]) for r in out["peer"]]
    print("validation accuracy over the same architectures:")
    for k, v in accs.items():
        print(f"  {k:<10} mean {np.mean(v):.4f}  std {np.std(v):.4f}  median {np.median(v):.4f}")
    if "fused" in accs:
        d = np.abs(np.asarray(accs["layerwise"]) - np.asarray(accs["fused"]))
        print(f"  |layerwise - fused| per architecture: median {np.median(d):.4f}, max {d.max():.4f}")


if __name__ == "__main__":
    sys.exit(main())
