"""`python -m g16net.tune_lr [the training command's overrides]`: an LR range test for your data and budget.

Runs Lightning's LR finder on the training phase exactly as the training command builds it: the same data,
resolution, batch, augmentation, regularization, model and optimizer. The LR rises exponentially from 2^-22 to 2^-8
per sample over a fifth of the run's training updates (50 to 300), stopping early where the loss diverges; the
suggestion is Lightning's (the steepest fall of the smoothed loss), rounded to a power of 2 per sample. Prints the
override to train with and writes lr_find.json and lr_find.png to its own output dir (Hydra's, as for a run).

RMSprop-TF starts its average of squared gradients at 1, which shrinks the first ~143 updates (until 0.953^t < eps)
by up to 32x; the run starts that way too, and its short warmup ends inside that start-up. The test keeps TF's
start: its first updates are shrunk as the run's are. It has no warmup of its own: the ramp, 2^14 from bottom to
top, is one. How far its suggestion is from the best fixed LR is measured in the README ("Your own data").
"""

import json
import logging
import math
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .core.conf_path import CONF_DIR
from .core.config import ConfigError

log = logging.getLogger("g16net")
LR_RANGE = (2.0**-22, 2.0**-8)  # per sample: 2^-17 (the short-run default) and 2^-14 (the paper's) well inside
SHARE = 0.2  # of the run's training updates spent on the test
MIN_STEPS, MAX_STEPS = 50, 300


def range_steps(train_steps: int) -> int:
    return int(min(MAX_STEPS, max(MIN_STEPS, round(SHARE * train_steps))))


def per_sample_power_of_2(lr: float, batch: int) -> float:
    return 2.0 ** round(math.log2(lr / batch))


def tune(cfg: DictConfig, out_dir: Path) -> dict:
    import pytorch_lightning as pl

    from .backends import get_backend
    from .core.config import check_config, model_kwargs, plan_run
    from .models import create_model
    from .run.runner import load_data, train_phase

    check_config(cfg)
    if cfg.backend != "lightning":
        raise ConfigError(f"backend={cfg.backend} is invalid for tune_lr; allowed: lightning (Lightning's LR finder)")
    backend = get_backend(cfg.backend)(cfg, out_dir)
    data = load_data(cfg)
    plan = plan_run(cfg, data, backend.device)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = create_model(**model_kwargs(cfg, plan.num_classes))
    phase = train_phase(cfg, plan, data, files=None)
    per_epoch = len(phase.train_set) // (phase.batch * backend.device.world_size)
    steps = range_steps(per_epoch * cfg.epochs)
    lrs = (LR_RANGE[0] * cfg.batch_size, LR_RANGE[1] * cfg.batch_size)
    finder = backend.lr_range_test(model, phase, lrs, steps)
    found = finder.suggestion()
    if found is None:
        raise RuntimeError(f"the LR finder recorded too few updates ({len(finder.results['lr'])}) to suggest an LR")
    chosen = per_sample_power_of_2(found, cfg.batch_size)
    result = dict(suggested_lr=found, lr_per_sample=chosen, lr=chosen * cfg.batch_size, batch_size=cfg.batch_size,
                  steps=len(finder.results["lr"]), planned_steps=steps, run_train_steps=per_epoch * cfg.epochs,
                  lr_range=list(lrs), results=finder.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lr_find.json").write_text(json.dumps(result, indent=1))
    fig = finder.plot(suggest=True)
    fig.savefig(out_dir / "lr_find.png", dpi=100)
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    import sys

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        r = tune(cfg, out)
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(2)
    exp = round(math.log2(r["lr_per_sample"]))
    print(f"[g16net] LR range test: {r['steps']} updates ({r['steps'] / r['run_train_steps']:.0%} of the run's "
          f"{r['run_train_steps']} training updates); Lightning's suggestion {r['suggested_lr']:.3g} at batch "
          f"{r['batch_size']} -> 2^{exp} per sample ({r['lr']:.3g}); curve in {out}/lr_find.png")
    print(f"train with:  optimizer.lr_per_sample={r['lr_per_sample']!r}")


if __name__ == "__main__":
    main()
