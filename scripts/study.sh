#!/usr/bin/env bash
# A study end to end: Hydra multirun sweep -> one results table (g16net.collect) -> figures (g16net.figs).
#   scripts/study.sh pareto cpu                 # = scripts/pareto_study.sh cpu
#   scripts/study.sh norm_ablation cpu --out studies/ablation1
#   scripts/study.sh norm_ablation imagenet data.root=/data/imagenet hydra/launcher=submitit_slurm ...
#   SEEDS=0,1,2 scripts/study.sh pareto cpu    # every configuration once per seed (= the override seed=0,1,2)
# STUDY: pareto | norm_ablation. SCALE: cpu (synthetic data) | imagenet. Extra arguments are Hydra overrides for
# every run. SEEDS=list sweeps the seed (default: the preset's).
# Everything goes in one folder: --out DIR, else multirun/<preset>/<date>_<time> under the current folder. The runs
# are its numbered subfolders, collect writes results.csv (per run) and results_mean.csv (mean/std/n over seeds)
# there, and the figures go to its figs/ (figs/power_epochs/ too where the runs recorded the power terms per
# epoch, as the CPU ablation does; bench*.csv for the CPU Pareto study, whose throughput axes come from one interleaved
# `python -m g16net.bench` run). FIGS=dir puts the figures, with copies of both tables, elsewhere:
# FIGS=paper_figs/<preset> refreshes the repository's own (the only way this script writes there).
set -euo pipefail
usage="usage: scripts/study.sh pareto|norm_ablation cpu|imagenet [--out DIR] [hydra overrides...]"
study=${1:?$usage}
scale=${2:?$usage}
shift 2
case "$study" in pareto | norm_ablation) ;; *) echo "study must be 'pareto' or 'norm_ablation', got '$study'" >&2; exit 2 ;; esac
case "$scale" in
  cpu) preset=${study}_cpu ;;
  imagenet) preset=$study ;;
  *) echo "scale must be 'cpu' or 'imagenet', got '$scale'" >&2; exit 2 ;;
esac
out=""
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] && [ -n "$2" ] || { echo "--out needs a folder; $usage" >&2; exit 2; }; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; [ -n "$out" ] || { echo "--out needs a folder; $usage" >&2; exit 2; }; shift ;;
    *) overrides+=("$1"); shift ;;
  esac
done
overlay=$([ "$study" = pareto ] && echo --paper-overlay || true)
seeds=()
if [ -n "${SEEDS:-}" ]; then
  [[ "$SEEDS" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "SEEDS must be comma-separated integers like 0,1,2, got '$SEEDS'" >&2; exit 2; }
  seeds=("seed=$SEEDS")
fi
dir=${out:-multirun/$preset/$(date +%Y-%m-%d_%H-%M-%S)}
python -m g16net.train -m "sweep=$preset" "hydra.sweep.dir=$dir" "${seeds[@]}" "${overrides[@]}"
tput=()
if [ "$preset" = pareto_cpu ]; then
  # Its runs skip the per-run protocol: the interleaved bench measures every series' model and norm instead,
  # training at the training resolutions (48, 64 px) and inference at the test ones (48, 64, 96 px).
  bench=(python -m g16net.bench --models g1_efficientnet_b0,g1_efficientnet_b1,g16_efficientnet_b0,g16_efficientnet_b1
         --norms gn,ln_pn --peers "" --pn-impl fused --batch 32 --warmup 2 --steps 5 --repeats 3 --num-classes 10)
  "${bench[@]}" --res 48,64 --modes train,infer --csv "$dir/bench.csv"
  "${bench[@]}" --res 96 --modes infer --csv "$dir/bench_infer96.csv"
  tput=(--throughput "$dir/bench.csv" "$dir/bench_infer96.csv")
fi
python -m g16net.collect "$dir" --out "$dir/results.csv" "${tput[@]}"
figs=${FIGS:-$dir/figs}
python -m g16net.figs "$dir/results.csv" --out "$figs" $overlay
records=("$dir"/*/diagnostics/power_epochs.csv)  # runs trained with diagnostics.every_epoch=true (the CPU ablation)
if [ -e "${records[0]}" ]; then
  python -m g16net.diagnose epochs "${records[@]%/diagnostics/power_epochs.csv}" --depths 0,24,-1 --out "$figs/power_epochs"
fi
if [ -n "${FIGS:-}" ]; then  # the figures' only input, kept next to them
  cp "$dir/results.csv" "$dir/results_mean.csv" "$figs/"
  for b in "$dir"/bench*.csv; do [ ! -e "$b" ] || cp "$b" "$figs/"; done
fi
echo "study written to $dir (tables) and $figs (figures)" >&2
