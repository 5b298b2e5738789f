"""CompressAI's entropy models, imported without the rest of CompressAI.

`import compressai` runs its package __init__, which imports every submodule: the point-cloud datasets pull
in torch_geometric, about 5 s per process (every stage, every torchrun rank, every test subprocess) and a
FutureWarning (`torch.jit.script` is deprecated) that users would see. We need only `entropy_models` (and
what it imports: `compressai._CXX`, `compressai.ops`), so when CompressAI is not imported yet the package is
registered from its own __init__ minus the line that imports every submodule (its entropy-coder settings
stay), and Python imports just those submodules from it. A later `import compressai.<anything>` still works
(submodules load from the same folder on demand). If the __init__ does not have the expected shape (another
CompressAI version), CompressAI is imported the ordinary way.
"""
import importlib.util
import re
import sys
import types
import warnings

_IMPORT_ALL = re.compile(r"^from compressai import \([^)]*\)\n", re.MULTILINE)


def _register_light_package(name: str = "compressai") -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations or not spec.origin:
        return  # not installed: the import below names the missing package
    with open(spec.origin) as f:
        source = f.read()
    light, replaced = _IMPORT_ALL.subn("", source)
    if replaced != 1:
        return
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__, package.__file__, package.__package__ = spec, spec.origin, name
    sys.modules[name] = package
    try:
        exec(compile(light, spec.origin, "exec"), package.__dict__)
    except Exception:
        del sys.modules[name]


if "compressai" not in sys.modules:
    _register_light_package()

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck, EntropyModel

__all__ = ["EntropyBottleneck", "EntropyModel"]
