"""Backends: what runs a phase on some hardware. Peers chosen by `backend=<name>`, each a class with one surface
(its types `Device`, `Phase` and `Fitted` are in `g16net.core.backend_api`, which the run imports too):

    Backend(cfg, run_dir)                  checks its own config keys; `.device` says what it runs on
    .fit(model, phase, logger) -> Fitted   trains `model` in place for one `Phase` (leaves the averaged weights)
    .evaluate(model, views, stats, num_classes, logger) -> [{resolution, top1, top5, loss, ...}]
                                           one row per (resolution, val dataset) of `views`
    .protocol(batch) -> dict               how `throughput` measures (recorded in metrics.json)
    .throughput(model, protocol, train_res, test_res) -> (train img/s, {res: infer img/s})   model compute only

The run (`g16net.run.runner.run`) owns everything else: data, the run plan, the recipe's pieces (optimizer section,
Mixup, weight average, which layers train), resume files and metrics.json. A backend module is imported only when
chosen, so the default path never touches PopTorch.
"""

import importlib

BACKENDS = {"lightning": "g16net.backends.lightning:LightningBackend", "ipu": "g16net.backends.ipu:IPUBackend"}


def get_backend(name: str) -> type:
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)
