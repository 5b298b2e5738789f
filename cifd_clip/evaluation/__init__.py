"""Zero-shot evaluation: classification (zeroshot.py), retrieval (retrieval.py), datasets (datasets.py),
one model on one set (runner.py) and suites of sets (suite.py). Metrics and output match CLIP_benchmark."""
