"""One training run: `runner` (data, plan, phases on the chosen backend, metrics.json), its loggers, the loader that
rebuilds a finished run's model, and the report of a sweep's failed jobs. Entry point: `python -m g16net.train`."""
