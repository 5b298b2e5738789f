"""Stages `train-rdm` and `cls-train-rdm`: Rate-Distortion Modules trained on cached teacher outputs, and their
report.

The RDM modules themselves are in core/ (rdm.py, rdm_config.py). clip_stage.py and classifier_stage.py hold
each stage's work (their commands are shells), training.py (one pass over the cache trains the whole family;
held-out evaluation), report.py (table, JSON, rate-distortion plot). Zero-shot scoring of the RDMs without the
teacher reads evaluation/cached_zeroshot.py (the set embed stores in the cache).
"""
