"""What the run and the backends both use, a level below both: the app's config (where it lives, its checks, the
run plan), the recipe's pieces, the types between the run and a backend, run-dir files and safety, the metrics.json
schema. Nothing here imports the run, a backend or an entry point (tests/test_layout.py)."""
