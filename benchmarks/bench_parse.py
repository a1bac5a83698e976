"""Parse speed: mnasdsl vs a plain regex-split decoder like the TF reference's, from one run.

Prints block strings parsed + validated per second (distinct strings, cold: no memo; best of
three passes), the peer's
figure and the ratio; a bare Lark LALR parse (tree only); the memoized path separately; and
whole networks (parse + validate + lower + cost) per second.

    python benchmarks/bench_parse.py [--n 200000]
"""

from __future__ import annotations

import argparse
import collections
import gc
import random
import re
import time
from collections.abc import Callable

from mnasdsl.blocks import block_parser, parse_block, parse_block_cached
from mnasdsl.cost import cost_lowered
from mnasdsl.lowering import lower
from mnasdsl.parser import parse_units

PeerArgs = collections.namedtuple(
    "PeerArgs", "kernel_size num_repeat input_filters output_filters expand_ratio id_skip se_ratio strides")


def peer_decode(block_string: str) -> PeerArgs:
    """The TF reference's approach: split on '_', split each op at its first digit, convert."""
    options = {}
    for op in block_string.split("_"):
        splits = re.split(r"(\d.*)", op)
        if len(splits) >= 2:
            options[splits[0]] = splits[1]
    if "s" not in options or len(options["s"]) != 2:
        raise ValueError("strides must be a pair of digits")
    return PeerArgs(int(options["k"]), int(options["r"]), int(options["i"]), int(options["o"]), int(options["e"]),
                    "noskip" not in block_string, float(options["se"]) if "se" in options else None,
                    [int(options["s"][0]), int(options["s"][1])])


def distinct_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        s = (f"r{rng.randint(1, 4)}_k{rng.choice((3, 5, 7))}_s{rng.choice(('11', '22'))}_e{rng.choice((3, 6))}"
             f"_i{rng.randint(8, 960)}_o{rng.randint(8, 960)}" + rng.choice(("", "_se0.25")) +
             rng.choice(("", "_noskip")))
        out.add(s)
    return list(out)


def rate(f: Callable[[str], object], items: list[str], repeats: int = 3) -> float:
    """Items per second, best of ``repeats`` passes (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        if hasattr(f, "cache_clear"):
            f.cache_clear()
        t = time.perf_counter()
        for s in items:
            f(s)
        best = min(best, time.perf_counter() - t)
    return len(items) / best


NETWORK = """network n{i}:
  input 224x224x3
  classes 1000
  width 1.0
  dropout 0.2
  stem cv_k3_s22_o32
  blocks
    ds_r1_k3_s11_i32_o16_noskip
    r{a}_k3_s22_e6_i16_o24
    r3_k5_s22_e3_i24_o{b}_se0.25
    r4_k3_s22_e6_i{b}_o80
    r2_k3_s11_e6_i80_o112_se0.25
    r3_k5_s22_e6_i112_o160_se0.25
    r1_k3_s11_e6_i160_o320
  head cv_k1_o1280 fixed
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000, help="distinct block strings")
    ap.add_argument("--networks", type=int, default=5_000)
    args = ap.parse_args()

    # Each figure is measured from a clean heap (the earlier sections' garbage would otherwise
    # be scanned by the cyclic GC during the later ones).
    texts = [NETWORK.format(i=i, a=1 + i % 4, b=40 + 8 * (i % 50)) for i in range(args.networks)]

    def whole(text: str) -> None:
        (net,) = parse_units(text)
        cost_lowered(lower(net))

    gc.collect()
    nets = rate(whole, texts)
    del texts
    strings = distinct_strings(args.n)
    gc.collect()
    peer = rate(peer_decode, strings)
    gc.collect()
    ours = rate(parse_block, strings)
    lark_n = strings[: max(1000, args.n // 20)]
    lark = block_parser()
    gc.collect()
    bare = rate(lark.parse, lark_n)
    repeated = strings[:1000] * (args.n // 1000)
    gc.collect()
    memo = rate(parse_block_cached, repeated)
    print(f"{'what':<48}{'per second':>14}")
    print(f"{'mnasdsl block strings, distinct (cold)':<48}{ours:>14,.0f}")
    print(f"{'peer: regex-split decoder (TF reference style)':<48}{peer:>14,.0f}")
    print(f"{'ratio mnasdsl / peer':<48}{ours / peer:>14.2f}x   (goal >= 0.5x, target >= 50,000/s)")
    print(f"{'bare Lark LALR parse, tree only':<48}{bare:>14,.0f}")
    print(f"{'mnasdsl memoized, 1,000 distinct repeated':<48}{memo:>14,.0f}")
    print(f"{'networks: parse + validate + lower + cost':<48}{nets:>14,.0f}   (target >= 5,000/s)")


if __name__ == "__main__":
    main()
