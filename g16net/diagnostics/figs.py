"""Figures of the power terms: stacked terms vs depth (one column per norm, one row per tap) and stacked terms vs
epoch at chosen depths (one row per norm, one column per depth). Several seeds: the mean, with a +-1 std
(ddof=1) whisker on the top of each term's band."""

from collections import defaultdict
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from ..models import NORMS
from .power import TERMS
from .summary import mean_std

COLOURS = {"channel_mean": "tab:red", "instance_mean": "tab:blue", "within_instance": "0.75"}
LABELS = {"channel_mean": "channel mean  mean_c(mu_c^2)", "instance_mean": "instance mean  mean_c(var_n mu_nc)",
          "within_instance": "within instance  mean_nc(sigma2_nc)"}
TAP_LABELS = {"norm": "after the normalization (before the affine)", "act": "after the activation (PN included)"}
STYLE = {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3,
         "grid.linestyle": ":", "savefig.dpi": 150}


def _norm_order(norms) -> list[str]:
    known = [n for n in NORMS if n in norms]
    return known + sorted(set(norms) - set(known))


def _stack(ax, xs, series: dict[str, list[list[float]]], share: bool) -> float:
    """series: term -> per x, the values over seeds (power too, for shares). Stacked bands of the means; returns
    the highest point drawn (whiskers included)."""
    bottom, high = [0.0] * len(xs), 0.0
    for term in TERMS:
        per_x = series[term]
        if share:
            per_x = [[v / p if p > 0 else 0.0 for v, p in zip(vals, pw)] for vals, pw in zip(per_x, series["power"])]
        means, stds = zip(*(mean_std(v) for v in per_x))
        top = [b + m for b, m in zip(bottom, means)]
        ax.fill_between(xs, bottom, top, color=COLOURS[term], label=LABELS[term], linewidth=0, step=None)
        if any(stds):
            ax.errorbar(xs, top, yerr=stds, fmt="none", ecolor="0.15", elinewidth=0.6, capsize=1.5)
        bottom = top
        high = max(high, max(t + e for t, e in zip(top, stds)))
    ax.set_xlim(min(xs), max(xs) if len(xs) > 1 else min(xs) + 1)
    return high


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0])
    fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def depth_figure(rows: list[dict], out_dir, stem: str = "power", share: bool = False, title: str = "") -> list[Path]:
    """rows: `diagnose_model` rows with `norm` and `seed`. Stacked terms vs depth per norm (columns) and tap (rows)."""
    out_dir = Path(out_dir)
    cells = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))  # (norm, tap) -> depth -> key -> values
    for r in rows:
        cell = cells[(r["norm"], r["tap"])][int(r["depth"])]
        for key in (*TERMS, "power"):
            cell[key].append(float(r[key]))
    norms = _norm_order({n for n, _ in cells})
    taps = [t for t in ("norm", "act") if any(k[1] == t for k in cells)]
    seeds = len({(r["norm"], r["seed"]) for r in rows}) / max(1, len(norms))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(2.8 * len(norms) + 0.6, 2.4 * len(taps) + 1.4), layout="constrained")
        axes = fig.subplots(len(taps), len(norms), squeeze=False, sharex=True, sharey="row")
        for i, tap in enumerate(taps):
            high = 0.0
            for j, norm in enumerate(norms):
                ax = axes[i][j]
                by_depth = cells.get((norm, tap))
                if not by_depth:
                    ax.set_visible(False)
                    continue
                xs = sorted(by_depth)
                high = max(high, _stack(ax, xs, {k: [by_depth[d][k] for d in xs] for k in (*TERMS, "power")}, share))
                if i == 0:
                    ax.set_title(NORMS[norm].label if norm in NORMS else norm)
                if j == 0:
                    ax.set_ylabel(("share of E[y^2]" if share else "E[y^2]") + f"\n{TAP_LABELS[tap]}", fontsize=8)
                if i == len(taps) - 1:
                    ax.set_xlabel("depth (norm layer)")
            axes[i][0].set_ylim(0, 1.05 * high or 1)  # one scale per row (shared): every norm's panel in full
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
        spread = f"; mean of {seeds:g} seeds, whiskers +-1 std" if seeds > 1 else ""
        fig.suptitle(f"Power decomposition by depth{spread}" + (f"\n{title}" if title else ""))
        out_dir.mkdir(parents=True, exist_ok=True)
        return _save(fig, out_dir, stem)


def epoch_figure(rows: list[dict], out_dir, depths: list[int], tap: str = "act", phase: str = "train",
                 share: bool = False, stem: str = "power_epochs", title: str = "") -> list[Path]:
    """rows: per-epoch records (`epoch`, `phase`, `norm`, `seed`, ...). Stacked terms vs epoch per norm (rows) at
    each depth of `depths` (columns; negative: from the last norm layer)."""
    out_dir = Path(out_dir)
    rows = [r for r in rows if r["tap"] == tap and r["phase"] == phase]
    if not rows:
        raise ValueError(f"no per-epoch records with tap={tap!r} and phase={phase!r}")
    norms = _norm_order({r["norm"] for r in rows})
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.0 * len(depths) + 0.6, 2.3 * len(norms) + 1.4), layout="constrained")
        axes = fig.subplots(len(norms), len(depths), squeeze=False, sharex=True, sharey=True)
        high = 0.0
        for i, norm in enumerate(norms):
            mine = [r for r in rows if r["norm"] == norm]
            available = sorted({int(r["depth"]) for r in mine})
            for j, want in enumerate(depths):
                ax = axes[i][j]
                if not -len(available) <= want < len(available):
                    raise ValueError(f"depth {want} is outside the {len(available)} {tap} taps of {norm} "
                                     f"(allowed: 0..{len(available) - 1}, or negative from the last)")
                depth = available[want]
                by_epoch = defaultdict(lambda: defaultdict(list))
                for r in mine:
                    if int(r["depth"]) == depth:
                        for key in (*TERMS, "power"):
                            by_epoch[int(r["epoch"])][key].append(float(r[key]))
                xs = sorted(by_epoch)
                high = max(high, _stack(ax, xs, {k: [by_epoch[e][k] for e in xs] for k in (*TERMS, "power")}, share))
                layer = next(r["layer"] for r in mine if int(r["depth"]) == depth)
                ax.set_title(f"{NORMS[norm].label if norm in NORMS else norm}: depth {depth} ({layer})", fontsize=8)
                if j == 0:
                    ax.set_ylabel("share of E[y^2]" if share else "E[y^2]")
                if i == len(norms) - 1:
                    ax.set_xlabel(f"{phase} epoch (0 = before the first)")
        axes[0][0].set_ylim(0, 1.05 * high or 1)
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
        fig.suptitle(f"Power decomposition over training, {TAP_LABELS[tap]}" + (f"\n{title}" if title else ""))
        out_dir.mkdir(parents=True, exist_ok=True)
        return _save(fig, out_dir, stem)
