#!/usr/bin/env bash
# A study end to end: Hydra multirun sweep -> one results table (g16net.collect) -> figures (g16net.figs).
#   scripts/study.sh pareto cpu                 # = scripts/pareto_study.sh cpu
#   scripts/study.sh norm_ablation imagenet data.root=/data/imagenet hydra/launcher=submitit_slurm ...
#   SEEDS=0,1,2 scripts/study.sh pareto cpu    # every configuration once per seed (= the override seed=0,1,2)
# STUDY: pareto | norm_ablation. SCALE: cpu (synthetic data) | imagenet. Extra arguments are Hydra overrides for
# every run. SEEDS=list sweeps the seed (default: the preset's). FIGS=dir changes where the figures go (default
# paper_figs/<preset>). collect writes results.csv (per run) and results_mean.csv (mean/std/n over seeds).
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
seeds=()
if [ -n "${SEEDS:-}" ]; then
  [[ "$SEEDS" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "SEEDS must be comma-separated integers like 0,1,2, got '$SEEDS'" >&2; exit 2; }
  seeds=("seed=$SEEDS")
fi
dir=multirun/$preset/$(date +%Y-%m-%d_%H-%M-%S)
python -m g16net.train -m "sweep=$preset" "hydra.sweep.dir=$dir" "${seeds[@]}" "$@"
python -m g16net.collect "$dir" --out "$dir/results.csv"
figs=${FIGS:-paper_figs/$preset}
python -m g16net.figs "$dir/results.csv" --out "$figs" $overlay
cp "$dir/results.csv" "$figs/results.csv"   # the figures' only input, kept next to them
cp "$dir/results_mean.csv" "$figs/results_mean.csv"
