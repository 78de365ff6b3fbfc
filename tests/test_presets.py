"""Every point of every sweep preset (conf/sweep/) composes, validates and plans as its own job would, expanded
with Hydra's own override parser; the Pareto sweep's 36 points are the paper's six curves."""

import itertools

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from g16net.checks.config_check import check_config
from g16net.core.recipe import build_mixup
from g16net.models import SIZES

from .conftest import PAPER_CPU, ROOT, compose_cfg, plan_of

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "sweep").glob("*.yaml"))
# The authors' per-size Mixup alpha and CutMix lambda (None: no CutMix).
PAPER_MIXUP = {"b0": (0.1, None), "b1": (0.1, 0.95), "b2": (0.1, 0.9), "b3": (0.2, 0.9), "b4": (0.2, 0.85),
               "b5": (0.2, 0.8)}
SERIES = ("g1_gn_baseline", "g1_gn_native", "g16_gn_native", "g16_gn_half", "g16_lnpn_native", "g16_lnpn_half")


def sweep_points(preset: str) -> tuple[str, list[tuple[str, ...]]]:
    """The preset's dataset, and the jobs `python -m g16net.train -m sweep=PRESET` launches: the product of its
    sweeper params, as Hydra's basic sweeper forms it."""
    cfg = compose_cfg([f"sweep={preset}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in overrides]
    return cfg.data.name, list(itertools.product(*axes))


DATA, POINTS = {}, {}
for _preset in PRESETS:
    DATA[_preset], POINTS[_preset] = sweep_points(_preset)


def test_the_presets_are_the_documented_grids():
    assert {p: len(points) for p, points in POINTS.items()} == {"norm_ablation": 5, "norm_ablation_cpu": 21,
                                                                "pareto": 36, "pareto_cpu": 36}
    pareto = {(s.split("=")[1], z.split("=")[1]) for s, z in POINTS["pareto"]}
    assert pareto == set(itertools.product(SERIES, PAPER_MIXUP))  # the paper's six curves, b0 to b5


@pytest.mark.parametrize("preset, point", [(p, pt) for p in PRESETS for pt in POINTS[p]],
                         ids=lambda v: ",".join(v) if isinstance(v, tuple) else v)
def test_every_sweep_point_composes_and_plans(preset, point, imagenet_tree):
    root = [f"data.root={imagenet_tree}"] if DATA[preset] == "imagenet" else []  # ImageNet's folders stand-in
    cfg = compose_cfg([f"sweep={preset}", *point, *root, *PAPER_CPU])
    check_config(cfg)
    plan = plan_of(cfg)
    chosen = dict(kv.split("=", 1) for kv in point)
    for key, value in chosen.items():  # the job gets its point (a series is a preset: checked below for pareto)
        assert key == "series" or str(OmegaConf.select(cfg, "norm.name" if key == "norm" else key)) == value
    if preset == "pareto":
        _assert_papers_run(cfg, plan, chosen["series"], chosen["model.size"])


def _assert_papers_run(cfg, plan, series, size):
    """One of the 36 runs of the paper's six curves: series x model.size."""
    spec = SIZES[size]
    native = series.endswith(("native", "baseline"))
    assert plan.train_res == (spec.native_res if native else spec.half_res)
    baseline = series.endswith("baseline")  # G1-GN-Baseline: native, no finetuning
    assert plan.headline_res == spec.native_res and plan.finetune_epochs == (0 if baseline else 2)
    assert baseline or plan.finetune_res == spec.native_res
    assert (cfg.model.group_size, cfg.model.expand_ratio) == ((1, 6) if series.split("_")[0] == "g1" else (16, 4))
    assert cfg.norm.name == ("ln_pn" if "lnpn" in series else "gn")
    assert (cfg.epochs, cfg.batch_size, plan.lr, plan.rmsprop_alpha) == (350, 768, 0.046875, 0.953125)
    assert plan.finetune_lr == pytest.approx(0.25)
    mix = build_mixup(cfg.augment, size, 1000, 0.1)
    assert (mix.mixup_alpha, mix.cutmix_lambda) == PAPER_MIXUP[size]
