#!/usr/bin/env bash
# The normalization ablation (bn, gn, ln, ln_pn, gn_pn on G16-B0, half-res + finetune): sweep -> table -> figures.
#   scripts/norm_ablation.sh cpu                                  # synthetic data, 5 norms x seeds 0,1,2 (~1 h on 2 cores)
#   scripts/norm_ablation.sh imagenet data.root=/data/imagenet hydra/launcher=submitit_slurm trainer=ddp trainer.devices=8
exec "$(dirname "$0")/study.sh" norm_ablation "$@"
