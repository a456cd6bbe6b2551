"""Charts for the report: one function per chart, each writing ``<stem>.svg`` and ``<stem>.png``.

Sized for a README (8 x 5 inches at 100 dpi = 800 px wide) with matplotlib's Agg backend, so they
render on a machine without a display.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from microgpt import machine

ENGINE_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                 "#7f7f7f", "#000000", "#aec7e8"]
CONFIG_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LEVEL_COLORS = {"L1": "#4c72b0", "L2": "#55a868", "L3": "#c44e52", "DRAM": "#8172b2"}


def _save(fig, stem: str | Path) -> list[Path]:
    """Both formats, written through a temporary name so a reader never sees half a file."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in (".svg", ".png"):
        path = stem.with_suffix(suffix)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=suffix[1:], dpi=100)
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths


def _label_line(ax, x: float, slope: float, x_stop: float, text: str, color: str, above: bool,
                avoid: list[float], points: list[tuple[float, float]]) -> None:
    """Label the line y = slope * x just above (preferred if ``above``) or below it, rotated to follow it
    as drawn on screen: slide right from ``x`` (up to ``x_stop``) to the first place where no horizontal
    line at a height in ``avoid`` crosses the text and no marker in ``points`` hides it."""
    renderer = ax.figure.canvas.get_renderer()

    def place(x: float, above: bool):
        (x0, y0), (x1, y1) = ax.transData.transform([(x, slope * x), (10 * x, 10 * slope * x)])
        return ax.annotate(text, (x, slope * x), xytext=(0, 3 if above else -3), textcoords="offset points",
                           color=color, fontsize=8.5, rotation=math.degrees(math.atan2(y1 - y0, x1 - x0)),
                           rotation_mode="anchor", ha="left", va="bottom" if above else "top")

    for side in (above, not above):
        at = x
        while at <= x_stop:
            label = place(at, side)
            box = label.get_window_extent(renderer)
            crossed = any(box.y0 - 2 <= ax.transData.transform((at, y))[1] <= box.y1 + 2 for y in avoid)
            hidden = any(box.x0 - 6 <= px <= box.x1 + 6 and box.y0 - 6 <= py <= box.y1 + 6
                         for px, py in ax.transData.transform(points))
            if not (crossed or hidden):
                return
            label.remove()
            at *= 1.2
    place(x, above)                                       # nowhere is clear: the first choice


def _label_roof(ax, y: float, text: str, x_min: float, x_max: float, diagonals: list[tuple[float, float]]) -> None:
    """Label the horizontal roof at height y at the first of right-above, right-below, left-above,
    left-below where no bandwidth line (y = bw x for x up to x_end) crosses the text."""
    renderer = ax.figure.canvas.get_renderer()
    for x, ha in ((x_max / 1.1, "right"), (x_min * 1.1, "left")):
        for va in ("bottom", "top"):
            label = ax.annotate(text, (x, y), xytext=(0, 2 if va == "bottom" else -2), textcoords="offset points",
                                ha=ha, va=va, fontsize=8.5)
            box = label.get_window_extent(renderer).transformed(ax.transData.inverted())
            if not any(box.x0 <= x_end and box.y0 < bw * min(box.x1, x_end) and bw * box.x0 < box.y1
                       for bw, x_end in diagonals):
                return
            label.remove()
    ax.annotate(text, (x_max / 1.1, y), xytext=(0, 2), textcoords="offset points", ha="right", va="bottom",
                fontsize=8.5)


def roofline_chart(ceilings: dict, rows: list[dict], stem: str | Path) -> list[Path]:
    """Log-log roofline: measured fp64/fp32 compute peaks, L1/L2/L3/DRAM triad bandwidths, one marker per
    engine x config (``rows`` as from roofline.analyse: engine, config, intensity, achieved, threads)."""
    threads = max(r["threads"] for r in rows)
    peaks = [("fp32 peak", machine.peak(ceilings, "f32", threads), "-"),
             ("fp64 peak", machine.peak(ceilings, "f64", threads), "-"),
             ("fp64 scalar (unvectorised)", machine.peak(ceilings, "f64", threads, isa="scalar"), "--")]
    levels = machine.levels(ceilings, threads)
    top = peaks[0][1]

    ai = [r["intensity"] for r in rows]
    ridge = [top / bw for bw in levels.values()]
    # from well left of where the fastest level meets the fp64 roof, so every diagonal has room for its label
    x_min = 10 ** math.floor(math.log10(min(ai + [peaks[1][1] / max(levels.values())]) / 3))
    x_max = 10 ** math.ceil(math.log10(max(ai + ridge) * 1.5))
    y_min = 10 ** math.floor(math.log10(min(r["achieved"] for r in rows) / 3))
    y_max = 10 ** math.ceil(math.log10(top * 2))

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(y_min, y_max)
    for _, flops, style in peaks:
        ax.axhline(flops, color="black", lw=1.2, ls=style)
    bws = list(levels.values())
    for name, bw in levels.items():
        ax.plot([x_min, top / bw], [bw * x_min, top], color=LEVEL_COLORS.get(name, "grey"), lw=1.2)

    engines = list(dict.fromkeys(r["engine"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    for r in rows:
        ax.plot(r["intensity"], r["achieved"], ls="none", ms=8, mec="black", mew=0.6,
                marker=CONFIG_MARKERS[configs.index(r["config"]) % len(CONFIG_MARKERS)],
                color=ENGINE_COLORS[engines.index(r["engine"]) % len(ENGINE_COLORS)])
    handles = [plt.Line2D([], [], ls="none", marker="o", ms=8, mec="black", mew=0.6,
                          color=ENGINE_COLORS[i % len(ENGINE_COLORS)], label=name) for i, name in enumerate(engines)]
    if len(configs) > 1:
        # engines in the first column, configs (marker shapes) in the second: pad both to one length
        blank = plt.Line2D([], [], ls="none", label=" ")
        n_rows = max(len(engines), len(configs))
        handles += [blank] * (n_rows - len(engines))
        handles += [plt.Line2D([], [], ls="none", marker=CONFIG_MARKERS[i % len(CONFIG_MARKERS)], ms=8, color="white",
                               mec="black", label=name) for i, name in enumerate(configs)]
        handles += [blank] * (n_rows - len(configs))
    ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.95, ncol=1 if len(configs) == 1 else 2)

    cpu = ceilings["cpu"]
    ax.set_title(f"Roofline of one training step — {cpu['model']}, {threads} thread{'s' * (threads > 1)} "
                 f"(measured ceilings)", fontsize=11)
    ax.set_xlabel("arithmetic intensity (FLOP / byte, program bytes)")
    ax.set_ylabel("FLOP/s")
    ax.grid(True, which="major", color="#dddddd", lw=0.6)
    fig.tight_layout()
    # labels last: their place and angle on screen depend on the final layout
    diagonals = [(bw, top / bw) for bw in bws]
    for label, flops, _ in peaks:
        _label_roof(ax, flops, f"{label} {flops / 1e9:.0f} GFLOP/s", x_min, x_max, diagonals)
    for i, (name, bw) in enumerate(levels.items()):
        # on the side with more room before the neighbouring bandwidth line
        room_above = bws[i - 1] / bw if i else math.inf
        room_below = bw / bws[i + 1] if i + 1 < len(bws) else math.inf
        _label_line(ax, max(x_min, y_min / bw) * 1.3, bw, peaks[1][1] / bw, f"{name} {bw / 1e9:.0f} GB/s",
                    LEVEL_COLORS.get(name, "grey"), room_above >= room_below, [flops for _, flops, _ in peaks],
                    [(r["intensity"], r["achieved"]) for r in rows])
    return _save(fig, stem)
