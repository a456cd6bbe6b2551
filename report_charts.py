"""Charts for the report: one function per chart, each writing ``<stem>.svg`` and ``<stem>.png``.

``python report_charts.py RESULTS... [--out DIR]`` draws them from files: benchmark results
(``benchmark.py run -o``, ``roofline.py --save-results``: throughput and speedup over train.py) and
trainers' ``--loss-log`` files (the loss curves side by side).

Sized for a README (8 x 5 inches at 100 dpi = 800 px wide) with matplotlib's Agg backend, so they
render on a machine without a display.
"""

from __future__ import annotations

import math
from pathlib import Path

from microgpt import UserError, cli, machine

# importers (roofline.py, benchmark.py report) say themselves what they leave out without charts
matplotlib = cli.import_or_exit("matplotlib", "pip install matplotlib (or pip install -e '.[dev]')",
                                "report_charts.py" if __name__ == "__main__" else None)
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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


def _label_roof(ax, y: float, text: str, x_min: float, x_max: float, diagonals: list[tuple[float, float]],
                points: list[tuple[float, float]] = ()) -> None:
    """Label the horizontal roof at height y at the first of right-above, right-below, left-above,
    left-below where no bandwidth line (y = bw x for x up to x_end) crosses the text and no marker in
    ``points`` hides it; failing those, the same sliding leftwards from the right end."""
    renderer = ax.figure.canvas.get_renderer()
    places = [(x, ha, va) for x, ha in ((x_max / 1.1, "right"), (x_min * 1.1, "left")) for va in ("bottom", "top")]
    places += [(x_max / 1.1 / 1.5 ** i, "right", va) for i in range(1, 12) for va in ("bottom", "top")]
    fallback = None                                       # uncrossed, hiding the fewest markers
    for x, ha, va in places:
        if not x_min < x <= x_max:
            continue
        label = ax.annotate(text, (x, y), xytext=(0, 2 if va == "bottom" else -2), textcoords="offset points",
                            ha=ha, va=va, fontsize=8.5)
        window = label.get_window_extent(renderer)
        box = window.transformed(ax.transData.inverted())
        crossed = any(box.x0 <= x_end and box.y0 < bw * min(box.x1, x_end) and bw * box.x0 < box.y1
                      for bw, x_end in diagonals)
        hidden = sum(window.x0 - 9 <= px <= window.x1 + 9 and window.y0 - 9 <= py <= window.y1 + 9
                     for px, py in ax.transData.transform(points)) if len(points) else 0
        label.remove()
        if not crossed and not hidden:
            break
        if not crossed and (fallback is None or hidden < fallback[0]):
            fallback = (hidden, x, ha, va)
    else:
        _, x, ha, va = fallback or (0, x_max / 1.1, "right", "bottom")
    ax.annotate(text, (x, y), xytext=(0, 2 if va == "bottom" else -2), textcoords="offset points", ha=ha, va=va,
                fontsize=8.5)


def roofline_chart(ceilings: dict, rows: list[dict], stem: str | Path, title: str | None = None,
                   roofs: list[tuple[str, float]] = ()) -> list[Path]:
    """Log-log roofline: measured fp64/fp32 compute peaks, L1/L2/L3/DRAM triad bandwidths, one marker per
    engine x config (``rows`` as from roofline.analyse: engine, config, intensity, achieved, threads; the
    colour follows "engine", the shape "config" -- roofline.py --ops --engine c passes phases as engines).
    ``roofs``: further (label, FLOP/s) compute roofs, e.g. one instruction set's peak, drawn dash-dotted."""
    threads = max(r["threads"] for r in rows)
    peaks = [("fp32 peak", machine.peak(ceilings, "f32", threads), "-"),
             ("fp64 peak", machine.peak(ceilings, "f64", threads), "-"),
             ("fp64 scalar (unvectorised)", machine.peak(ceilings, "f64", threads, isa="scalar"), "--")]
    peaks += [(label, flops, "-.") for label, flops in roofs if all(abs(flops / p - 1) > 0.02 for _, p, _ in peaks)]
    levels = machine.levels(ceilings, threads)
    top = peaks[0][1]

    ai = [r["intensity"] for r in rows]
    ridge = [top / bw for bw in levels.values()]
    # from well left of where the fastest level meets the fp64 roof, so every diagonal has room for its label
    x_min = 10 ** math.floor(math.log10(min(ai + [peaks[1][1] / max(levels.values())]) / 3))
    x_max = 10 ** math.ceil(math.log10(max(ai + ridge) * 1.5))
    y_min = 10 ** math.floor(math.log10(min(r["achieved"] for r in rows) / 3))
    y_max = 10 ** math.ceil(math.log10(top * 2))

    fig, ax = plt.subplots(figsize=(8, 6))
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
    # engines (colours) below the axes, where a dozen entries hide no marker; configs (shapes) in a corner
    engine_handles = [plt.Line2D([], [], ls="none", marker="o", ms=8, mec="black", mew=0.6,
                                 color=ENGINE_COLORS[i % len(ENGINE_COLORS)], label=name)
                      for i, name in enumerate(engines)]
    fig.legend(handles=engine_handles, loc="lower center", ncol=min(6, len(engines)), fontsize=9, frameon=False)
    if len(configs) > 1:
        ax.legend(handles=[plt.Line2D([], [], ls="none", marker=CONFIG_MARKERS[i % len(CONFIG_MARKERS)], ms=8,
                                      color="white", mec="black", label=name) for i, name in enumerate(configs)],
                  loc="lower right", fontsize=9, framealpha=0.95)
    legend_height = 0.02 + 0.04 * math.ceil(len(engines) / 6)

    cpu = ceilings["cpu"]
    cores = (f"{threads} cores (threads x ranks)" if any(r.get("ranks", 1) > 1 for r in rows)
             else f"{threads} thread{'s' * (threads > 1)}")
    ax.set_title(title or f"Roofline of one training step — {cpu['model']}, {cores} (measured ceilings)", fontsize=11)
    ax.set_xlabel("arithmetic intensity (FLOP / byte, program bytes)")
    ax.set_ylabel("FLOP/s")
    ax.grid(True, which="major", color="#dddddd", lw=0.6)
    fig.tight_layout(rect=(0, legend_height, 1, 1))
    # labels last: their place and angle on screen depend on the final layout
    diagonals = [(bw, top / bw) for bw in bws]
    for label, flops, _ in peaks:
        _label_roof(ax, flops, f"{label} {flops / 1e9:.0f} GFLOP/s", x_min, x_max, diagonals,
                    [(r["intensity"], r["achieved"]) for r in rows])
    for i, (name, bw) in enumerate(levels.items()):
        # on the side with more room before the neighbouring bandwidth line
        room_above = bws[i - 1] / bw if i else math.inf
        room_below = bw / bws[i + 1] if i + 1 < len(bws) else math.inf
        _label_line(ax, max(x_min, y_min / bw) * 1.3, bw, peaks[1][1] / bw, f"{name} {bw / 1e9:.0f} GB/s",
                    LEVEL_COLORS.get(name, "grey"), room_above >= room_below, [flops for _, flops, _ in peaks],
                    [(r["intensity"], r["achieved"]) for r in rows])
    return _save(fig, stem)


# --- communication on the roofline (roofline.py --comm) ------------------------------------------------

PROJECTION_WORLD_SIZES = (8, 64)        # the ring model's curves drawn beside the measured all-reduce


def comm_chart(record: dict, results: list[dict], stem: str | Path, batch_size: int, dtype: str) -> list[Path]:
    """Three panels. (a) the all-reduce: measured medians (quartile bars) against message size, the fitted
    alpha-beta line at the measured N, the ring model at more ranks (a projection, dashed), and the
    engines' gradient sizes. (b) per engine x config (``results`` as roofline.comm_main builds them), the
    step's compute and all-reduce time against N ranks; (c) scaling efficiency. Measured N: filled markers
    and solid lines; projected N: hollow markers and dashed lines, on a shaded band labelled projection."""
    from microgpt import comm

    fit, n_measured = record["fit"], record["world_size"]
    fig, (ax, ax_time, ax_eff) = plt.subplots(3, 1, figsize=(8, 12.5), gridspec_kw={"height_ratios": [4, 3.2, 2.6]})
    sizes, medians = record["sizes"], record["median_s"]
    lo = [t - q1 for t, (q1, _) in zip(medians, record["quartiles_s"])]
    hi = [q3 - t for t, (_, q3) in zip(medians, record["quartiles_s"])]
    ax.errorbar(sizes, medians, yerr=[lo, hi], ls="none", marker="o", ms=5, color="black", mfc="#4c72b0", mew=0.6,
                elinewidth=0.8, capsize=2, label=f"measured: {record['backend']}, {n_measured} processes, loopback "
                                                 f"(median, quartiles)")
    xs = [sizes[0] * 2 ** (i / 4) for i in range(int(4 * math.log2(sizes[-1] / sizes[0])) + 1)]
    ax.plot(xs, [comm.allreduce_seconds(fit, x, n_measured) for x in xs], color="#c44e52", lw=1.5,
            label=f"fit, N={n_measured}: alpha {fit['alpha_s'] * 1e6:.3g} us, "
                  f"1/beta {cli.si(1 / fit['beta_s_per_byte'], 'B/s') if fit['beta_s_per_byte'] else 'inf'}, "
                  f"rms residual {100 * fit['rms_residual']:.0f}%")
    for n, style in zip(PROJECTION_WORLD_SIZES, ("--", ":")):
        ax.plot(xs, [comm.allreduce_seconds(fit, x, n) for x in xs], color="#8172b2", lw=1.2, ls=style,
                label=f"projection, N={n} (ring model)")
    for i, (label, nbytes) in enumerate(dict.fromkeys((r["config"], r["grad_bytes"]) for r in results)):
        ax.axvline(nbytes, color="#55a868", lw=0.9, ls="-.")
        ax.annotate(f"{label} gradients ({dtype.replace('float', 'f')})", (nbytes, 0.97 - 0.07 * i),
                    xycoords=("data", "axes fraction"), xytext=(-3, 0), textcoords="offset points", rotation=90,
                    ha="right", va="top", fontsize=8, color="#2f6b3f")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: cli.binary_size(x).replace(".0 ", " ")))
    ax.set_xlabel("message (bytes)")
    ax.set_ylabel("one all-reduce (s)")
    ax.set_title(f"(a) all-reduce time vs message size ({record['device']}; torch {record['torch']})", fontsize=10)
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.13), framealpha=0.95)
    ax.grid(True, which="major", color="#dddddd", lw=0.6)

    world_sizes = [r["world_size"] for r in results[0]["rows"]]
    first_projected = min((r["world_size"] for r in results[0]["rows"] if r["projection"]), default=None)
    for a in (ax_time, ax_eff):
        a.set_xscale("log", base=2)
        a.set_xticks(world_sizes, [str(n) for n in world_sizes])
        a.set_xlim(world_sizes[0] / 1.3, world_sizes[-1] * 1.3)
        a.grid(True, which="major", color="#dddddd", lw=0.6)
        if first_projected:
            a.axvspan(first_projected / 1.4, world_sizes[-1] * 1.3, color="#f2f2f2", zorder=-2)
            a.text(first_projected / 1.3, 0.96, "projection from the fitted model", transform=a.get_xaxis_transform(),
                   fontsize=8, va="top", color="#555555")
    def curve(a, rows, key, scale, marker, color, projected, **style):
        """Measured rows solid with filled markers; projected ones dashed and hollow, from the last measured."""
        done = [r for r in rows if not r["projection"] and r[key] > 0]
        ahead = done[-1:] + [r for r in rows if r["projection"] and r[key] > 0]
        a.plot([r["world_size"] for r in done], [scale * r[key] for r in done], color=color, marker=marker, ms=6,
               mec="black", mew=0.5, **style)
        if len(ahead) > 1:
            a.plot([r["world_size"] for r in ahead], [scale * r[key] for r in ahead], color=color, marker=marker,
                   ms=6, mfc="white", mec=color, lw=1, ls=projected, markevery=list(range(len(done[-1:]), len(ahead))))

    for res in results:
        color, label = _engine_color(res["engine"]), f"{res['engine']} {res['config']}"
        curve(ax_time, res["rows"], "compute_s", 1e3, "o", color, ":", label=f"{label}: compute")
        curve(ax_eff, res["rows"], "efficiency", 100, "o", color, "--", label=f"{label} (compute + all-reduce)")
        measured = [r for r in res["rows"] if r.get("measured_step_s")]
        if measured:
            ax_eff.plot([r["world_size"] for r in measured], [100 * r["measured_efficiency"] for r in measured],
                        ls="none", marker="*", ms=13, color=color, mec="black", mew=0.6,
                        label=f"{label}: a whole data-parallel step under torchrun")
    # the all-reduce depends on the gradients' size only: one curve per size, whatever the engine
    for res in {r["grad_bytes"]: r for r in results}.values():
        curve(ax_time, res["rows"], "allreduce_s", 1e3, "s", LEVEL_COLORS["DRAM"], (0, (5, 3)), ls="--",
              label=f"all-reduce of {res['config']} gradients ({cli.binary_size(res['grad_bytes'])})")
    ax_time.set_yscale("log")
    ax_time.set_ylabel("per step (ms)")
    ax_time.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax_time.yaxis.set_major_formatter(plt.FuncFormatter(lambda y, _: f"{y:g}"))
    ax_time.yaxis.set_minor_formatter(plt.NullFormatter())
    ax_time.set_title(f"(b) batch {batch_size} over N ranks: compute of a rank's share (measured on 1 process) "
                      f"and the all-reduce", fontsize=10)
    ax_time.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.1), framealpha=0.95)
    ax_eff.set_ylim(0, 110)
    ax_eff.set_ylabel("scaling efficiency (%)")
    ax_eff.set_xlabel("ranks N (hollow markers, dashed lines: projection)")
    ax_eff.set_title("(c) scaling efficiency T(1) / (N T(N))", fontsize=10)
    ax_eff.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2), framealpha=0.95)
    fig.tight_layout()
    return _save(fig, stem)


# --- benchmark charts (benchmark.py report) ------------------------------------------------------------

VERDICT_COLORS = {"regression": "#d62728", "faster": "#2ca02c"}


def _engine_color(name: str) -> str:
    """The same colour for an engine in every chart: its position among the registered engines."""
    from engines import ENGINES
    names = list(ENGINES)
    index = names.index(name) if name in names else len(names) + sum(map(ord, name))
    return ENGINE_COLORS[index % len(ENGINE_COLORS)]


def _case_label(r: dict) -> str:
    dtype = {"float64": "f64", "float32": "f32"}.get(r["dtype"], r["dtype"])
    return (f"{cli.config_label(r['config'])} · batch {r['batch_size']} · {dtype} · "
            f"{r['threads']} thread{'s' * (r['threads'] > 1)}")


def _grouped_bars(groups: dict[str, list[tuple[str, float, str]]], xlabel: str, title: str, stem) -> list[Path]:
    """Horizontal log-scale bars, one block per group with its label above: (engine, value, text) each."""
    n_bars = sum(map(len, groups.values()))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.24 * n_bars + 0.42 * len(groups)))
    y, ticks, labels = 0.0, [], []
    values = [v for bars in groups.values() for _, v, _ in bars]
    for group, bars in groups.items():
        ax.text(0.0, y - 0.25, group, transform=ax.get_yaxis_transform(), ha="left", va="bottom", fontsize=9,
                fontweight="bold")
        y += 0.45
        for engine, value, text in bars:
            ax.barh(y, value, height=0.8, color=_engine_color(engine))
            ax.text(value * 1.06, y, text, va="center", fontsize=8)
            ticks.append(y)
            labels.append(engine)
            y += 1
        y += 0.6
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 3, max(values) * 12)
    ax.set_ylim(y - 0.4, -0.6)
    ax.set_yticks(ticks, labels, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="x", which="major", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return _save(fig, stem)


def _by_case(records: list[dict]) -> dict[str, list[dict]]:
    order = sorted(records, key=lambda r: (r["config"]["n_embd"], r["config"]["n_layer"], r["batch_size"],
                                           r["dtype"] != "float64", r["threads"]))
    groups: dict[str, list[dict]] = {}
    for r in order:
        groups.setdefault(_case_label(r), []).append(r)
    return groups


def throughput_chart(records: list[dict], stem: str | Path) -> list[Path]:
    """Training throughput (tokens/s, median wall time) of every engine, grouped by model, batch, dtype, threads."""
    groups = {label: [(r["engine"], r["tokens_per_s"], f"{cli.si(r['tokens_per_s'])} tok/s")
                      for r in sorted(rs, key=lambda r: -r["tokens_per_s"])] for label, rs in _by_case(records).items()}
    return _grouped_bars(groups, "training throughput, tokens/s (median wall time per step; log scale)",
                         "Throughput of one training step per engine", stem)


def speedup_chart(records: list[dict], stem: str | Path) -> list[Path]:
    """Each engine's speedup over train.py (engine python, float64, one thread) on the same model and batch
    size; nothing is drawn (and [] returned) when no record has such a reference."""
    def key(r):
        return tuple(sorted((k, v) for k, v in r["config"].items())), r["batch_size"]
    reference = {key(r): r for r in records if r["engine"] == "python" and r["dtype"] == "float64" and r["threads"] == 1}
    groups = {}
    for label, rs in _by_case(records).items():
        bars = [(r["engine"], reference[key(r)]["ms_per_step"] / r["ms_per_step"]) for r in rs
                if key(r) in reference and r["engine"] != "python"]
        if bars:
            groups[label] = [(e, s, f"{s:,.3g}x") for e, s in sorted(bars, key=lambda b: -b[1])]
    if not groups:
        return []
    return _grouped_bars(groups, "speedup over train.py (python engine, float64, 1 thread; log scale)",
                         "Speedup over the reference trainer", stem)


def distribution_chart(verdicts: list, stem: str | Path) -> list[Path]:
    """Every sample of a comparison relative to the base median, base (grey) above current (coloured by
    verdict) for each benchmark, with the effect floor shaded: what the rank test and the ratio saw."""
    rows = [v for v in verdicts if v.base_samples and v.cur_samples and v.base_ms]
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.42 * max(len(rows), 1)))
    jitter = [((i * 0.618) % 1 - 0.5) * 0.18 for i in range(1000)]
    all_x = []
    for y, v in enumerate(rows):
        color = VERDICT_COLORS.get(v.verdict, "#1f77b4")
        base = [x / v.base_ms for x in v.base_samples]
        cur = [x / v.base_ms for x in v.cur_samples]
        all_x += base + cur
        ax.scatter(base, [y - 0.17 + jitter[i % 1000] for i in range(len(base))], s=9, color="#999999", lw=0)
        ax.scatter(cur, [y + 0.17 + jitter[i % 1000] for i in range(len(cur))], s=9, color=color, lw=0)
        ax.plot([1, 1], [y - 0.35, y + 0.01], color="black", lw=1.5)
        ax.plot([v.ratio] * 2, [y - 0.01, y + 0.35], color=color, lw=1.5)
        ax.axhspan(y - 0.5, y + 0.5, color="#f6f6f6" if y % 2 else "white", zorder=-2)
        ax.fill_betweenx([y - 0.5, y + 0.5], 1 / (1 + v.threshold), 1 + v.threshold, color="#e4e4e4", zorder=-1, lw=0)
    lo = max(0.5, min(all_x, default=0.9) * 0.97)
    hi = min(2.0, max(all_x, default=1.1) * 1.03)
    ax.set_xlim(min(lo, 0.9), max(hi, 1.1))
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_yticks(range(len(rows)), [f"{v.id} [{v.metric}]" for v in rows], fontsize=8.5)
    for tick, v in zip(ax.get_yticklabels(), rows):
        tick.set_color(VERDICT_COLORS.get(v.verdict, "black"))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{(x - 1) * 100:+.0f}%"))
    ax.set_xlabel("time per step vs the base median (shaded: the effect floor)")
    ax.set_title("Every sample: base grey (upper), current below (red: regression, green: faster)", fontsize=10)
    ax.grid(True, axis="x", color="#dddddd", lw=0.6)
    fig.tight_layout()
    return _save(fig, stem)


def trend_chart(entries: list[dict], stem: str | Path) -> list[Path]:
    """Each benchmark's time per step over the baseline history, relative to its first appearance (thin
    lines), and each engine's geometric mean (thick): CPU time where recorded, else wall time."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ids = list(dict.fromkeys(i for e in entries for i in e["benchmarks"]))
    by_engine: dict[str, list[list[float]]] = {}
    for bench_id in ids:
        points = [(x, b.get("cpu_ms_per_step") or b.get("ms_per_step"), b.get("engine") or bench_id.split()[0])
                  for x, e in enumerate(entries) if (b := e["benchmarks"].get(bench_id))]
        points = [p for p in points if p[1]]
        if not points:
            continue
        first = points[0][1]
        xs, ys = [p[0] for p in points], [p[1] / first for p in points]
        engine = points[0][2]
        ax.plot(xs, ys, color=_engine_color(engine), lw=0.7, alpha=0.45)
        series = by_engine.setdefault(engine, [[] for _ in entries])
        for x, y in zip(xs, ys):
            series[x].append(y)
    for engine, series in by_engine.items():
        xs = [x for x, ys in enumerate(series) if ys]
        means = [math.exp(sum(map(math.log, series[x])) / len(series[x])) for x in xs]
        ax.plot(xs, means, color=_engine_color(engine), lw=2.2, marker="o", ms=4, label=engine)
    ax.axhline(1, color="black", lw=0.8)
    ratios = [y for line in ax.get_lines() for y in line.get_ydata()]
    if max(ratios) / min(ratios) > 3:        # log only when the range needs it: its ticks are sparse
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda y, _: f"{y:.2g}x"))
    labels = [f"{(e.get('created') or '?')[:10]}\n{(e.get('commit') or '?')[:7]}" for e in entries]
    step = max(1, len(entries) // 8)
    ax.set_xticks(range(0, len(entries), step), labels[::step], fontsize=8)
    ax.set_ylabel("time per step vs the first baseline")
    ax.set_title("Trend over the baseline history (thin: benchmarks, thick: engine geometric mean)", fontsize=10)
    ax.legend(fontsize=8, ncol=min(5, len(by_engine)), loc="best", framealpha=0.9)
    ax.grid(True, color="#dddddd", lw=0.6)
    fig.tight_layout()
    return _save(fig, stem)


def loss_chart(logs: list[dict], stem: str | Path) -> list[Path]:
    """Training loss of every engine from their --loss-log files (moving average, validation as dots) and,
    below, each engine's per-step distance from the first log's curve: the engines compute one model."""
    fig, (ax, ax_diff) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    reference = next((g for g in logs if g.get("engine") == "python"), logs[0])
    styles = ["-", "--", ":", "-."]
    for i, log in enumerate(logs):
        losses, start = log["train"], log.get("start_step", 0)
        window = max(1, len(losses) // 25)
        smooth = [sum(losses[max(0, j - window + 1):j + 1]) / len(losses[max(0, j - window + 1):j + 1])
                  for j in range(len(losses))]
        steps = range(start + 1, start + len(losses) + 1)
        color = _engine_color(log.get("engine", "?"))
        ax.plot(steps, smooth, color=color, lw=2.4 - 1.6 * i / max(1, len(logs) - 1), ls=styles[i % len(styles)],
                label=log.get("engine", f"log {i + 1}"))
        if log.get("val"):
            ax.plot([s for s, _ in log["val"]], [v for _, v in log["val"]], "o", color=color, ms=5, mec="black", mew=0.5)
        if log is not reference:
            worst, diffs = 0.0, []              # the largest distance so far: monotone, so it reads
            for a, b in zip(losses, reference["train"]):
                worst = max(worst, abs(a - b))
                diffs.append(max(worst, 1e-17))
            ax_diff.plot(steps[:len(diffs)], diffs, color=color, lw=1.4, ls=styles[i % len(styles)])
    ax.set_ylabel("training loss (moving average)")
    ax.set_title("Loss curves of the engines side by side (dots: validation)", fontsize=11)
    ax.legend(fontsize=8, ncol=min(4, len(logs)), framealpha=0.9)
    ax.grid(True, color="#dddddd", lw=0.6)
    ax_diff.set_yscale("log")
    ax_diff.set_ylabel(f"max |loss - {reference.get('engine', 'first')}|\nso far (1e-17: equal)")
    ax_diff.set_xlabel("step")
    ax_diff.grid(True, color="#dddddd", lw=0.6)
    fig.tight_layout()
    return _save(fig, stem)


# ----------------------------------------------------------------------------------------------------
# main

#: What a timing record needs for the throughput and speedup charts.
RECORD_KEYS = ("engine", "config", "batch_size", "dtype", "threads", "tokens_per_s", "ms_per_step")


def read_chart_inputs(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """(timing records, loss logs) from the files, each told apart by its keys; one-line errors otherwise."""
    records, logs = [], []
    for path in paths:
        doc = cli.read_json(path, "chart input")
        if isinstance(doc, dict) and isinstance(doc.get("train"), list):
            logs.append(doc)
        elif isinstance(doc, dict) and isinstance(doc.get("results"), list):
            for i, r in enumerate(doc["results"]):
                missing = [k for k in RECORD_KEYS if not isinstance(r, dict) or k not in r]
                if missing:
                    raise UserError(f"{path}: result {i} has no {', '.join(missing)}")
                records.append(r)
        else:
            raise UserError(f"{path} is neither timing results (a 'results' list) nor a trainer's --loss-log "
                            f"(a 'train' list)")
    return records, logs


def run(argv: list[str] | None) -> int:
    p = cli.OneLineErrorParser(description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("files", nargs="+", metavar="JSON", help="results or --loss-log files")
    p.add_argument("--out", default="out/charts", help="directory for the charts (default out/charts)")
    args = p.parse_args(argv)
    records, logs = read_chart_inputs(args.files)
    out, written = Path(args.out), []
    if records:
        written += throughput_chart(records, out / "throughput") + speedup_chart(records, out / "speedup")
    if logs:
        written += loss_chart(logs, out / "losses")
    if not written:
        raise UserError("nothing to draw: the results hold no records")
    print(f"charts: {', '.join(map(str, written))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
