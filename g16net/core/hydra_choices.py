"""An unknown config group option (`norm=batchnorm`, `data=imagenett`) exits 2 with one line naming the key, the
value and the allowed options, as every other bad value does (g16net/core/config.py's ConfigError).

Hydra finds such a typo while composing the config, before the app runs, and reports it itself with exit status 1
(`run_and_report` in hydra/_internal/utils.py). Hydra offers no hook there, so `bad_choices_exit_2` wraps that one
function for the duration of a command: a missing option of a config group becomes the message and exit 2; every
other error (a missing primary config, a broken user config) is still Hydra's to report.
"""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hydra.errors import MissingConfigException


def bad_choice_message(err: MissingConfigException) -> str | None:
    """`group=option is not allowed; allowed: ...`, or None when `err` is not about a config group's option."""
    if err.options is None or not err.missing_cfg_file:  # options is set only for a group's missing option
        return None
    group, _, option = err.missing_cfg_file.rpartition("/")
    if not err.options:
        return f"{group}={option}: there is no config group '{group}'"
    return f"{group}={option} is not allowed; allowed: {', '.join(err.options)}"


@contextmanager
def bad_choices_exit_2() -> Iterator[None]:
    from hydra._internal import utils as hydra_utils

    report = hydra_utils.run_and_report

    def report_bad_choices(func: Callable):
        def composing():
            try:
                return func()
            except MissingConfigException as err:
                message = bad_choice_message(err)
                if message is None:
                    raise
                print(f"[g16net][ERROR] - {message}", file=sys.stderr)
                sys.exit(2)  # a SystemExit passes Hydra's report of Exceptions untouched

        return report(composing)

    hydra_utils.run_and_report = report_bad_choices
    try:
        yield
    finally:
        hydra_utils.run_and_report = report
