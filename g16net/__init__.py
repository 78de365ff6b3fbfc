"""g16net: G16-EfficientNet with batch-independent normalization and half-resolution training."""

from .models import create_model, fold_for_inference
from .run_loader import load_run

__version__ = "0.1.0"
__all__ = ["create_model", "fold_for_inference", "load_run"]
