"""Did a change move any number? Compare two output folders of the same commands, made by two revisions.

    git worktree add /tmp/before REV                                         # the revision before the change
    (cd /tmp/before && python studies/gap_cls.py --out /tmp/a/gap --quick)   # and the same in the new tree, -> /tmp/b
    (cd /tmp/before && python -m cifd_clip demo --out /tmp/a/demo)            # (each tree runs its own package)
    python studies/same_numbers.py /tmp/a /tmp/b

Every `results.json` and `summary.json` under the first folder is compared number by number with its
counterpart (timings, throughputs and paths aside), and every checkpoint (`*.pt`) tensor by tensor with
torch.equal. Prints one line per file; exits 1 when a number or a tensor differs or a file is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# keys whose values differ between two runs of the same command (times, speeds, where the run lay); a key that
# ends in "_s" is in seconds
UNSTABLE = ("second", "wall", "time", "throughput", "samples_per", "command", "checkpoint", "path", "date")


def unstable(key) -> bool:
    return str(key).endswith("_s") or any(word in str(key) for word in UNSTABLE)


def numbers(obj, prefix: str = ""):
    """(key path, value) of every number in a JSON document, keys naming timings or paths left out."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not unstable(key):
                yield from numbers(value, f"{prefix}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from numbers(value, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix, obj


def tensors(obj, prefix: str = ""):
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from tensors(value, f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from tensors(value, f"{prefix}[{i}]")


def differences(first: Path, second: Path) -> tuple[int, list[str]]:
    """How many numbers (or tensors) the first file holds, and the key paths where the second differs."""
    if first.suffix == ".json":
        a, b = (dict(numbers(json.loads(p.read_text()))) for p in (first, second))
        return len(a), sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    import torch

    a, b = (dict(tensors(torch.load(p, map_location="cpu", weights_only=False))) for p in (first, second))
    return len(a), sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k]))


def compare(before: Path, after: Path) -> bool:
    files = sorted(p for pattern in ("results.json", "summary.json", "*.pt") for p in before.rglob(pattern))
    if not files:
        print(f"{before} holds no results.json, summary.json or checkpoint")
        return False
    same = True
    for path in files:
        rel = path.relative_to(before)
        if not (after / rel).is_file():
            print(f"{rel}: missing in {after}")
            same = False
            continue
        count, differ = differences(path, after / rel)
        kind = "tensors" if path.suffix == ".pt" else "numbers"
        print(f"{rel}: {count} {kind}, " + ("identical" if not differ else f"{len(differ)} differ: "
                                             + ", ".join(differ[:5])))
        same = same and not differ
    return same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="outputs of the revision before the change")
    parser.add_argument("after", type=Path, help="the same commands' outputs after it")
    args = parser.parse_args(argv)
    return 0 if compare(args.before, args.after) else 1


if __name__ == "__main__":
    sys.exit(main())
