"""The GPU check's two target ratios, from `python -m g16net.bench` CSVs, as a markdown table (summary.md).

  python scripts/gpu_summary.py --peer bench_timm_eager.csv --g16 bench_g16_eager.csv --pn-impls fused,triton \
      --out summary.md

bench divides by a peer at the SAME resolution; the targets compare across resolutions, so they are computed here:
  speed: G16-B0 LN+PN train img/s at its resolution (160 px) / timm efficientnet_b0 train img/s at 224 px, goal >= 1.3
  price: G16-B0 LN+PN / G16-B0 plain LN, both at 160 px, goal >= 0.95
per Proxy Norm implementation, layout and compile setting, matching mode, precision, layout and compile exactly.
`--peer` CSVs hold the timm model's rows (the denominator of speed), `--g16` CSVs our LN and LN+PN rows; rows from
different CSVs were measured in different processes, so a ratio across them is not drift-paired as bench's are.
Inference rows are listed without goals. Exit status 1 when no training row yields either ratio (a step failed).
"""

import argparse
import csv
import re
import sys
from pathlib import Path

GOALS = {"speed": 1.3, "price": 0.95}


def read_rows(paths, notes):
    rows = []
    for p in paths:
        if not Path(p).is_file():
            notes.append(f"missing: {p} (its bench step failed or did not run)")
            continue
        with open(p, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def impl_of(label: str, impls: list[str]) -> str:
    """bench labels a Proxy Norm row "name [impl]" when it measured several impls, else "name"."""
    m = re.search(r"\[(\w+)\]$", label)
    return m.group(1) if m else impls[0] if len(impls) == 1 else "?"


def summarize(peer_rows, g16_rows, impls, peer_model="efficientnet_b0"):
    """One dict per LN+PN row: its numbers, the matching peer and LN rows, and the two ratios (None: unmatched)."""
    def key(r):
        return r["mode"], r["prec"], r["layout"], r["comp"]

    peer = {key(r): r for r in peer_rows if r["model"] == peer_model}
    ln = {key(r): r for r in g16_rows if r["norm"] == "ln"}
    out = []
    for r in g16_rows:
        if r["norm"] != "ln_pn":
            continue
        p, b = peer.get(key(r)), ln.get(key(r))
        ips = float(r["img/s"])
        out.append(dict(mode=r["mode"], impl=impl_of(r["model"], impls), prec=r["prec"], layout=r["layout"],
                        comp=r["comp"], res=r["res"], ips=ips, peak=r["peak_MB"], peer=p, ln=b,
                        speed=ips / float(p["img/s"]) if p else None, price=ips / float(b["img/s"]) if b else None))
    out.sort(key=lambda d: (d["mode"] != "train", d["impl"], d["layout"], d["comp"], d["prec"]))
    return out


def _num(v, fmt="{:.0f}"):
    return "-" if v in (None, "") else fmt.format(float(v))


def _ratio(v, goal):
    if v is None:
        return "n/a"
    return f"{v:.2f}" + ("" if goal is None else " ok" if v >= goal else " MISS")


def to_markdown(lines, notes) -> str:
    train = [d for d in lines if d["mode"] == "train"]
    res = sorted({d["res"] for d in lines})
    peer_res = sorted({d["peer"]["res"] for d in lines if d["peer"]})
    md = ["# GPU check: target ratios", ""]
    if lines:
        dev = {d["peer"]["device"] for d in lines if d["peer"]} | {d["ln"]["device"] for d in lines if d["ln"]}
        md.append(f"G16-B0 LN+PN at {'/'.join(res)} px; timm efficientnet_b0 at {'/'.join(peer_res) or '?'} px; "
                  f"device {', '.join(sorted(dev)) or '?'}; compile 1 = torch.compile (static shapes).")
    for name, what in (("speed", "G16-B0 LN+PN train img/s / timm efficientnet_b0 train img/s"),
                       ("price", "G16-B0 LN+PN train img/s / G16-B0 LN train img/s")):
        got = [d for d in train if d[name] is not None]
        if got:
            best = max(got, key=lambda d: d[name])
            md.append(f"- {name}: {what} (goal >= {GOALS[name]}): best {best[name]:.2f} "
                      f"({best['impl']}, {best['layout']}, compile {best['comp']}); "
                      f"{sum(d[name] >= GOALS[name] for d in got)}/{len(got)} settings meet it")
        else:
            md.append(f"- {name}: {what} (goal >= {GOALS[name]}): n/a (no matching training rows)")
    md += ["", "| mode | pn impl | prec | layout | compile | LN+PN img/s | LN+PN peak MB | timm img/s | "
               "timm peak MB | LN img/s | speed = LN+PN/timm | price = LN+PN/LN |",
           "|" + "---|" * 12]
    for d in lines:
        goal = (lambda n: GOALS[n]) if d["mode"] == "train" else (lambda n: None)
        p, b = d["peer"] or {}, d["ln"] or {}
        md.append(f"| {d['mode']} | {d['impl']} | {d['prec']} | {d['layout']} | {d['comp']} | {_num(d['ips'])} | "
                  f"{_num(d['peak'])} | {_num(p.get('img/s'))} | {_num(p.get('peak_MB'))} | {_num(b.get('img/s'))} | "
                  f"{_ratio(d['speed'], goal('speed'))} | {_ratio(d['price'], goal('price'))} |")
    if notes:
        md += [""] + [f"- {n}" for n in notes]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", nargs="*", default=[], help="bench CSVs with the timm peer's rows (224 px)")
    p.add_argument("--g16", nargs="*", default=[], help="bench CSVs with G16-B0 LN and LN+PN rows (160 px)")
    p.add_argument("--pn-impls", default="fused", help="the --pn-impl list those runs had (names unbracketed rows)")
    p.add_argument("--peer-model", default="efficientnet_b0")
    p.add_argument("--out", default=None, help="write the markdown here too")
    args = p.parse_args(argv)
    notes = []
    lines = summarize(read_rows(args.peer, notes), read_rows(args.g16, notes), args.pn_impls.split(","),
                      args.peer_model)
    text = to_markdown(lines, notes)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    ok = any(d["mode"] == "train" and (d["speed"] is not None or d["price"] is not None) for d in lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
