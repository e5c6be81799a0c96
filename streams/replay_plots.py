"""Plots of a replay: quality over time, recommendation latency, popularity of what
was recommended. ``.png`` writes one figure; ``.html`` a page with the figure inlined
and the report's figures as a table (matplotlib is needed for the figure: install
``streamrec[plot]``).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any


def figure_png(report: dict[str, Any], result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report["k"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for name, curve in result.get("_curves", {}).items():
        if curve:
            xs = [c["event"] for c in curve]
            ax.plot(xs, [c[f"hit_rate@{k}"] for c in curve], marker="o", ms=3,
                    label=f"{'streamrec' if name == 'ours' else name} HR@{k}")
            if name == "ours":
                ax.plot(xs, [c[f"mrr@{k}"] for c in curve], marker="s", ms=3, ls="--",
                        label=f"streamrec MRR@{k}")
    ax.set_title(f"quality over the stream ({report['format']})")
    ax.set_xlabel("event")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)

    ax = axes[1]
    lat = result.get("_latencies", [])
    if lat:
        ax.hist(lat, bins=60, range=(0, max(1e-3, sorted(lat)[int(0.995 * (len(lat) - 1))])))
    p = report.get("latency_ms", {})
    ax.set_title(f"latency per recommendation, ms (p50 {p.get('p50', '-')}, p99 {p.get('p99', '-')})")
    ax.set_xlabel("ms")

    ax = axes[2]
    pop = result.get("_popularity", {})
    for name, values in (("interactions per item", pop.get("interactions", [])),
                         ("recommended items' interactions", pop.get("recommended", []))):
        if values:
            ax.hist([math.log10(1 + v) for v in values], bins=40, alpha=0.6, density=True, label=name)
    ax.set_title("popularity (log10 1+count of interactions)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_plots(path: str, report: dict[str, Any], result: dict[str, Any]) -> None:
    """Write ``path`` (.png or .html)."""
    target = Path(path)
    if target.suffix.lower() == ".png":
        target.write_bytes(figure_png(report, result))
        return
    if target.suffix.lower() not in (".html", ".htm"):
        raise ValueError("--plot must end in .png or .html")
    try:
        img = f'<img alt="replay plots" src="data:image/png;base64,{base64.b64encode(figure_png(report, result)).decode()}">'
    except ImportError:
        img = "<p>(install matplotlib for the figures)</p>"
    from streams.replay import summary_table

    target.write_text(
        "<!doctype html><meta charset=utf-8><title>streamrec replay</title>"
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%}</style>"
        f"<h1>Replay of {html.escape(str(report['format']))}</h1>{img}"
        f"<pre>{html.escape(summary_table(report))}</pre>", encoding="utf-8")
