"""Paper-style Pareto plots (top-1 vs cost) from a results CSV written by ``g16net.collect``.

    python -m g16net.figs results.csv --out figs/ [--paper-overlay] [--pick headline|best]
    python -m g16net.figs --paper-only --out paper_figs/reference

Colour encodes (group size, norm), line style and marker the training-resolution schedule
(Half: solid/square, Native: dashed/circle, Baseline = not finetuned: dotted/triangle).
Filled markers joined by a line are each series' Pareto front; hollow markers are dominated.
Runs that differ only in seed are one configuration (``g16net.studies.results.aggregate``, as in results_mean.csv): its
point is the mean, with ±1 sample std (ddof=1) error bars and each seed drawn faintly; fronts use the means.
A configuration with one seed draws as a plain point.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from .results import (
    NORM_LABELS,
    SCHEDULE_LABELS,
    aggregate,
    assign_series,
    config_key,
    group_by,
    load_paper_points,
    load_results,
    mean_std,
    norm_label,
    pareto_front,
)

STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
         "grid.linestyle": ":", "axes.grid.which": "both", "savefig.dpi": 150}
# Fixed colours so a series looks the same in our plots and the paper's; not-finetuned twins get their own.
COLOURS = {(1, "gn", "baseline"): "tab:gray", (1, "gn"): "tab:blue", (16, "gn"): "tab:green",
           (16, "ln_pn"): "tab:red", (16, "bn"): "tab:purple", (1, "bn"): "tab:brown", (16, "ln"): "tab:orange",
           (16, "gn_pn"): "tab:olive", (16, "evos0"): "tab:cyan", (1, "ln_pn"): "tab:pink"}
SPARE_COLOURS = ["gold", "navy", "teal", "maroon", "lime", "indigo", "coral"]
SCHEDULE_STYLE = {"half": ("-", "s"), "native": ("--", "o"), "baseline": (":", "v")}
# Size labels: Half fronts sit above Native ones, so label Half above and Native below the curve, on the
# side away from the line (curves rise on cost axes and fall on throughput axes: x is mirrored there).
LABEL_OFFSET = {"half": ((-4, 3), "right", "bottom"), "native": ((4, -3), "left", "top")}
MIRROR_HA = {"left": "right", "right": "left"}
HALO = [patheffects.withStroke(linewidth=2.5, foreground="white")]
PAPER_ORDER = ["G1-GN-Baseline", "G1-GN-Native", "G16-GN-Native", "G16-GN-Half", "G16-LN+PN-Native",
               "G16-LN+PN-Half"]
PAPER_SOURCE = "paper (ImageNet, arXiv 2106.03640)"

# name -> (CSV column, x-axis label, higher x is better, title)
AXES = {
    "macs": ("train_macs", "Forward {unit} per image at training resolution", False,
             "Top-1 vs training MACs"),
    "params": ("params", "Parameters (M)", False, "Top-1 vs parameters"),
    "train_throughput": ("train_throughput", "Training throughput (img/s, fwd+bwd+step)", True,
                         "Top-1 vs training throughput"),
    "infer_throughput": ("infer_throughput", "Inference throughput at test resolution (img/s)", True,
                         "Top-1 vs inference throughput"),
}
PAPER_AXES = {
    "macs": ("train_gmacs", "Forward GMACs per image at training resolution", False,
             "Paper: top-1 vs training GMACs"),
    "train_throughput": ("train_throughput", "Training throughput on IPU-POD16 (img/s)", True,
                         "Paper: top-1 vs training throughput"),
}


def pick_rows(rows: list[dict], pick: str = "headline") -> list[dict]:
    """One row per configuration (``aggregate``'s rows): the headline test resolution (else native, else the
    best), or the best (mean) top-1."""
    if pick not in ("headline", "best"):
        raise ValueError(f"pick must be 'headline' or 'best', got {pick!r}")
    chosen = []
    for run_rows in group_by(rows, lambda r: config_key(r)[:-1]).values():  # all but the test resolution
        best = max(run_rows, key=lambda r: r["top1"])
        if pick == "headline":
            headline = [r for r in run_rows if r["headline"]]
            native = [r for r in run_rows if r["native_resolution"] is not None
                      and r["test_resolution"] == r["native_resolution"]]
            best = (headline or native or [best])[0]
        chosen.append(best)
    return chosen


def _order(label: str) -> tuple:
    return (PAPER_ORDER.index(label) if label in PAPER_ORDER else len(PAPER_ORDER), label)


class _Styler:
    """Hands out consistent (colour, line style, marker) per series."""

    def __init__(self):
        self.colours = dict(COLOURS)
        self.spare = iter(SPARE_COLOURS * 4)

    def __call__(self, r: dict) -> dict:
        label = r["series"] or ""
        kind = "baseline" if label.endswith(("-Baseline", "-NoFT")) else r["schedule"]
        key = (r["group_size"], r["norm"]) + (("baseline",) if kind == "baseline" else ())
        if key not in self.colours:
            self.colours[key] = next(self.spare)
        ls, marker = SCHEDULE_STYLE.get(kind, ("-.", "D"))
        offset, ha, va = LABEL_OFFSET["half" if kind == "half" else "native"]
        return {"color": self.colours[key], "ls": ls, "marker": marker, "offset": offset, "ha": ha, "va": va}


def _draw_fronts(ax, rows: list[dict], xcol: str, scale: float, higher_x_better: bool, styler) -> None:
    """Every point hollow, the per-series Pareto front filled and joined, each point labelled by size."""
    rows = [r for r in rows if r.get(xcol) is not None]
    series = group_by(rows, lambda r: r["series"])
    for label in sorted(series, key=_order):
        pts = series[label]
        st = styler(pts[0])
        xy = [(r[xcol] / scale, r["top1"]) for r in pts]
        front = pareto_front(xy, higher_x_better)
        ax.scatter([x for x, _ in xy], [y for _, y in xy], marker=st["marker"], s=36, facecolors="none",
                   edgecolors=st["color"], linewidths=1.2, zorder=3)
        _draw_spread(ax, pts, xcol, scale, st)
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], ls=st["ls"], marker=st["marker"],
                color=st["color"], ms=6, lw=1.6, label=label, zorder=4)
        for (x, y), r in zip(xy, pts, strict=True):
            (dx, dy), ha = st["offset"], st["ha"]
            if higher_x_better:
                dx, ha = -dx, MIRROR_HA[ha]
            ax.annotate(r["size"], (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=st["va"],
                        fontsize=8, color=st["color"], path_effects=HALO, zorder=5)
    _log_x(ax, [r[xcol] / scale for r in rows])
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.margins(x=0.08, y=0.08)


def _draw_spread(ax, pts: list[dict], xcol: str, scale: float, st: dict) -> None:
    """Seeds of each mean point: faint single runs and ±1 std bars (x too where x is measured, e.g. img/s)."""
    multi = [r for r in pts if r.get("n", 1) > 1]
    if not multi:
        return
    seeds = [(s[xcol] / scale, s["top1"]) for r in multi for s in r["runs"] if s.get(xcol) is not None]
    ax.scatter([x for x, _ in seeds], [y for _, y in seeds], marker=st["marker"], s=10, color=st["color"],
               alpha=0.3, linewidths=0, zorder=2)
    std = lambda r, col: r.get(f"{col}_std") or 0.0
    ax.errorbar([r[xcol] / scale for r in multi], [r["top1"] for r in multi],
                yerr=[std(r, "top1") for r in multi], xerr=[std(r, xcol) / scale for r in multi], fmt="none",
                ecolor=st["color"], elinewidth=0.9, capsize=2, alpha=0.7, zorder=3)


def _log_x(ax, xs: list[float]) -> None:
    """Log x labelled with plain numbers (0.5, 2, 20k) rather than 10^k.

    Under a decade of data a log locator leaves one or two ticks, so evenly spaced round ticks are used.
    """
    ax.set_xscale("log")
    fmt = FuncFormatter(lambda v, _pos: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")
    ax.xaxis.set_major_formatter(fmt)
    if xs and max(xs) / min(xs) < 8:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, p: fmt(v, p) if round(v / 10 ** math.floor(math.log10(v) + 1e-9)) in (2, 3, 5) else ""))


def _macs_unit(rows: list[dict]) -> tuple[float, str]:
    top = max((r["train_macs"] for r in rows if r.get("train_macs")), default=0)
    return (1e9, "GMACs") if top >= 1e9 else (1e6, "MMACs")


def _x_spec(name: str, rows: list[dict]) -> tuple[str, float, str, bool, str]:
    col, xlabel, higher, title = AXES[name]
    if name == "macs":
        scale, unit = _macs_unit(rows)
        return col, scale, xlabel.format(unit=unit), higher, title
    return col, (1e6 if name == "params" else 1.0), xlabel, higher, title


def _context(rows: list[dict], pick: str) -> str:
    def uniq(col):
        return ", ".join(sorted({str(r[col]) for r in rows if r.get(col) is not None})) or "?"
    which = "best test resolution" if pick == "best" else "headline test resolution"
    ns = sorted({r.get("n", 1) for r in rows})
    seeds = "" if ns == [1] else f", mean of {ns[0]}-{ns[-1]} seeds" if len(ns) > 1 else f", mean of {ns[0]} seeds"
    return f"ours: dataset {uniq('dataset')}, device {uniq('device')},\ntop-1 at {which}{seeds}"


LEGEND_TITLE = "filled + line: Pareto front\nhollow: dominated"
SEEDS_LEGEND = "\nbars: ±1 std over seeds\n(sample, ddof=1)\nsmall faint: single seeds"


def _legend_title(rows: list[dict] | None = None) -> str:
    return LEGEND_TITLE + (SEEDS_LEGEND if rows and any(r.get("n", 1) > 1 for r in rows) else "")


def _legend_outside(ax, title: str = LEGEND_TITLE) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False, title=title,
              title_fontsize=8, alignment="left")


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0])
    # No creation date: regenerated reference PDFs then only differ when the plot does.
    fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def _paper_panel(ax, points: list[dict], name: str, styler) -> None:
    col, xlabel, higher, title = PAPER_AXES[name]
    _draw_fronts(ax, points, col, 1.0, higher, styler)
    ax.set_xlabel(xlabel)
    ax.set_title(title)


def paper_figures(out_dir, points: list[dict] | None = None) -> list[Path]:
    """Only the paper's own points: top-1 vs train GMACs and vs IPU-POD16 training throughput."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = points if points is not None else load_paper_points()
    styler, paths = _Styler(), []
    with matplotlib.rc_context(STYLE):
        for name in PAPER_AXES:
            fig = Figure(figsize=(7.5, 5), layout="constrained")
            ax = fig.add_subplot()
            _paper_panel(ax, points, name, styler)
            _legend_outside(ax)
            paths += _save(fig, out_dir, f"paper_pareto_{name}")
        fig = Figure(figsize=(13, 5), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, name in zip(axes, PAPER_AXES, strict=True):
            _paper_panel(ax, points, name, styler)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=6, frameon=False,
                   title=LEGEND_TITLE.replace("\n", ", "), title_fontsize=8)
        fig.suptitle("Making EfficientNet More Efficient: ImageNet top-1 "
                     "(points read off the paper's figure)")
        paths += _save(fig, out_dir, "paper_pareto")
    return paths


def _pareto_figures(rows, out_dir, paper_points, pick, styler) -> list[Path]:
    paths, context = [], _context(rows, pick)
    for name in AXES:
        col, scale, xlabel, higher, title = _x_spec(name, rows)
        overlay = paper_points is not None and name in PAPER_AXES
        fig = Figure(figsize=(13, 5) if overlay else (7.5, 5), layout="constrained")
        axes = fig.subplots(1, 2) if overlay else [fig.add_subplot()]
        _draw_fronts(axes[0], rows, col, scale, higher, styler)
        axes[0].set(xlabel=xlabel, title=f"{title}\n{context}")
        if overlay:  # the paper's ImageNet/IPU scales differ from ours, so it gets its own axes
            _paper_panel(axes[1], paper_points, name, styler)
            axes[1].set_title(f"{PAPER_AXES[name][3]}\n{PAPER_SOURCE}")
        _legend_outside(axes[0], _legend_title(rows))
        for ax in axes[1:]:
            _legend_outside(ax)
        paths += _save(fig, out_dir, f"pareto_{name}")

    fig = Figure(figsize=(12, 9.5), layout="constrained")
    for ax, name in zip(fig.subplots(2, 2).flat, AXES, strict=True):
        col, scale, xlabel, higher, title = _x_spec(name, rows)
        _draw_fronts(ax, rows, col, scale, higher, styler)
        ax.set(xlabel=xlabel, title=title)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False,
               title=_legend_title(rows).replace("\n(", " (").replace("\n", ", "), title_fontsize=8)
    fig.suptitle(context)
    paths += _save(fig, out_dir, "pareto")
    return paths


def norm_groups(rows: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """Groups of configurations that differ only by norm: key -> {norm: [rows]}; only groups with >= 2 norms."""
    key = lambda r: (r["size"], r["group_size"], r["expand_ratio"], r["schedule"], r["finetuned"])
    groups = {}
    for k, members in group_by(rows, key).items():
        by_norm = group_by(members, lambda r: r["norm"])
        if len(by_norm) >= 2:
            groups[k] = by_norm
    return dict(sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))))


def _ablation_figure(groups, out_dir, context) -> list[Path]:
    rank = {n: i for i, n in enumerate(NORM_LABELS)}  # known norms in a fixed order, unknown ones after
    norms = sorted({n for g in groups.values() for n in g}, key=lambda n: (rank.get(n, len(rank)), n))
    multi_er = len({k[2] for k in groups}) > 1
    names = [f"{s} G{g}{f' e{e}' if multi_er else ''} {SCHEDULE_LABELS.get(sch, sch)}"
             f"{'' if ft is not False else ' noFT'}"
             for s, g, e, sch, ft in groups]
    panels = [("top1", "Top-1 accuracy (%)", "{:.1f}"),
              ("train_throughput", "Training throughput (img/s)", "{:.0f}"),
              ("infer_throughput", "Inference throughput (img/s)", "{:.0f}")]
    # A study that recorded no throughput (throughput.enabled=false) draws the accuracy panel alone, not empty axes.
    runs = [s for g in groups.values() for aggs in g.values() for a in aggs for s in a.get("runs", [a])]
    panels = [p for p in panels if p[0] == "top1" or any(s.get(p[0]) is not None for s in runs)]
    full = max(12, 3 * len(groups) + 6)  # three panels; fewer keep room for the two-line title
    fig = Figure(figsize=(full if len(panels) == 3 else max(12.5, full * len(panels) / 3), 4.8), layout="constrained")
    width = 0.8 / len(norms)
    upright = len(norms) * len(groups) > 8  # narrow bars: vertical value labels so neighbours don't collide
    for ax, (col, ylabel, fmt) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for j, norm in enumerate(norms):
            bars = []  # (x, mean, std, single-run values)
            for i, g in enumerate(groups.values()):
                # every seed of every configuration in this cell (one configuration unless the group pools more)
                vals = [s[col] for a in g.get(norm, []) for s in a.get("runs", [a]) if s.get(col) is not None]
                if vals:
                    bars.append((i + (j - (len(norms) - 1) / 2) * width, *mean_std(vals), vals))
            xs, ys = [b[0] for b in bars], [b[1] for b in bars]
            errs = [b[2] or 0.0 for b in bars]
            ax.bar(xs, ys, width * 0.9, label=norm_label(norm), color=f"C{j}", yerr=errs if any(errs) else None,
                   error_kw=dict(elinewidth=1, capsize=3, ecolor="0.2"))
            for x, y, std, vals in bars:
                if len(vals) > 1:
                    # beside the whisker, not on it, so single seeds stay visible
                    ax.scatter([x + width * 0.22] * len(vals), vals, s=14, color="0.1", edgecolors="white",
                               linewidths=0.5, alpha=0.8, zorder=3)
                note = "" if len(vals) == 1 else f" (n={len(vals)})" if upright else f"\n(n={len(vals)})"
                ax.annotate(fmt.format(y) + note, (x, max([y + (std or 0.0)] + vals)), xytext=(0, 4),
                            textcoords="offset points", ha="center", va="bottom", fontsize=7,
                            rotation=90 if upright else 0)
        ax.set_xticks(range(len(names)), names)
        ax.set(ylabel=ylabel, title=ylabel.split(" (")[0] + " per norm")
        ax.grid(False, axis="x")
        ax.margins(y=0.25)
        if col == "top1":
            tops = [s["top1"] for s in runs]
            lo, hi = min(tops), max(tops)
            bottom = max(0.0, lo - 10)  # differences between norms are small next to 100%, so zoom in
            ax.set_ylim(bottom, hi + 0.25 * (hi - bottom))
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside right center", frameon=False,
               title="norm")
    spread = ("; bar = mean, whisker = ±1 std over seeds (sample, ddof=1), dots = single seeds"
              if any(a.get("n", 1) > 1 for g in groups.values() for aggs in g.values() for a in aggs) else "")
    fig.suptitle(f"Normalisation ablation: runs differing only by norm{spread}\n{context}")
    return _save(fig, out_dir, "norm_ablation")


def make_figures(csv_path, out_dir, paper_overlay: bool = False, pick: str = "headline") -> list[Path]:
    """All figures for a results CSV; returns the files written (PNG and PDF of each)."""
    out_dir = Path(out_dir)
    rows = load_results(csv_path)
    if not all(r["series"] for r in rows):  # hand-made or merged CSVs may leave it blank
        assign_series(rows)
    rows = pick_rows(aggregate(rows), pick)  # the same aggregation as collect's results_mean.csv
    if not rows:
        raise ValueError(f"{csv_path}: no result rows to plot")
    out_dir.mkdir(parents=True, exist_ok=True)
    paper_points = load_paper_points() if paper_overlay else None
    styler = _Styler()
    with matplotlib.rc_context(STYLE):
        paths = _pareto_figures(rows, out_dir, paper_points, pick, styler)
        groups = norm_groups(rows)
        pooled = [k for k, g in groups.items() if any(len(aggs) > 1 for aggs in g.values())]
        if pooled:
            print(f"note: norm_ablation pools configurations that differ in more than norm and seed for {pooled} "
                  "(compare config_id in the results CSV)")
        if groups:
            paths += _ablation_figure(groups, out_dir, _context(rows, pick))
        else:
            print("note: no runs differ only by norm (same size, group size, expand ratio, schedule, "
                  "finetuned); norm_ablation figure skipped")
    return paths
