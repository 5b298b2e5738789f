"""The dataset builder on small fake folders: class subsets, ObjectNet's mapping, Karpathy splits, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from open_clip import IMAGENET_CLASSNAMES

from cifd_clip.errors import ConfigError, DataError, UserError
from cifd_clip.evaluation.datasets import DatasetMissing, build_dataset
from cifd_clip.evaluation.imagenet_wnids import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS
from test_eval_support import write_image


def identity(image):
    return image


def fake_class_folders(root, names, per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        for i in range(per_class):
            write_image(root / name / f"img{i}.JPEG", rng)
    return root


def class_name_of_each_sample(dataset, info):
    names = [c for c, keep in zip(info.classnames, info.class_mask or [True] * len(info.classnames)) if keep]
    return [names[label] for _, label in dataset.samples]


def test_wnid_lists_are_clip_benchmarks():
    import importlib.util
    from pathlib import Path
    pytest.importorskip("clip_benchmark")
    script = Path(__file__).resolve().parents[1] / "eval" / "prepare" / "regenerate_wnid_lists.py"
    spec = importlib.util.spec_from_file_location("regenerate_wnid_lists", script)
    regenerate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regenerate)
    lists = regenerate.read_lists()
    assert list(IMAGENET_WNIDS) == lists["IMAGENET_WNIDS"] and len(IMAGENET_WNIDS) == 1000
    assert list(IMAGENET_R_WNIDS) == lists["IMAGENET_R_WNIDS"] and len(IMAGENET_R_WNIDS) == 200
    assert list(IMAGENET_A_WNIDS) == lists["IMAGENET_A_WNIDS"] and len(IMAGENET_A_WNIDS) == 200


@pytest.mark.parametrize("name, subset", [("imagenet-r", IMAGENET_R_WNIDS), ("imagenet-a", IMAGENET_A_WNIDS)])
def test_200_class_sets_label_each_folder_with_its_imagenet_class(tmp_path, name, subset):
    wnids = [subset[0], subset[77], subset[199]]  # only some folders present: labels must not shift
    root = fake_class_folders(tmp_path / name, wnids)
    dataset, info = build_dataset(name, root, identity)

    assert len(info.classnames) == 1000 and sum(info.class_mask) == 200
    assert [IMAGENET_WNIDS[i] for i, keep in enumerate(info.class_mask) if keep] == sorted(subset)
    expected = [IMAGENET_CLASSNAMES[IMAGENET_WNIDS.index(w)] for w in wnids for _ in range(2)]
    assert class_name_of_each_sample(dataset, info) == expected


def test_a_folder_outside_the_200_classes_is_rejected(tmp_path):
    outside = next(w for w in IMAGENET_WNIDS if w not in IMAGENET_R_WNIDS)
    root = fake_class_folders(tmp_path / "r", [IMAGENET_R_WNIDS[0], outside])
    with pytest.raises(DataError, match=outside):
        build_dataset("imagenet-r", root, identity)


def test_imagenet1k_val_folders_and_imagenetv2_number_folders(tmp_path):
    root = fake_class_folders(tmp_path / "in1k" / "val", [IMAGENET_WNIDS[5], IMAGENET_WNIDS[999]])
    dataset, info = build_dataset("imagenet1k", tmp_path / "in1k", identity)
    assert [label for _, label in dataset.samples] == [5, 5, 999, 999]
    assert info.class_mask is None and len(info.templates) == 80

    # "10" sorts before "2" as a string; labels must come from the number
    v2 = fake_class_folders(tmp_path / "v2" / "ImageNetV2-matched-frequency", ["0", "10", "2"], per_class=1)
    dataset, info = build_dataset("imagenetv2", tmp_path / "v2", identity)
    assert sorted(label for _, label in dataset.samples) == [0, 2, 10]
    assert all(p.parent.name == str(label) for p, label in dataset.samples)
    assert v2.is_dir()


def write_fake_objectnet(root, seed=0):
    """ObjectNet's layout with consistent (made-up) mapping files: 6 mapped classes, 1 unmapped folder."""
    mappings = root / "objectnet-1.0" / "mappings"
    mappings.mkdir(parents=True)
    imagenet_names = [f"imagenet thing {i}" for i in range(1000)]
    pytorch_to_2012 = {str(i): (i * 7) % 1000 for i in range(1000)}  # a permutation, like the real file
    (mappings / "imagenet_to_label_2012_v2").write_text("\n".join(imagenet_names) + "\n")
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(pytorch_to_2012))
    labels = {f"folder_{c}": f"Label {c.upper()}" for c in "fedcba"}
    labels["folder_z"] = "Unmapped Thing"
    (mappings / "folder_to_objectnet_label.json").write_text(json.dumps(labels))
    to_imagenet = {f"Label {c.upper()}": f"imagenet thing {10 * k}; imagenet thing {10 * k + 1}"
                   for k, c in enumerate("abcdef")}
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps(to_imagenet))
    rng = np.random.default_rng(seed)
    for folder in labels:
        for i in range(2):
            write_image(root / "objectnet-1.0" / "images" / folder / f"{i}.png", rng, size=30)
    return root, pytorch_to_2012


def test_objectnet_uses_the_mapped_classes_like_clip_benchmark(tmp_path):
    root, pytorch_to_2012 = write_fake_objectnet(tmp_path / "objectnet")
    dataset, info = build_dataset("objectnet", root, identity, border_crop=2)

    assert info.classnames == [f"label {c}" for c in "abcdef"]  # the unmapped folder is left out
    assert len(dataset) == 12
    assert {p.parent.name for p, _ in dataset.samples} == {f"folder_{c}" for c in "abcdef"}
    id2012_to_pytorch = {v: int(k) for k, v in pytorch_to_2012.items()}
    assert info.extra["folder_to_imagenet"]["folder_a"] == [id2012_to_pytorch[0], id2012_to_pytorch[1]]
    assert sum(info.extra["imagenet_class_mask"]) == 12
    image, _ = dataset[0]
    assert image.size == (26, 26)  # 2 px off each side of a 30 px image

    clip_benchmark_objectnet = pytest.importorskip("clip_benchmark.datasets.objectnet")
    import shutil
    for f in (root / "objectnet-1.0" / "mappings").iterdir():  # CLIP_benchmark reads the mappings from ROOT
        shutil.copy(f, root / f.name)
    reference = clip_benchmark_objectnet.ObjectNetDataset(str(root), transform=None)
    assert reference.classes == info.classnames
    assert sorted((p, label) for p, label in reference.samples) == sorted((str(p), label) for p, label in dataset.samples)


def write_karpathy(root, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(4):
        write_image(root / "flickr30k-images" / f"{1000 + i}.jpg", rng)
        images.append({"filename": f"{1000 + i}.jpg", "split": "test" if i < 3 else "train",
                       "sentences": [{"raw": f"caption {j} of image {i} ."} for j in range(6 if i == 0 else 5)]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return root


def test_karpathy_test_split_with_five_captions_per_image(tmp_path):
    root = write_karpathy(tmp_path / "flickr")
    dataset, info = build_dataset("flickr30k", root, identity)
    assert info.task == "zeroshot_retrieval" and len(dataset) == 3  # the train image is left out
    assert [len(captions) for _, captions in dataset.samples] == [5, 5, 5]
    assert dataset.samples[0][1][0] == "caption 0 of image 0 ."
    every, _ = build_dataset("flickr30k", root, identity, captions_per_image=0)
    assert every.samples[0][1][5] == "caption 5 of image 0 ."

    (root / "flickr30k-images" / "1001.jpg").unlink()
    with pytest.raises(DataError, match="1 of the 3 images"):
        build_dataset("flickr30k", root, identity)


def test_custom_folder_set_with_class_names_and_templates_files(tmp_path):
    root = fake_class_folders(tmp_path / "pets", ["cat", "dog", "guinea_pig"], per_class=1)
    dataset, info = build_dataset("folder:pets", root, identity)
    assert info.classnames == ["cat", "dog", "guinea pig"]

    (tmp_path / "names.txt").write_text("tabby cat\nsmall dog\nguinea pig\n")
    (tmp_path / "templates.txt").write_text("a photo of my {c}.\n")
    _, info = build_dataset("folder", root, identity, classnames_file=tmp_path / "names.txt",
                            templates_file=tmp_path / "templates.txt")
    assert info.classnames[0] == "tabby cat" and info.templates == ["a photo of my {c}."]

    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(ConfigError, match="names 2 classes but .* has 3 class folders"):
        build_dataset("folder", root, identity, classnames_file=tmp_path / "two.txt")
    (tmp_path / "bad_templates.txt").write_text("a photo of something.\n")
    with pytest.raises(ConfigError, match="has no {c}"):
        build_dataset("folder", root, identity, templates_file=tmp_path / "bad_templates.txt")


def test_missing_unknown_and_mismatched_sets_fail_with_one_sentence(tmp_path):
    with pytest.raises(DatasetMissing) as missing:
        build_dataset("imagenet-a", tmp_path / "nowhere", identity)
    assert missing.value.path == tmp_path / "nowhere" and str(tmp_path / "nowhere") in str(missing.value)
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet-z'"):
        build_dataset("imagenet-z", tmp_path, identity)
    root = write_karpathy(tmp_path / "flickr")
    with pytest.raises(UserError, match="is a retrieval set"):
        build_dataset("flickr30k", root, identity, "zeroshot_classification")
    (tmp_path / "wds").mkdir()
    with pytest.raises(DataError, match="nshards.txt is missing"):
        build_dataset("wds/x", tmp_path / "wds", identity)
    for error in (missing.value,):
        assert "\n" not in str(error)


def test_unreadable_data_fails_with_one_sentence_naming_the_file(tmp_path):
    from cifd_clip.evaluation.runner import evaluate_model_on_dataset
    from cifd_clip.clip_models import load_model

    torch.set_num_threads(1)
    root = fake_class_folders(tmp_path / "pets", ["cat", "dog"], per_class=1)
    (root / "dog" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError) as error:  # raised inside a DataLoader worker, reported without its traceback
        evaluate_model_on_dataset(load_model("tiny-vit-student"), "folder", root, batch_size=4, workers=1,
                                  show_progress=False)
    assert "\n" not in str(error.value) and f"could not read image {root / 'dog' / 'broken.jpg'}" in str(error.value)


@pytest.mark.slow
def test_imagenet_r_matches_clip_benchmark_on_all_200_folders(tmp_path):
    """End to end on a full (1 image per class) ImageNet-R folder: CLIP_benchmark's builder and metrics."""
    pytest.importorskip("clip_benchmark")
    from clip_benchmark.datasets.builder import build_dataset as cb_build_dataset
    from clip_benchmark.metrics import zeroshot_classification

    from cifd_clip.evaluation.runner import evaluate_model_on_dataset
    from cifd_clip.clip_models import load_model

    torch.set_num_threads(1)
    root = fake_class_folders(tmp_path / "imagenet-r", IMAGENET_R_WNIDS, per_class=1)
    torch.manual_seed(0)
    tower = load_model("tiny-vit-student")
    ours = evaluate_model_on_dataset(tower, "imagenet-r", root, batch_size=50, workers=0, show_progress=False)
    reference_set = cb_build_dataset("imagenet-r", root=str(root), transform=tower.preprocess_val, split="test")
    loader = torch.utils.data.DataLoader(reference_set, batch_size=50)
    reference = zeroshot_classification.evaluate(tower.model, loader, tower.tokenizer, reference_set.classes,
                                                 reference_set.templates, "cpu", amp=False)
    for metric in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours["metrics"][metric] == pytest.approx(reference[metric], abs=0.001), metric


def test_retrieval_numbers_do_not_depend_on_the_number_of_loader_workers(tmp_path):
    """Workers interleave shards and duplicate captions tie exactly: file order is restored before ranking.
    Here every caption is the same and images have 1 to 4 of them, so which images reach the top K depends
    on the order the texts come in."""
    from test_eval_support import _write_shards, image_bytes

    from cifd_clip.evaluation.runner import evaluate_model_on_dataset
    from cifd_clip.clip_models import load_model

    rng = np.random.default_rng(0)
    samples = [{"__key__": f"s{i:07d}", "jpg": image_bytes(rng, fmt="JPEG"), "txt": "\n".join(["a photo."] * (1 + i % 4))}
               for i in range(16)]
    _write_shards(tmp_path / "test", samples, 4)
    (tmp_path / "dataset_type.txt").write_text("retrieval\n")
    torch.manual_seed(0)
    tower = load_model("tiny-vit-student")
    runs = [evaluate_model_on_dataset(tower, "wds/dup", tmp_path, batch_size=2, workers=workers,
                                      show_progress=False)["metrics"] for workers in (0, 2, 4)]
    assert runs[0] == runs[1] == runs[2]
