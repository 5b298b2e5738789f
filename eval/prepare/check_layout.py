"""Check which datasets of a suite are laid out correctly, without running a model.

    python eval/prepare/check_layout.py eval/suites/paper.yaml --dataset-root-base DATA
Prints, per dataset, the number of images and classes found, or why it is missing or unreadable.
"""
import argparse
import sys

from cifd_clip.errors import UserError
from cifd_clip.evaluation.datasets import DatasetMissing, build_dataset
from cifd_clip.evaluation.suite import fill_root, load_suite


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--dataset-root-base", default=None)
    args = parser.parse_args()
    try:
        suite = load_suite(args.suite)
        base = args.dataset_root_base if args.dataset_root_base is not None else suite["dataset_root_base"]
        problems = 0
        for entry in suite["datasets"]:
            root = fill_root(entry["root"], base)
            try:
                dataset, info = build_dataset(entry["name"], root, None, entry["task"], **entry["options"])
                classes = sum(info.class_mask) if info.class_mask else len(info.classnames or [])
                size = info.num_samples if info.num_samples is not None else f"{info.extra.get('nshards')} shards of"
                print(f"ok       {entry['label']:<14} {size} images" + (f", {classes} classes" if classes else "")
                      + f"  ({root})")
            except DatasetMissing as e:
                problems += 1
                print(f"missing  {entry['label']:<14} looked in {e.path}")
            except UserError as e:
                problems += 1
                print(f"broken   {entry['label']:<14} {e}")
    except UserError as e:
        sys.exit(f"check_layout: error: {e}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
