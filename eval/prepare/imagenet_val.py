"""Lay out ImageNet-1k val as class folders (ROOT/val/<wnid>/*.JPEG) from the official download.

Put ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz (from image-net.org, after you accept
its terms) into ROOT, then run:  python eval/prepare/imagenet_val.py ROOT
The devkit's ground truth assigns each of the 50,000 images to its wnid folder; torchvision's
ImageNet parser does the work (it checks the archives' MD5 and needs scipy for the devkit's meta.mat).
Nothing is downloaded. Afterwards: cifd-clip eval --dataset imagenet1k --dataset-root ROOT ...
"""
import argparse
import sys
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding the two archives; val/ is written there")
    root = parser.parse_args().root
    from torchvision.datasets.imagenet import ARCHIVE_META, parse_devkit_archive, parse_val_archive

    missing = [ARCHIVE_META[k][0] for k in ("val", "devkit") if not (root / ARCHIVE_META[k][0]).is_file()]
    if missing:
        sys.exit(f"{root} lacks {', '.join(missing)}; download it from image-net.org first")
    if not (root / "meta.bin").is_file():
        parse_devkit_archive(str(root))
    if not (root / "val").is_dir():
        parse_val_archive(str(root))  # reads the val wnids from meta.bin
    folders = sorted(p for p in (root / "val").iterdir() if p.is_dir())
    images = sum(1 for f in folders for _ in f.iterdir())
    print(f"{root / 'val'}: {len(folders)} class folders, {images} images (expected 1000 and 50000)")


if __name__ == "__main__":
    main()
