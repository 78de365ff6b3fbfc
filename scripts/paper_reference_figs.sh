#!/usr/bin/env bash
# Redraw the paper's own Pareto plots (from g16net/reference/paper_points.csv) into paper_figs/reference/.
# Outputs are byte-stable for a given matplotlib version (no PDF creation date), so only real changes diff.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m g16net.figs --paper-only --out paper_figs/reference
