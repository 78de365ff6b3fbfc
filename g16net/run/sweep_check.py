"""A sweep whose jobs have bad config values starts none of them: every job's config is composed and checked
against the schema first (no model, no data, no directory), and the sweep exits 2 naming each bad job and key.

A Hydra callback (conf/train.yaml, `hydra.callbacks`), run once in the launching process before the sweeper makes
the sweep directory. It expands the jobs as Hydra's basic sweeper does; other sweepers draw their jobs as they go,
so there each job is checked when it starts (and fails alone, as any failed job of a sweep).
"""

import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

EXIT_STATUS = 2  # as a single run refused for its config


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, in the basic sweeper's order; None for another sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return None
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + list(config.hydra.overrides.task)
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    return [job for batch in BasicSweeper.split_arguments(OverridesParser.create(loader).parse_overrides(args), None)
            for job in batch]


class CheckSweepJobs(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra import compose

        from ..checks.config_check import config_dirs, config_problems

        jobs = sweep_jobs(config)
        if not jobs:
            return
        varying = {o.split("=", 1)[0] for o in set().union(*jobs) if sum(o in j for j in jobs) < len(jobs)}
        failed, dirs = [], config_dirs(config.hydra)
        for job in jobs:
            bad = config_problems(compose(config_name=config.hydra.job.config_name, overrides=job), dirs)
            if bad:
                failed.append((" ".join(o for o in job if o.split("=", 1)[0] in varying) or "every job", bad))
        if not failed:
            return
        lines = [f"[g16net][ERROR] - {len(failed)} of {len(jobs)} sweep jobs have invalid config values; no job was "
                 "started (every key: docs/config.md):"]
        for job, bad in failed:
            lines += [f"  {job}:", *(f"    {line}" for problem in bad for line in problem.splitlines())]
        print("\n".join(lines), file=sys.stderr, flush=True)
        sys.exit(EXIT_STATUS)
