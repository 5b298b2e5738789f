"""The demo: every `cifd-clip` stage run in order on the built-in data, then one report.

steps.py (cls_steps.py) lists the steps (which stage, which recipe, which paths), execute.py runs each as a
subprocess with its own log, report.py turns the outputs into the side-by-side table and plots.
"""
