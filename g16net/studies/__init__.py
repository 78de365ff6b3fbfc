"""Studies over many runs: `collect` (run dirs -> results CSVs), `results` (their columns, seed means, Pareto fronts)
and `figs` (paper-style figures). Entry points: `python -m g16net.collect`, `python -m g16net.figs`."""
