"""The authors' recipe pieces, checked by behaviour: the CutMix/Mixup samplers against an independent re-statement of
the authors' sampler (PAPER.md section 3), the weight-decay split, the finetune optimizer."""

import math

import numpy as np
import pytest
import torch

import g16net
from g16net.core.config import model_kwargs
from g16net.core.recipe import (
    PaperMixCut,
    build_mixup,
    build_scheduler,
    label_smoothing,
    param_groups,
    regularization_scale,
    scaled_schedule,
)

from .conftest import compose_cfg


def authors_cutmix_draws(lam: float, n: int, size: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """The authors' CutMix v1 in numpy: the no-cut rate and the kept fraction of every draw (1.0 for no cut)."""
    no_cut = rng.random(n) < 1.55 * lam - 0.96
    kept_nominal = 1 + np.log(rng.uniform(math.exp(-4), 1, n)) / 4
    side = np.sqrt(1 - kept_nominal) * size
    cy, cx = rng.random(n) * size, rng.random(n) * size
    h = np.clip(np.round(cy + side / 2), 0, size) - np.clip(np.round(cy - side / 2), 0, size)
    w = np.clip(np.round(cx + side / 2), 0, size) - np.clip(np.round(cx - side / 2), 0, size)
    return no_cut.mean(), np.where(no_cut, 1.0, 1 - h * w / size**2)


@pytest.mark.parametrize("lam", [0.95, 0.8])
def test_cutmix_matches_the_authors_sampler(lam):
    """No-cut rate and mean kept area over 4000 batches, each within 4 standard errors of the reference sampler."""
    torch.manual_seed(0)
    n, size = 4000, 64
    mix = PaperMixCut(0.0, lam, num_classes=10, label_smoothing=0.0)
    boxes = [mix.cut_box(size, size) for _ in range(n)]
    kept = np.array([1.0 if b is None else 1 - (b[1] - b[0]) * (b[3] - b[2]) / size**2 for b in boxes])
    ref_rate, ref_kept = authors_cutmix_draws(lam, 200_000, size, np.random.default_rng(0))
    rate = np.mean([b is None for b in boxes])
    assert abs(rate - (1.55 * lam - 0.96)) < 4 * math.sqrt(ref_rate * (1 - ref_rate) / n)
    assert abs(kept.mean() - ref_kept.mean()) < 4 * ref_kept.std() / math.sqrt(n)
    cut = kept[kept < 1]
    assert cut.min() > 0 and cut.mean() < 0.9  # real cuts happen and remove a sizeable share on average


def test_cutmix_and_mixup_both_act_on_every_batch():
    """lambda 0.5 always cuts; with Mixup on too, each soft target mixes the sample, its roll-by-1 (Mixup) and its
    roll-by-2 (CutMix) partners, and the labels' weights match the pixels' sources."""
    torch.manual_seed(1)
    b, c = 6, 10
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 32, 32).contiguous()
    y = torch.arange(b)
    mix = PaperMixCut(0.2, 0.5, num_classes=c, label_smoothing=0.0)
    out, target = mix(x, y)
    assert target.shape == (b, c) and torch.allclose(target.sum(1), torch.ones(b))
    for i in range(b):
        partners = {i, (i - 1) % b, (i - 2) % b, (i - 3) % b}  # Mixup's partner carries its own CutMix partner
        assert set(torch.nonzero(target[i]).flatten().tolist()) <= partners
        assert target[i, (i - 2) % b] > 0 or target[i, (i - 3) % b] > 0  # a CutMix box is in every image
        assert not torch.allclose(target[i, i], torch.tensor(1.0))
    # Pixel mean equals the label-weighted mean of the source images' constant values.
    expected = (target * torch.arange(c, dtype=torch.float32)).sum(1)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), expected, atol=1e-4)


def test_mixup_lambda_is_drawn_per_sample_and_labels_are_smoothed():
    torch.manual_seed(2)
    mix = PaperMixCut(0.2, None, num_classes=4, label_smoothing=0.1)
    x, y = torch.randn(64, 3, 8, 8), torch.zeros(64, dtype=torch.long)
    _, target = mix(x, y)
    assert torch.allclose(target, torch.tensor([[0.925, 0.025, 0.025, 0.025]]).expand(64, 4))  # same labels
    y = torch.arange(64) % 4
    _, target = mix(x, y)
    weights = target[torch.arange(64), y]
    assert weights.unique().numel() > 32  # one coefficient per sample, not one per batch


def test_weight_decay_follows_the_authors_rule():
    """Decay: conv/FC weights and biases, PN's proxy parameters. No decay: norm gammas/betas, PN's gamma/beta."""
    model = g16net.create_model(norm="ln_pn", num_classes=10)
    decay, no_decay = param_groups(model, 1e-5)
    ids = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in ids}
    assert {"norm_stem.pn.proxy_weight", "norm_stem.pn.proxy_bias", "conv_stem.weight", "classifier.weight",
            "classifier.bias"} <= names
    se_bias = [n for n, _ in model.named_parameters() if ".se." in n and n.endswith("bias")]
    assert se_bias and set(se_bias) <= names
    assert not any(n.endswith("pn.weight") or n.endswith("pn.bias") for n in names)
    norm_names = {n for n, p in model.named_parameters() if id(p) not in ids}
    assert norm_names and all("norm" in n or "bn" in n for n in norm_names)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-5
    bn_model = g16net.create_model(norm="bn", num_classes=10)
    bn_decay, bn_no = param_groups(bn_model, 1e-5)
    assert len(bn_no["params"]) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn_model.modules()) * 2


def _plan(overrides):
    from .conftest import compose_cfg, plan_of

    cfg = compose_cfg(overrides)
    return cfg, plan_of(cfg)


def _lr_curve(cfg, plan, steps_per_epoch):
    sched_cfg, _ = scaled_schedule(cfg.scheduler, cfg.ema, plan.time_scale)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=plan.lr)
    sched = build_scheduler(opt, sched_cfg, steps_per_epoch, cfg.epochs)
    lrs = []
    for step in range(steps_per_epoch * cfg.epochs):
        sched.step_update(num_updates=step)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("epochs", [8, 30])
def test_short_runs_keep_the_papers_schedule_shape(epochs):
    """Any run length: warmup over 5/350 of the run, LR down to 0.97^(350/2.4) = 1.2% of its peak at the end, the
    weight average's per-epoch decay 0.97^(350/epochs); the RMSprop decay stays the paper's 21-step average."""
    cfg, plan = _plan([f"epochs={epochs}"])
    steps = 125
    lrs = _lr_curve(cfg, plan, steps)
    warmup = round(5 / 350 * epochs * steps)
    assert max(lrs) == pytest.approx(plan.lr, rel=1e-6) and lrs[warmup] >= 0.9 * plan.lr
    assert lrs[0] < 0.2 * plan.lr
    assert lrs[-1] / plan.lr == pytest.approx(0.97 ** (350 / 2.4), rel=0.1)
    # A staircase, not a smooth decay: after warmup the LR holds, then drops by exactly 0.97, every 2.4 paper epochs
    drops = [i for i in range(warmup + 1, len(lrs)) if lrs[i] != lrs[i - 1]]
    assert all(lrs[i] / lrs[i - 1] == pytest.approx(0.97, rel=1e-9) for i in drops)
    stair = 2.4 / 350 * epochs * steps  # in steps
    assert all(abs((b - a) - stair) <= 1 for a, b in zip(drops, drops[1:])) and len(drops) >= 140
    assert lrs[-1] / plan.lr == pytest.approx(0.97 ** len(drops) * lrs[warmup + 1] / plan.lr, rel=1e-9)
    _, ema = scaled_schedule(cfg.scheduler, cfg.ema, plan.time_scale)
    assert ema.decay == pytest.approx(0.97 ** (350 / epochs))
    assert plan.rmsprop_alpha == 1 - 768 / 16384 and plan.finetune_rmsprop_alpha == 1 - 512 / 16384


def test_paper_preset_is_the_papers_recipe_unscaled(paper_cfg):
    cfg, plan = paper_cfg
    sched, ema = scaled_schedule(cfg.scheduler, cfg.ema, plan.time_scale)
    assert plan.time_scale == 1 and (sched.warmup_epochs, sched.decay_epochs, ema.decay) == (5, 2.4, 0.97)
    assert (plan.lr, plan.rmsprop_alpha) == (0.046875, 0.953125)
    assert (plan.finetune_lr, plan.finetune_rmsprop_alpha) == (0.25, 0.96875)
    assert cfg.finetune.optimizer.name == "rmsproptf" and cfg.finetune.scheduler.name == "cosine"
    assert cfg.model.zero_init_last is False  # the authors' init; the short-run default turns it on
    assert (regularization_scale(cfg), label_smoothing(cfg)) == (1.0, 0.1)  # the paper's regularization, unscaled


@pytest.mark.parametrize("epochs, scale", [(8, 8 / 350), (350, 1.0), (700, 1.0)])
def test_regularization_scales_with_the_run(epochs, scale):
    """`regularization_scale=auto` = min(1, epochs / 350) on Mixup's alpha, the cut rate, label smoothing,
    dropout and stochastic depth; the model is built with the scaled rates."""
    cfg = compose_cfg([f"epochs={epochs}", "model.size=b1", "regularization_scale=auto"])  # b1: CutMix 0.95
    assert regularization_scale(cfg) == pytest.approx(scale)
    assert label_smoothing(cfg) == pytest.approx(0.1 * scale)
    mix = build_mixup(cfg.augment, "b1", 10, label_smoothing(cfg), regularization_scale(cfg))
    assert mix.mixup_alpha == pytest.approx(0.1 * scale) and mix.cut_scale == pytest.approx(scale)
    model = g16net.create_model(**model_kwargs(cfg, 10))
    assert model.drop_rate == pytest.approx(0.2 * scale)
    drop_paths = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    blocks = len(drop_paths) + 1  # the first block has rate 0: no DropPath
    assert max(drop_paths) == pytest.approx(0.2 * scale * (blocks - 1) / blocks, rel=1e-6)


def test_regularization_is_the_papers_by_default_or_scaled_by_hand():
    cfg = compose_cfg([])
    assert (regularization_scale(cfg), label_smoothing(cfg)) == (1.0, 0.1)
    cfg = compose_cfg(["regularization_scale=0"])
    assert build_mixup(cfg.augment, "b1", 10, label_smoothing(cfg), regularization_scale(cfg)) is None
    assert label_smoothing(cfg) == 0.0


@pytest.mark.parametrize("scale", [0.5, 0.1])
def test_cut_rate_scales(scale):
    """The rate of cuts is the paper's (1 - no-cut rate) x scale; the cuts themselves are the paper's."""
    torch.manual_seed(0)
    n, lam = 4000, 0.8
    mix = PaperMixCut(0.0, lam, num_classes=10, label_smoothing=0.0, cut_scale=scale)
    rate = np.mean([mix.cut_box(64, 64) is not None for _ in range(n)])
    want = scale * (1 - (1.55 * lam - 0.96))
    assert abs(rate - want) < 4 * math.sqrt(want * (1 - want) / n)
