"""g16net: G16-EfficientNet with batch-independent normalization and half-resolution training."""

from .core.config import ConfigError
from .core.version import __version__
from .models import create_model, fold_for_inference
from .run.loader import load_run, run_config

__all__ = ["ConfigError", "__version__", "create_model", "fold_for_inference", "load_run", "run_config"]
