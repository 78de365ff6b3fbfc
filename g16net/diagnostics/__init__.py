"""Power analysis of activations (docs/diagnostics.md): E[y^2] split into channel-mean, instance-mean and
within-instance power, at every norm layer of a model, through forward hooks."""

from .power import TERMS, power_terms
from .taps import TAPS, diagnose_model, norm_layers

__all__ = ["TAPS", "TERMS", "diagnose_model", "norm_layers", "power_terms"]
