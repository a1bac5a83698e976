"""Fit the built-in ``pixel1`` device: ``python -m mnasdsl.latency.fit_pixel1``.

Per-op coefficients come from the ProxylessNAS Pixel-1 TFLite table (MBConv e3/e6 k3/5/7 with
ReLU6 at the 224 ProxylessNAS shapes, stem, head, logits). Three global terms (scale, per-op
launch overhead, per-network overhead) are then calibrated on the published whole-network
MobileNetV2 latencies (22 widths/resolutions, Pixel-1 large core, TFLite). The table itself is
not shipped, only the coefficients, so the calibration is fitted on the model alone — exactly
what ``--device pixel1`` evaluates. Nothing from MnasNet's published latencies is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..fsutil import atomic_write_text
from .lut import import_proxylessnas
from .model import fit_lut
from .published import load_spec, read_published

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"
DEFAULT_LUT = DATA / "pixel1_proxylessnas_lut.yaml"
DEFAULT_CSV = DATA / "pixel1_mobilenet_v2.csv"
DEFAULT_SPEC = ROOT / "specs" / "mobilenet-v2.mnas"
DEFAULT_OUT = Path(__file__).resolve().parent / "devices" / "pixel1.json"


def build(lut_path: Path = DEFAULT_LUT, csv_path: Path = DEFAULT_CSV, spec_path: Path = DEFAULT_SPEC) -> str:
    table = import_proxylessnas(lut_path.read_text(encoding="utf-8"), str(lut_path), device="pixel1",
                                runtime="TFLite (Pixel 1 large core, batch 1)")
    nets = [(low, ms) for _, low, ms in read_published(csv_path, load_spec(spec_path))]
    fitted = fit_lut(table, nets, use_entries=False,
                     note="per-op coefficients from the ProxylessNAS table; scale/per_op_ms/per_network_ms "
                          "calibrated on the MobileNetV2 table; no MnasNet latencies used")
    prov = {
        "per_op_source": "ProxylessNAS Pixel-1 latency lookup table (Cai, Zhu, Han, ICLR 2019; MIT license), "
                         f"file {lut_path.name}: {len(table.entries)} ops, TFLite on Google Pixel 1",
        "calibration_source": "TF-slim MobileNetV2 README (tensorflow/models): whole-network latency on the "
                              f"Pixel 1 large core with TFLite, {len(nets)} width/resolution settings, file "
                              f"{csv_path.name}",
        "script": "python -m mnasdsl.latency.fit_pixel1",
        "shipped": "coefficients only (the measured table is not redistributed here)",
        "relu": "ReLU layers are priced as ReLU6: both are a clamp fused into the conv on TFLite",
    }
    return fitted.replace(entries={}, provenance=prov).dumps()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mnasdsl.latency.fit_pixel1", description=__doc__.splitlines()[0])
    p.add_argument("--lut", type=Path, default=DEFAULT_LUT)
    p.add_argument("--published", type=Path, default=DEFAULT_CSV)
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    for f in (a.lut, a.published):
        if not f.exists():
            sys.stderr.write(f"missing {f} (the shared public data is expected at ../shared/data)\n")
            return 1
    text = build(a.lut, a.published, a.spec)
    atomic_write_text(a.output, text)
    import json

    fit = json.loads(text)["model"]["fit"]
    sys.stdout.write(f"wrote {a.output}\n" + "".join(f"  {k}: {v}\n" for k, v in fit.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
