"""Efficiency tools: `measure` (params, MACs, throughput, saved activation memory, one protocol for runs and
benchmarks) and `bench` (the benchmark grid of our models next to timm peers). Entry point: `python -m g16net.bench`."""
