"""Reports over a search database: Pareto front, top-k, latency histogram, and a plot in the
style of the paper's Fig. 6 (sampled models as points, the Pareto curve, latencies below)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import MnasError
from .storage import Store, Trial


def pareto(trials: list[Trial]) -> list[Trial]:
    """Non-dominated trials (higher accuracy, lower latency), one per architecture, by latency."""
    uniq: dict[str, Trial] = {}
    for t in trials:
        if t.cached_from is None and t.arch_key not in uniq:
            uniq[t.arch_key] = t
    front: list[Trial] = []
    best_acc = -np.inf
    for t in sorted(uniq.values(), key=lambda t: (t.latency_ms, -(t.acc or 0.0))):
        if (t.acc or 0.0) > best_acc:
            front.append(t)
            best_acc = t.acc or 0.0
    return front


def brief_error(text: str, lines: int = 3, width: int = 240) -> str:
    """The head of an error text: a plug-in's message can be a whole traceback, and a terminal full of
    them hides the search; the database keeps the full text (4,000 characters)."""
    rows = [r.rstrip() for r in (text or "").strip().splitlines() if r.strip()] or ["evaluation failed"]
    out = [r if len(r) <= width else r[:width - 3] + "..." for r in rows[:lines]]
    if len(rows) > lines:
        out[-1] += f" [... {len(rows) - lines} more lines]"
    return "\n".join(out)


def spec_line(spec: str) -> str:
    """A canonical network spec on one line (its block strings), to name a trial in a log line."""
    rows = [r.strip() for r in spec.splitlines()]
    if "blocks" in rows:
        blocks = [r for r in rows[rows.index("blocks") + 1:] if r and not r.startswith(("head", "#"))]
        return " ".join(blocks)
    return " ".join(r for r in rows if r)


def summarize(db: str | Path, top: int = 10, bins: int = 20) -> dict[str, Any]:
    try:
        return _summarize(db, top, bins)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # damage that opening the file did not reveal
        raise MnasError(f"{db}: not a usable mnasdsl search database ({e})") from None


def _summarize(db: str | Path, top: int, bins: int) -> dict[str, Any]:
    store = Store(db, create=False, read_only=True)
    try:
        if store.get_meta("space") is None:
            raise MnasError(f"{db}: not a search database started by mnasdsl (no metadata)")
        done = store.trials("done")
        failed = store.trials("failed")
        counts = store.counts()
        meta = {"space": store.get_meta("space_name"), "config": store.get_meta("config"),
                "accuracy_is": store.get_meta("proxy_label") or "measured (validation accuracy)"}
        target = (meta["config"] or {}).get("target_ms") if isinstance(meta["config"], (dict, type(None))) else "?"
        if not (target is None or isinstance(target, (int, float)) and not isinstance(target, bool)):
            raise MnasError(f"{db}: corrupt search database: metadata `config` is not a search's settings")
    finally:
        store.close()
    front = pareto(done)
    ranked = sorted((t for t in done if t.cached_from is None), key=lambda t: -(t.reward or 0.0))
    lats = np.asarray([t.latency_ms for t in done if t.cached_from is None], float)
    hist: dict[str, list[float]] = {"counts": [], "edges": []}
    if len(lats):
        c, e = np.histogram(lats, bins=bins)
        hist = {"counts": c.tolist(), "edges": e.tolist()}

    def row(t: Trial) -> dict[str, Any]:
        return {"id": t.id, "spec": t.spec, "acc": t.acc, "latency_ms": t.latency_ms, "reward": t.reward,
                "params": t.params, "macs": t.macs}

    return {
        **meta,
        "trials": counts.get("done", 0) + counts.get("failed", 0),
        "done": counts.get("done", 0),
        "failed": counts.get("failed", 0),
        "pending": counts.get("pending", 0),
        "unique": len(ranked),
        "pareto": [row(t) for t in front],
        "top": [row(t) for t in ranked[:top]],
        "best": row(ranked[0]) if ranked else None,
        "failures": [{"id": t.id, "spec": t.spec, "error": t.error or "evaluation failed", "cached_from": t.cached_from}
                     for t in failed],
        "latency_histogram": hist,
        "_points": [(t.latency_ms, t.acc, t.reward) for t in done if t.cached_from is None],
    }


def figure(summary: dict[str, Any]) -> Any:
    """The Fig. 6-style figure: accuracy vs latency over a latency histogram. The two panels share
    the latency axis and have the same width (the colorbar has a column of its own, so it narrows
    neither), and both carry tick labels, so a histogram bar lines up with the points above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = np.asarray(summary["_points"], float).reshape(-1, 3)
    target = (summary.get("config") or {}).get("target_ms")
    fig, axes = plt.subplots(2, 2, figsize=(7.4, 6.5), layout="constrained",
                             gridspec_kw={"height_ratios": [3, 1], "width_ratios": [30, 1]})
    (ax, cax), (axh, spare) = axes
    axh.sharex(ax)
    spare.set_axis_off()
    if len(pts):
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=pts[:, 2], cmap="viridis", s=14, alpha=0.8, label="sampled models")
        fig.colorbar(sc, cax=cax, label="reward")
        front = summary["pareto"]
        ax.plot([p["latency_ms"] for p in front], [p["acc"] for p in front], "r-o", ms=4, lw=1.5, label="Pareto front")
        axh.hist(pts[:, 0], bins=30, color="steelblue")
    else:
        cax.set_axis_off()
        ax.text(0.5, 0.5, f"no finished trial ({summary.get('failed', 0)} failed)", ha="center", va="center",
                transform=ax.transAxes, bbox={"facecolor": "white", "edgecolor": "none"})
    if target:
        for a in (ax, axh):
            a.axvline(float(target), color="k", ls="--", lw=1, label="target" if a is ax else None)
    label = summary.get("accuracy_is") or "accuracy"
    ax.set_ylabel("accuracy" if label.startswith("measured") else f"accuracy ({label})", fontsize=8)
    ax.set_title(f"search over {summary.get('space')}: {summary['trials']} trials")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    ax.tick_params(labelbottom=True)
    ax.set_xlabel("latency (ms)")
    axh.set_xlabel("latency (ms)")
    axh.set_ylabel("models")
    return fig


def plot(summary: dict[str, Any], path: str | Path) -> None:
    fig = figure(summary)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
    except OSError as e:
        raise MnasError(f"{path}: cannot write plot: {e.strerror or e}") from None
    finally:
        plt.close(fig)
