"""One number per norm from a power table: each term's share of E[y^2] over the deepest taps, mean +- std over
seeds. The depth figures show the whole profile; this is the figure a report quotes (does LN collapse at depth,
does PN undo it), computed the same way for initialization, trained weights and each epoch's record."""

from collections import defaultdict

from .power import TERMS

SUMMARY_COLUMNS = ("norm", "tap", "seeds", "deepest", *(f"{t}_share_{s}" for t in TERMS for s in ("mean", "std")),
                   "power_mean", "power_std")


def mean_std(vals: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) over seeds; std 0 for one value."""
    n = len(vals)
    mean = sum(vals) / n
    return mean, ((sum((v - mean) ** 2 for v in vals) / (n - 1)) ** 0.5 if n > 1 else 0.0)


def deep_shares(rows: list[dict], deepest: int = 5) -> list[dict]:
    """rows: power rows (`norm`, `seed`, `depth`, `tap`, the terms, `power`), one model per (norm, seed).

    Per (norm, seed, tap): the mean over that tap's `deepest` last depths of each term's share of the power
    (a share is a ratio, so layers of different scales weigh the same); then mean and sample std (ddof=1) of
    those over seeds. A tap with fewer depths uses all of them."""
    if deepest < 1:
        raise ValueError(f"deepest must be >= 1, got {deepest}")
    per_model = defaultdict(dict)  # (norm, tap, seed) -> depth -> row
    for r in rows:
        per_model[(r["norm"], r["tap"], r["seed"])][int(r["depth"])] = r
    per_cell = defaultdict(lambda: defaultdict(list))  # (norm, tap) -> key -> per-seed values
    for (norm, tap, _), by_depth in per_model.items():
        chosen = [by_depth[d] for d in sorted(by_depth)[-deepest:]]
        for term in TERMS:
            shares = [float(r[term]) / float(r["power"]) if float(r["power"]) > 0 else 0.0 for r in chosen]
            per_cell[(norm, tap)][term].append(sum(shares) / len(shares))
        per_cell[(norm, tap)]["power"].append(sum(float(r["power"]) for r in chosen) / len(chosen))
    out = []
    for (norm, tap), vals in per_cell.items():
        row = {"norm": norm, "tap": tap, "seeds": len(vals["power"]), "deepest": deepest}
        for key in (*TERMS, "power"):
            mean, std = mean_std(vals[key])
            name = key if key == "power" else f"{key}_share"
            row[f"{name}_mean"], row[f"{name}_std"] = mean, std
        out.append(row)
    return out


def format_summary(summary: list[dict], order) -> str:
    """A plain-text table: shares in percent, mean +- std over seeds."""
    rank = {n: i for i, n in enumerate(order)}
    lines = [f"{'norm':<8}{'tap':<6}{'seeds':>6}  " + "".join(f"{t + ' %':>20}" for t in TERMS) + f"{'E[y^2]':>16}"]
    for r in sorted(summary, key=lambda r: (r["tap"] != "norm", rank.get(r["norm"], len(rank)), r["norm"])):
        cells = "".join(f"{100 * r[f'{t}_share_mean']:>12.1f} +- {100 * r[f'{t}_share_std']:<4.1f}" for t in TERMS)
        lines.append(f"{r['norm']:<8}{r['tap']:<6}{r['seeds']:>6}  {cells}"
                     f"{r['power_mean']:>9.3g} +- {r['power_std']:<4.2g}")
    return "\n".join(lines)
