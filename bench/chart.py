"""The report's PNG chart: one panel per figure, alterego's value next to its baseline
as two bars, with the ratio (and which direction is better) under the panel's title.
Panels whose two values are orders of magnitude apart (an adapter switch vs a model
reload) use a log scale so both bars stay visible. Drawn with matplotlib's Agg backend:
no display needed."""

from __future__ import annotations

import textwrap
from pathlib import Path

COLUMNS = 4


def draw(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = list(report["figures"].items())
    rows = max(1, -(-len(figures) // COLUMNS))
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(4.2 * COLUMNS, 3.4 * rows + 0.9), squeeze=False)
    for ax in axes.flat[len(figures):]:
        ax.axis("off")
    for ax, (key, f) in zip(axes.flat, figures):
        values = [f["value"], f["baseline_value"]]
        bars = ax.bar([_wrap(f["label"], 16), _wrap(f["baseline_label"], 16)], values, color=["#3b7dd8", "#a0a0a0"])
        positive = [v for v in values if v > 0]
        if len(positive) == 2 and max(positive) / min(positive) > 50:
            ax.set_yscale("log")
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.4g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ratio = "n/a" if f["ratio"] is None else f"{f['ratio']:.3g}"
        ax.set_title(f"{_wrap(f['title'], 42)}\nratio {ratio} ({f['better']} is better)", fontsize=9)
        ax.set_ylabel(f["unit"], fontsize=8)
        ax.tick_params(labelsize=8)
        ax.margins(y=0.15)
    machine = report.get("machine", {})
    mode = "quick" if report.get("quick") else "full"
    fig.suptitle(f"alterego bench ({mode}) · {report.get('finished_at', '')} · {machine.get('cpu_count')} CPUs "
                 f"· {machine.get('cpu_model', '')} · {report.get('models', {}).get('chat', '')}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=False)) or text
