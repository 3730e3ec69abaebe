"""One PNG with four panels: enqueue, processing, latency and bytes per job, per peer row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from suite.report import PEER_LEVEL, Stats, rows

PANELS = (
    ("Enqueue (jobs/s, log)", (("enqueue_single", "single"), ("enqueue_bulk", "bulk")), True),
    (
        "Processing, 1 worker (jobs/s, log)",
        (("process_noop", "no-op"), ("process_redis", "Redis body")),
        True,
    ),
    ("Latency at 500 jobs/s (ms, log)", (("latency_p50", "p50"), ("latency_p99", "p99")), True),
    ("Redis bytes per queued job", (("memory", "bytes/job"),), False),
)


def draw(path: Path, info: dict[str, Any], stats: Stats, title: str) -> None:
    labels_keys = rows(info)
    labels = [p if len(info[p]["variants"]) == 1 else f"{p} ({v})" for p, v in labels_keys]
    fig, axes = plt.subplots(2, 2, figsize=(15, 4 + 0.55 * len(labels)))
    for ax, (panel, series, log) in zip(axes.flat, PANELS, strict=True):
        _panel(ax, panel, series, log, labels, labels_keys, stats)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel(
    ax: Any,
    panel: str,
    series: tuple[tuple[str, str], ...],
    log: bool,
    labels: list[str],
    keys: list[tuple[str, str]],
    stats: Stats,
) -> None:
    height = 0.8 / len(series)
    drawn: list[tuple[float, float, str]] = []  # (y, value, text); value 0 means no result
    for k, (metric, name) in enumerate(series):
        values = []
        for i, (peer, variant) in enumerate(keys):
            st = stats.get((peer, None if metric in PEER_LEVEL else variant, metric))
            v = st.median if st and st.median else 0.0
            values.append(v)
            text = f" {v:,.0f}" if v >= 10 else f" {v:.1f}"
            if not v:
                text = f" {name}: {st.errors[0] if st and st.errors else 'no result'}"
            drawn.append((i + k * height, v, text))
        ax.barh([i + k * height for i in range(len(keys))], values, height=height, label=name)
    found = [v for _, v, _ in drawn if v]
    top, low = max(found, default=1.0), min(found, default=1.0)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(low / 2, top * 4)
    else:
        ax.set_xlim(0, top * 1.15)
    left = ax.get_xlim()[0]
    for y, v, text in drawn:
        color = "black" if v else "dimgray"
        ax.text(v or left, y, text[:60], va="center", fontsize=7, color=color)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(panel, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(axis="x", alpha=0.3)
    for tick in ax.get_yticklabels():
        if tick.get_text().startswith("qrunner"):
            tick.set_fontweight("bold")
