"""Stage `embed`: the frozen teacher runs once over the shards and its embeddings are cached beside them.

teacher_run.py (the stage's work), cache.py (the cache's format, writers and readers), augment.py (replayable
crops + flips: the views the teacher saw and the student replays).
"""
