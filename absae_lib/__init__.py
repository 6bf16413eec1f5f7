"""absae: sparse autoencoders as one step of proximal gradient, and the AbsTopK SAE.

The names below are the stable public API; the modules hold the rest.
"""

from absae_lib import prox
from absae_lib.sae import ARCHITECTURES, SAE, SAEConfig
from absae_lib.streaming import ActivationStream
from absae_lib.train import TrainConfig, train_sae


def load_model(*args, **kwargs):
    """``absae_lib.models.load_model``, imported lazily (TransformerLens is slow to import)."""
    from absae_lib.models import load_model as _load_model

    return _load_model(*args, **kwargs)


__all__ = ["ARCHITECTURES", "ActivationStream", "SAE", "SAEConfig", "TrainConfig", "load_model", "prox", "train_sae"]
