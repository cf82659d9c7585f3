"""The SuperSegmentation network: encoders, heads and the model that joins them."""

from .encoders import ENCODERS
from .heads import CELL
from .superseg import DEFAULT_CONFIG, HEADS, SuperSegmentation, model_config

__all__ = ["CELL", "DEFAULT_CONFIG", "ENCODERS", "HEADS", "SuperSegmentation", "model_config"]
