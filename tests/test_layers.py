"""The package's layers (DEVELOPERS.md, "Where things live"): a module imports only from its own layer or below,
the method core imports no stage, and the classification path imports nothing of the CLIP stages."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifd_clip"
LAYERS = [
    {"errors", "config", "file_io", "output_checks", "runlog", "entropy", "hub", "model_configs"},  # foundations
    {"clip_models", "data"},  # models and data on disk
    {"engine"},  # the training loop
    {"evaluation"},  # the evaluation tasks (eval, bench, evaluation during training)
    {"core"},  # the method: losses, IBM, RDM modules, how the RDMs teach, the distiller's base
    {"distill", "classify", "embed", "rdm", "export", "plan", "launch"},  # the stages, peers
    {"demo", "commands"},
    {"cli", "__main__", "__init__"},
]
CLIP_STAGES = {"distill", "embed", "rdm"}


def imported_units(path: Path) -> set[str]:
    """The top-level units of cifd_clip (sub-package or module) that a file imports."""
    package = path.relative_to(PACKAGE).parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = list(package)[:len(package) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [a.name for a in node.names[:1]])
        elif node.module and node.module.startswith("cifd_clip."):
            parts = node.module.split(".")[1:]
        else:
            continue
        if parts:
            found.add(parts[0].removesuffix(".py"))
    return found


def layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def imports_by_unit() -> dict[str, dict[str, set[str]]]:
    """{unit: {imported unit: the files that import it}}."""
    found: dict[str, dict[str, set[str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for other in imported_units(path) - {unit}:
            found.setdefault(unit, {}).setdefault(other, set()).add(str(path.relative_to(PACKAGE)))
    return found


def test_every_unit_has_a_layer():
    units = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert units <= set().union(*LAYERS), f"put {sorted(units - set().union(*LAYERS))} in a layer of LAYERS"


def test_no_import_runs_up_the_layers():
    upward = [f"{unit} -> {other} ({', '.join(sorted(files))})"
              for unit, others in imports_by_unit().items() for other, files in others.items()
              if layer_of(other) > layer_of(unit)]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_the_classification_path_imports_no_clip_stage():
    imported = imports_by_unit().get("classify", {})
    assert not CLIP_STAGES & set(imported), {u: imported[u] for u in CLIP_STAGES & set(imported)}


def test_the_method_core_imports_no_stage():
    imported = set(imports_by_unit().get("core", {}))
    assert all(layer_of(u) < layer_of("core") for u in imported), imported


def test_each_loss_row_names_its_method_class():
    """A method is its class plus one row of METHODS (both paths): the row's class resolves, and the facts the
    row states are what the built method says."""
    from cifd_clip.classify.methods import ClassifyMethod, method_class as cls_method_class
    from cifd_clip.classify.settings import METHODS as CLS_METHODS
    from cifd_clip.distill.methods import Method, build_method, method_class
    from cifd_clip.distill.settings import METHODS, LossSettings

    assert all(issubclass(cls_method_class(name), ClassifyMethod) for name in CLS_METHODS)
    assert all(issubclass(method_class(name), Method) for name in METHODS)
    built = build_method(LossSettings(loss="cifd"), student_dim=8, teacher_dims=(8, 8), num_rdms=2)
    assert built.uses_rdms and built.needs_teacher
    assert not build_method(LossSettings(loss="contrastive"), student_dim=8).needs_teacher
