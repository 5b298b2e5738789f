"""How the RDMs' reconstructions teach the student: `--rdm-teaching`, read by CIFD on both paths.

The paper puts every target's term on one student output Û. For a squared distance that is one target in
disguise: Σ_k λ_k‖Û − X_k‖² = (Σλ)·‖Û − X̄‖² + const, X̄ the λ-weighted mean of the targets, and the same holds
for the KD terms (a KL is linear in its target distribution). The other forms give each rate its own effect:

- `mean`: the paper's form (above).
- `curriculum`: the teacher-assistant idea in time. The targets' weights move during training from the
  lowest-rate RDM through the higher ones to the teacher (the last quarter of the run is the teacher's
  alone); at any moment two neighbouring targets share the same total weight the paper's form gives.
- `stochastic`: each RDM teaches a fresh noisy code per step, dec(enc(X) + U(−½, ½)), instead of its rounded
  one: a different reconstruction of the same sample every step.
- `heads`: one light head per target (the same kind of map as the IBM decoder, dropped at export like it), so
  each target is matched by its own projection of the student's embedding instead of one shared output.

Torch-free, so that the settings (core/cifd_options.py) can declare the option.
"""
from __future__ import annotations

FORMS = {
    "mean": "the paper's: every target on one student output (in effect the targets' weighted mean)",
    "curriculum": "weights move from the lowest-rate RDM to the teacher during training (the last quarter is "
                  "the teacher's alone), at the same total weight",
    "stochastic": "each RDM teaches a fresh noisy code per step, dec(enc(X) + U(-1/2, 1/2)), not its rounded one",
    "heads": "one head per target (teacher and each RDM) on the student's bottlenecked embedding, dropped at "
             "export",
}
CURRICULUM_TEACHER_ONLY = 0.25  # the last fraction of the run where the teacher alone teaches


def curriculum_scale(num_rdms: int, progress: float) -> list[float]:
    """Multipliers of each target's weight at training progress in [0, 1], the teacher first and then the RDMs in
    rate order (the order of the loss terms). Their sum is num_rdms + 1, as the paper's all-ones; at most two
    neighbouring targets on the path RDM_1 → … → RDM_N → teacher are non-zero."""
    if num_rdms == 0:
        return [1.0]
    path = list(range(1, num_rdms + 1)) + [0]  # the term indices from the weakest target to the teacher
    where = min(1.0, max(0.0, progress) / (1.0 - CURRICULUM_TEACHER_ONLY)) * num_rdms
    scale = [0.0] * (num_rdms + 1)
    lower = min(int(where), num_rdms - 1)
    frac = where - lower
    scale[path[lower]] += (num_rdms + 1) * (1.0 - frac)
    scale[path[lower + 1]] += (num_rdms + 1) * frac
    return scale
