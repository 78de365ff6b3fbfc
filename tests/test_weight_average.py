"""The weight average (EMA) is what a run saves, evaluates and finetunes; head-only finetuning moves only the head,
`finetune.layers=all` the whole model."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import g16net
from g16net.eval import evaluate
from g16net.run.runner import run

from .conftest import CONF, TINY, compose_cfg, read_metrics

# The average's first update copies the weights (timm's ModelEmaV3); at the second, ema.decay 0.998 per paper
# epoch is 0.998^(350/2) = 0.7 per epoch of this 2-epoch run: the average is 0.7 x the first epoch's weights +
# 0.3 x the second's, unlike the final weights, so saving or evaluating the wrong one shows.
ARGS = [*TINY, "epochs=2", "ema.decay=0.998", "batch_size=8", "finetune.batch_size=8", "eval_batch_size=16",
        "data.synthetic.train_size=16", "trainer.limit_train_batches=2", "data.synthetic.val_size=16",
        "trainer.limit_val_batches=1", "eval.resolutions=[64]", "throughput.enabled=false"]


def _run(tmp_path_factory, *overrides):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_cfg([*ARGS, *overrides])
    run(cfg, run_dir, hydra_files={"config.yaml": cfg})
    return run_dir


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    return _run(tmp_path_factory)


def _weights(run_dir, name):
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def _from_last_ckpt(run_dir, prefix):
    ckpt = torch.load(run_dir / "checkpoints" / "train" / "last.ckpt", map_location="cpu", weights_only=False)
    return {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def _head_names():
    model = g16net.create_model(norm="ln_pn", num_classes=10)
    head = {id(t) for m in model.head_modules() for t in [*m.parameters(), *m.buffers()]}
    names = {n for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) in head}
    assert names and len(names) < len(model.state_dict()) / 10
    return names


def _moved(a: dict, b: dict) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_the_average_is_saved_as_the_trained_weights(head_run):
    trained = _weights(head_run, "train.pt")
    assert _moved(trained, _from_last_ckpt(head_run, "ema.module.")) == set()
    assert len(_moved(trained, _from_last_ckpt(head_run, "model."))) > len(trained) / 2  # not the raw weights


def test_head_only_finetuning_starts_from_the_average_and_moves_only_the_head(head_run):
    moved = _moved(_weights(head_run, "train.pt"), _weights(head_run, "finetune.pt"))
    head = _head_names()
    assert moved and moved <= head  # the backbone is the average, bit for bit


def test_all_layers_finetuning_moves_the_backbone(tmp_path_factory):
    run_dir = _run(tmp_path_factory, "finetune.layers=all", "eval.before_finetune=false")
    moved = _moved(_weights(run_dir, "train.pt"), _weights(run_dir, "finetune.pt"))
    assert moved - _head_names()  # backbone weights changed too
    assert read_metrics(run_dir)["finetuned"] is True


def _eval(run_dir, ckpt, out, resolutions):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("eval", overrides=[f"run_dir={run_dir}", f"ckpt={ckpt}", f"out={out}",
                                         f"resolutions=[{','.join(map(str, resolutions))}]"])
    return [(r["resolution"], r["top1"], r["loss"]) for r in evaluate(cfg)["eval"]]


def test_the_average_is_what_is_evaluated_before_finetuning(head_run, tmp_path):
    reported = [(r["resolution"], r["top1"], r["loss"]) for r in read_metrics(head_run)["eval_before_finetune"]]
    res = [r for r, _, _ in reported]
    assert _eval(head_run, head_run / "checkpoints" / "train.pt", tmp_path / "avg", res) == reported
    raw = tmp_path / "raw.pt"
    torch.save(_from_last_ckpt(head_run, "model."), raw)
    assert [loss for *_, loss in _eval(head_run, raw, tmp_path / "raw", res)] != [loss for *_, loss in reported]
