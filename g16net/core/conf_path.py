"""Where the app's Hydra configs live, for every entry point that composes them (train, eval, the tests).

`conf/` sits at the top of the repository; building a wheel maps it into the package as `g16net/conf`
(pyproject.toml, `[tool.setuptools]`), so an installed copy finds it beside its modules, and a checkout or an
editable install finds it beside the package. A user's own config folders come on top through Hydra's search path
(`--config-dir DIR` or `hydra.searchpath=[file://DIR]`), see README "Your own configs".
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # g16net/


def _find_conf_dir() -> Path:
    # The packaged copy first: in site-packages a stray top-level `conf/` of some other distribution may sit beside us.
    candidates = (_PACKAGE / "conf", _PACKAGE.parent / "conf")
    for candidate in candidates:
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"g16net's configs (train.yaml) are in none of {[str(c) for c in candidates]}; "
                            "reinstall the package (pip install g16net, or pip install -e . in a checkout)")


CONF_DIR: Path = _find_conf_dir()
