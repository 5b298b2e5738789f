"""Stage `distill`: the student, its teacher targets and the CIFD method (or a baseline).

settings.py (every method's weights as one torch-free object, the distill stage's options), methods.py (one
module per method, and the registry), distiller.py (what DDP wraps and the loop checkpoints), inputs.py (the
training stream the student sees). The loss terms, the IBM and the RDMs are the method core's (core/).
"""
