"""The package's version, recorded in every metrics.json and eval.json; kept equal to pyproject.toml's."""

__version__ = "0.1.0"
