#!/usr/bin/env bash
# A study end to end: Hydra multirun sweep -> one results table (g16net.collect) -> figures (g16net.figs).
#   scripts/study.sh pareto cpu                 # = scripts/pareto_study.sh cpu
#   scripts/study.sh norm_ablation imagenet data.root=/data/imagenet hydra/launcher=submitit_slurm ...
# STUDY: pareto | norm_ablation. SCALE: cpu (synthetic data) | imagenet. Extra arguments are Hydra overrides for
# every run. FIGS=dir changes where the figures go (default paper_figs/<preset>).
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:?usage: scripts/study.sh pareto|norm_ablation cpu|imagenet [hydra overrides...]}
scale=${2:?usage: scripts/study.sh pareto|norm_ablation cpu|imagenet [hydra overrides...]}
shift 2
case "$study" in pareto | norm_ablation) ;; *) echo "study must be 'pareto' or 'norm_ablation', got '$study'" >&2; exit 2 ;; esac
case "$scale" in
  cpu) preset=${study}_cpu ;;
  imagenet) preset=$study ;;
  *) echo "scale must be 'cpu' or 'imagenet', got '$scale'" >&2; exit 2 ;;
esac
overlay=$([ "$study" = pareto ] && echo --paper-overlay || true)
dir=multirun/$preset/$(date +%Y-%m-%d_%H-%M-%S)
python -m g16net.train -m "sweep=$preset" "hydra.sweep.dir=$dir" "$@"
python -m g16net.collect "$dir" --out "$dir/results.csv"
figs=${FIGS:-paper_figs/$preset}
python -m g16net.figs "$dir/results.csv" --out "$figs" $overlay
cp "$dir/results.csv" "$figs/results.csv"   # the figures' only input, kept next to them
