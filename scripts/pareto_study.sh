#!/usr/bin/env bash
# The paper's Pareto study (G1/G16 x GN/LN+PN x half/native over sizes): sweep -> table -> figures + paper overlay.
#   scripts/pareto_study.sh cpu                                   # synthetic data, 6 series x b0,b1 x seeds 0,1,2 (2 h 14 min on 2 cores)
#   scripts/pareto_study.sh imagenet data.root=/data/imagenet hydra/launcher=submitit_slurm trainer=ddp trainer.devices=8
exec "$(dirname "$0")/study.sh" pareto "$@"
