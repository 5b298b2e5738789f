"""Stage `embed`: the frozen teacher runs once over the shards and its embeddings are cached beside them.

teacher_run.py (the stage's work). The cache's format is data/embedding_cache.py and the views data/augment.py.
"""
