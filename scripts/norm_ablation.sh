#!/usr/bin/env bash
# The normalization ablation end to end: Hydra sweep over bn, gn, ln, ln_pn, gn_pn -> table -> figures.
#   scripts/norm_ablation.sh cpu                                 # synthetic data, G16-B0 half-res, ~35 min on 2 cores
#   scripts/norm_ablation.sh imagenet data.root=/data/imagenet hydra/launcher=submitit_slurm trainer=ddp trainer.devices=8
# Extra arguments are Hydra overrides for every run. FIGS=dir changes where the figures go.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:?usage: scripts/norm_ablation.sh cpu|imagenet [hydra overrides...]}
shift
case "$scale" in
  cpu) preset=norm_ablation_cpu ;;
  imagenet) preset=norm_ablation ;;
  *) echo "scale must be 'cpu' or 'imagenet', got '$scale'" >&2; exit 2 ;;
esac
dir=multirun/$preset/$(date +%Y-%m-%d_%H-%M-%S)
python -m g16net.train -m "sweep=$preset" "hydra.sweep.dir=$dir" "$@"
python -m g16net.collect "$dir" --out "$dir/results.csv"
python -m g16net.figs "$dir/results.csv" --out "${FIGS:-paper_figs/$preset}"
