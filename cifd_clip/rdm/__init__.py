"""Stage `train-rdm`: Rate-Distortion Modules, their training on cached teacher embeddings, and their report.

config.py (torch-free settings), model.py (RateDistortionModule, RDMFamily), training.py (one pass over the
cache trains the whole family; held-out evaluation), zeroshot.py (zero-shot scoring without the teacher),
report.py (table, JSON, rate-distortion plot).
"""
