#!/usr/bin/env bash
# The paper's Pareto study end to end: Hydra sweep -> one results table -> Pareto figures (+ the paper's points).
#   scripts/pareto_study.sh cpu                                  # synthetic data, 2 sizes x 5 series, ~2 h on 2 cores
#   scripts/pareto_study.sh imagenet data.root=/data/imagenet hydra/launcher=submitit_slurm trainer=ddp trainer.devices=8
# Extra arguments are Hydra overrides for every run. FIGS=dir changes where the figures go.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:?usage: scripts/pareto_study.sh cpu|imagenet [hydra overrides...]}
shift
case "$scale" in
  cpu) preset=pareto_cpu ;;
  imagenet) preset=pareto ;;
  *) echo "scale must be 'cpu' or 'imagenet', got '$scale'" >&2; exit 2 ;;
esac
dir=multirun/$preset/$(date +%Y-%m-%d_%H-%M-%S)
python -m g16net.train -m "sweep=$preset" "hydra.sweep.dir=$dir" "$@"
python -m g16net.collect "$dir" --out "$dir/results.csv"
python -m g16net.figs "$dir/results.csv" --out "${FIGS:-paper_figs/$preset}" --paper-overlay
