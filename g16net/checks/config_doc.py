"""docs/config.md, generated from the schema: `python -m g16net.checks.config_doc > docs/config.md`."""

from collections.abc import Mapping

from ..core.schema import MISSING, describe, fmt, is_schema, rules


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(v) -> str:
    if isinstance(v, str) and v == MISSING:
        return "??? (required)"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_default(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_default(x)}" for k, x in v.items()) + "}"
    return fmt(v)


def table(schema: type, defaults: Mapping, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """Markdown table rows: key, allowed, default (`defaults`, a nested dict), what it is."""
    rows = ["| key | allowed | default | what it is |", "|---|---|---|---|"]
    for k, r, doc in rules(schema, prefix):
        if any(k == s or k.startswith(s + ".") for s in skip):
            continue
        if is_schema(r):
            rows.append(f"| **{k}** | | | {_cell(doc)} |")
            continue
        v, found = defaults, True
        for part in k[len(prefix):].split("."):
            found = found and isinstance(v, Mapping) and part in v
            v = v.get(part) if found else None
        rows.append(f"| `{k}` | {_cell(describe(r))} | {_cell(_default(v)) if found else '-'} | {_cell(r.doc)} |")
    return rows


def _group_defaults(conf) -> dict:
    """The default training config as written (interpolations kept), with the keys only other options of a config
    group set (logger=wandb's, say) taken from the first option that sets them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train"), resolve=False)
    GlobalHydra.instance().clear()
    for group in ("logger", "model", "norm", "resolution", "trainer"):
        for path in sorted((conf / group).glob("*.yaml")):
            node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            if "@package _global_" not in path.read_text()[:300]:
                for k, v in node.items():
                    if k != "defaults":
                        cfg[group].setdefault(k, v)
    return cfg


def markdown() -> str:
    """docs/config.md: every key of the training config, from the schema, with the yaml files' defaults."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from ..core.conf_path import CONF_DIR
    from ..data.config import CONF_DATA, NAMES
    from .train_schema import TrainConfig

    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from the schema (g16net/checks/train_schema.py, the data sources' `Config`, "
        "g16net/backends/ipu_schema.py):",
        "     python -m g16net.checks.config_doc > docs/config.md   (a test checks that this file is in step) -->",
        "",
        "Every key of `python -m g16net.train`, what it allows and its default (the yaml files in `conf/` hold the "
        "defaults;",
        "presets such as `experiment=paper_imagenet` change some). Set one with `key=value`; `null` and `auto` mean "
        "what the",
        "table says. A command with bad values exits with status 2 before anything is written, naming every bad key:",
        "`key=value is invalid; allowed: ...`. Rules between keys (a batch that divides over the devices, a training",
        "resolution at or below the test resolution, Mixup on a batch of 2 or more, the IPU counts) are checked "
        "right after.",
        "",
        "## Training",
        "",
    ]
    defaults = _group_defaults(CONF_DIR)
    out += table(TrainConfig, defaults, skip=("data",))
    out += ["", "## Data (`data=<name>`)", "",
            "The `data` keys are declared by the data source's class (`_target_`), as its `Config`: a dataclass "
            "deriving from",
            "`g16net.data.config.DataConfig` with one `key(...)` line per argument. A class of your own that declares "
            "no `Config`",
            "takes the keys its yaml sets as they are; the keys every source reads are checked all the same.", ""]
    for name in NAMES:
        raw = OmegaConf.to_container(OmegaConf.load(CONF_DATA / f"{name}.yaml"), resolve=False)
        cls = get_class(raw["_target_"])
        out += [f"### data={name} (`{raw['_target_']}`)", ""]
        out += table(cls.Config, raw, "data.")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
