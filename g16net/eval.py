"""`python -m g16net.eval run_dir=DIR`: evaluate a trained run (Hydra app; configs in conf/eval.yaml).

The model is rebuilt from the run's config with its final weights (g16net/run/loader.py) and evaluated by the
run's backend on the run's data source (or another one), at the run's test resolutions (or others). The results go
to an eval.json of their own; the run's files are only read. Every input is checked before the evaluation starts:
a bad one ends with a message naming it and exit status 2.
"""

import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from .core.conf_path import CONF_DIR
from .core.config import ConfigError, plan_run
from .core.hydra_choices import bad_choices_exit_2

log = logging.getLogger("g16net")
RESULT = "eval.json"
KEEP_RUNS = ("root", "num_workers", "verify_images")  # conf/eval.yaml's data keys: null = the run's value


def _run_dir(cfg: DictConfig) -> Path:
    if cfg.run_dir is not None:
        return Path(cfg.run_dir)
    if cfg.ckpt is None:
        raise ConfigError("run_dir is not set; pass run_dir=<a run's directory> (or ckpt=<run>/checkpoints/<phase>.pt)")
    ckpt = Path(cfg.ckpt).resolve()
    if ckpt.parent.name != "checkpoints":
        raise ConfigError(f"ckpt={cfg.ckpt!r} does not lie in a run's checkpoints/ folder, so its config is unknown; "
                          "pass run_dir=<the run whose config built these weights> as well")
    return ckpt.parent.parent


def _eval_config(cfg: DictConfig, run_cfg: DictConfig) -> DictConfig:
    """The run's config with what this evaluation changes: the dataset (or where it lives), the batch, the device
    (one; Lightning would start DDP ranks by re-running this command otherwise)."""
    run_cfg = run_cfg.copy()
    with open_dict(run_cfg):
        if "name" in cfg.data:  # data=<name>: a whole data config of its own
            run_cfg.data = {k: v for k, v in cfg.data.items() if v is not None or k not in KEEP_RUNS}
        else:
            run_cfg.data = OmegaConf.merge(run_cfg.data, {k: v for k, v in cfg.data.items() if v is not None})
        run_cfg.trainer = OmegaConf.merge(run_cfg.trainer, {k: v for k, v in cfg.trainer.items() if v is not None},
                                          {"devices": 1, "num_nodes": 1, "strategy": "auto"})
        if cfg.batch_size is not None:
            run_cfg.eval_batch_size = cfg.batch_size
    return run_cfg


def _given_resolutions(cfg: DictConfig) -> list[int] | None:
    res = cfg.resolutions
    if res is None:
        return None
    if not OmegaConf.is_list(res) or not res or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 8
                                                         for r in res):
        raise ConfigError(f"resolutions={res!r} must be a non-empty list of integer pixels >= 8, e.g. [96,128]")
    return sorted(set(res))


def _out_dir(cfg: DictConfig, run_dir: Path) -> Path:
    out = Path(cfg.out) if cfg.out is not None else run_dir / "eval" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if (out / RESULT).exists():
        raise ConfigError(f"out={str(out)!r} already holds {RESULT}; choose another out=DIR")
    return out


def evaluate(cfg: DictConfig) -> dict:
    """Check every input, evaluate, write eval.json; returns what it wrote."""
    from .backends import get_backend
    from .backends.callbacks import say
    from .core.run_io import atomic_write_json
    from .core.version import __version__
    from .run.loader import build_model, final_weights, read_weights, run_config
    from .run.runner import load_data

    t0 = time.time()
    run_dir = _run_dir(cfg)
    res = _given_resolutions(cfg)
    run_cfg = _eval_config(cfg, run_config(run_dir))
    weights = Path(cfg.ckpt) if cfg.ckpt is not None else final_weights(run_dir)
    model = build_model(run_cfg, read_weights(weights), weights)
    num_classes = model.get_classifier().out_features
    out = _out_dir(cfg, run_dir)
    backend = get_backend(run_cfg.backend)(run_cfg, out)  # writes nothing before evaluate
    data = load_data(run_cfg)  # a missing or empty dataset fails here, naming data.root
    if data.num_classes != num_classes:
        raise ConfigError(f"data {run_cfg.data.name!r} has {data.num_classes} classes but the run's model "
                          f"{num_classes}; evaluate on a dataset with the run's classes")
    if res is None:  # what the run itself was tested at (its run plan, with this evaluation's data)
        res = plan_run(run_cfg, data, backend.device).test_res
    out.mkdir(parents=True, exist_ok=True)
    say(f"== eval: {weights} on {run_cfg.data.name} at {', '.join(map(str, res))} px")
    rows = backend.evaluate(model, [(r, data.val_dataset(r)) for r in res], (data.mean, data.std), num_classes, False)
    for r in rows:
        say(f"   test {r['resolution']:4d} px  top-1 {r['top1']:6.2f}%")
    result = {"status": "complete", "version": __version__, "run_dir": str(run_dir), "weights": str(weights),
              "dataset": run_cfg.data.name, "num_classes": num_classes, "eval": rows,
              "wall_time_s": round(time.time() - t0, 1), "eval_config": OmegaConf.to_container(cfg, resolve=True),
              "data": OmegaConf.to_container(run_cfg.data, resolve=True)}
    atomic_write_json(out / RESULT, result)
    log.info("%s written to %s", RESULT, out)
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except ConfigError as e:
        log.error("eval refused: %s", e)
        sys.exit(2)


def main() -> None:
    with bad_choices_exit_2():
        _hydra_main()


if __name__ == "__main__":
    main()
