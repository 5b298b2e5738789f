"""Stage `export`: a distilled student as an open_clip `local-dir:` folder, a bare state_dict and a model card
(open_clip_folder.py)."""
