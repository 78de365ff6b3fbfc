#!/usr/bin/env bash
# The normalization ablation (G16-B0, half-res + finetune): sweep -> table -> figures.
#   scripts/norm_ablation.sh cpu                                  # synthetic, bn gn ln ln_pn gn_pn in ln_ws x seeds 0,1,2: 21 runs
#   scripts/norm_ablation.sh imagenet data.root=/data/imagenet hydra/launcher=submitit_slurm trainer=ddp trainer.devices=8   # bn gn ln ln_pn gn_pn
exec "$(dirname "$0")/study.sh" norm_ablation "$@"
