"""A finished run, used again: its model rebuilt from `<run>/.hydra/config.yaml` with its final weights loaded.

    import g16net
    model = g16net.load_run("outputs/2026-11-22/12-00-00")    # eval mode, on the CPU, ready for inference

The final weights are `checkpoints/finetune.pt` (the averaged weights after head finetuning), else
`checkpoints/train.pt` (a run without finetuning, or one stopped while finetuning): plain state_dicts of the model.
"""

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..core.config import ConfigError, model_kwargs
from ..core.run_io import ERROR
from ..core.run_safety import config_differences
from ..models import create_model

FINAL_WEIGHTS = ("finetune.pt", "train.pt")  # under checkpoints/, the first that exists
CLASSIFIER = "classifier.weight"  # its rows are the model's classes


def run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config the run was made with."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"run_dir={str(run_dir)!r} is not a g16net run directory: it has no .hydra/config.yaml "
                          "(every run of `python -m g16net.train` writes one); pass the directory the run wrote")
    return OmegaConf.load(path)


def final_weights(run_dir: str | Path) -> Path:
    ckpt = Path(run_dir) / "checkpoints"
    for name in FINAL_WEIGHTS:
        if (ckpt / name).is_file():
            return ckpt / name
    error = Path(run_dir) / ERROR
    why = f"; its {ERROR} says: {error.read_text().strip()}" if error.is_file() else ""
    names = " or ".join(f"checkpoints/{n}" for n in FINAL_WEIGHTS)
    raise ConfigError(f"run_dir={str(run_dir)!r} holds no final weights ({names}): no phase of the run finished{why}")


def read_weights(path: str | Path) -> dict:
    """A state_dict file (`checkpoints/<phase>.pt`); only tensors are unpickled."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt={str(path)!r} is not a file; allowed: null (the run's final weights) or a "
                          "state_dict saved by a run (checkpoints/finetune.pt or checkpoints/train.pt)")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (whatever torch.load meets: a Lightning .ckpt, a corrupt file)
        raise ConfigError(f"ckpt={str(path)!r} is not a model state_dict ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); allowed: checkpoints/finetune.pt or "
                          "checkpoints/train.pt of a run") from None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"ckpt={str(path)!r} holds a {type(weights).__name__}, not a model state_dict; allowed: "
                          "checkpoints/finetune.pt or checkpoints/train.pt of a run")
    return weights


def _weights_run_config(path: Path) -> Path | None:
    """`<run>/.hydra/config.yaml` of the run whose `<run>/checkpoints/<phase>.pt` this is."""
    config = path.resolve().parent.parent / ".hydra" / "config.yaml"
    return config if path.resolve().parent.name == "checkpoints" and config.is_file() else None


def build_model(cfg: DictConfig, weights: dict, source: str | Path = "the weights") -> torch.nn.Module:
    """The model `cfg` describes, with `weights` loaded; a mismatch names the differing weights (and, where the
    weights come from another run, the config keys in which the two runs differ)."""
    num_classes = int(weights[CLASSIFIER].shape[0]) if CLASSIFIER in weights else cfg.data.num_classes or 10
    try:
        model = create_model(**model_kwargs(cfg, num_classes))
    except ValueError as e:
        raise ConfigError(f"model/norm config: {e}") from None
    want = model.state_dict()
    missing, unexpected = sorted(want.keys() - weights.keys()), sorted(weights.keys() - want.keys())
    shapes = [f"{k} (model {tuple(want[k].shape)}, weights {tuple(weights[k].shape)})" for k in sorted(want)
              if k in weights and want[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
                 if keys]
        other = _weights_run_config(Path(source)) if isinstance(source, (str, Path)) else None
        diff = config_differences(OmegaConf.load(other), cfg) if other is not None else []
        m = cfg.model
        raise ConfigError(f"{source} does not fit the model of the config (g{m.group_size}-{m.size}, norm "
                          f"{cfg.norm.name}, {num_classes} classes): weights {'; '.join(parts)}"
                          + (f". The weights' run ({other}) differs in: {'; '.join(diff[:8])}" if diff else ""))
    model.load_state_dict(weights)
    return model


def load_run(run_dir: str | Path, weights: str | Path | None = None) -> torch.nn.Module:
    """The run's model, rebuilt from its `.hydra/config.yaml`, with its final weights (or the state_dict file
    `weights`) loaded, in eval mode on the CPU. Raises g16net.core.config.ConfigError (a ValueError) naming what is
    missing or what differs."""
    cfg = run_config(run_dir)
    path = Path(weights) if weights is not None else final_weights(run_dir)
    return build_model(cfg, read_weights(path), path).eval()
