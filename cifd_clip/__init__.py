"""cifd_clip: CIFD distillation (rate-distortion modules + information bottleneck) for open_clip models.

Importing the package is cheap (no torch, no open_clip): stages import what they need when they run.
"""
__version__ = "0.1.0"
