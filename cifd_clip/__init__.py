"""cifd_clip: CIFD distillation (rate-distortion modules + information bottleneck) for open_clip models."""
from .towers import register_model_configs

register_model_configs()

__version__ = "0.1.0"
