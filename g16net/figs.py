"""Paper-style Pareto plots (top-1 vs cost) from a results CSV written by ``g16net.collect``.

    python -m g16net.figs results.csv --out figs/ [--paper-overlay] [--pick headline|best]
    python -m g16net.figs --paper-only --out paper_figs/reference

How the figures encode runs: `g16net.studies.figs`.
"""

import argparse
import sys

from .studies.figs import make_figures, paper_figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m g16net.figs", description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="?", help="results CSV from g16net.collect")
    parser.add_argument("--out", required=True, help="output directory for PNG + PDF figures")
    parser.add_argument("--paper-overlay", action="store_true", help="add the paper's points as side panels")
    parser.add_argument("--pick", choices=["headline", "best"], default="headline",
                        help="which test resolution per run: the headline one (default) or the best top-1")
    parser.add_argument("--paper-only", action="store_true", help="draw only the paper's reference plots")
    args = parser.parse_args(argv)
    if args.paper_only:
        if args.csv:
            parser.error("--paper-only takes no results CSV")
        paths = paper_figures(args.out)
    else:
        if not args.csv:
            parser.error("a results CSV is required (or use --paper-only)")
        try:
            paths = make_figures(args.csv, args.out, args.paper_overlay, args.pick)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
