"""`cifd-clip make-shards` (a CSV/TSV or a folder of images and captions into img2dataset-layout shards) and
sample counts from img2dataset's own `NNNNN_stats.json`, each read back with the real training loader."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cifd_clip.cli import main
from cifd_clip.data.loader import make_train_loader
from cifd_clip.data.preflight import preflight
from cifd_clip.data.shards import count_samples, expand_urls, iter_samples, write_shard
from cifd_clip.errors import DataError


def _image(path: Path, size=(40, 30), colour=(200, 30, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def _truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def _read_back(out: Path, transforms, batch_size=1):
    """Every (key, caption) the real training loader yields for the shards in `out`, and its sample count."""
    preprocess, tokenizer = transforms
    names = sorted(p.name for p in out.glob("*.tar"))
    spec = str(out / (f"{{{names[0][:-4]}..{names[-1][:-4]}}}.tar" if len(names) > 1 else names[0]))
    info = make_train_loader(spec, preprocess=preprocess, tokenizer=tokenizer, batch_size=batch_size, workers=0,
                             seed=0)
    keys = sorted(k for batch in info.iterate(0) for k in batch["key"])
    captions = {s["key"]: s["text"] for s in iter_samples(spec)}
    return spec, info, keys, captions


def test_csv_into_shards_read_back_by_the_loader_as_open_clip_train_reads_the_csv(tmp_path, student_transforms,
                                                                                    monkeypatch):
    images = tmp_path / "data" / "images"
    rows = []
    for i in range(6):
        _image(images / f"im{i}.jpg", colour=(40 * i, 10, 10))
        rows.append((f"images/im{i}.jpg", f"a red square number {i}"))
    _image(images / "big.png", size=(50, 20), fmt="PNG")
    rows.append((str(images / "big.png"), "an absolute path, with a comma"))   # absolute paths work too
    _truncated_jpeg(images / "broken.jpg")
    rows.append(("images/broken.jpg", "a corrupt image"))
    rows.append(("images/gone.jpg", "a file that does not exist"))
    rows.append(("images/im0.jpg", ""))                                         # no caption
    csv_file = tmp_path / "data" / "train.tsv"
    csv_file.write_text("filepath\ttitle\textra\n" + "".join(f"{p}\t{c}\tx\n" for p, c in rows))
    out = tmp_path / "shards"

    assert main(["make-shards", "--input", str(csv_file), "--out", str(out), "--samples-per-shard", "4"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "00000.tar", "00000_stats.json", "00001.tar", "00001_stats.json", "00002_stats.json",  # every input of
        "make_shards.json", "sizes.json"]                                                       # 00002 was bad
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"00000.tar": 4, "00001.tar": 3}
    stats = [json.loads((out / f"0000{n}_stats.json").read_text()) for n in range(3)]
    assert [s["count"] for s in stats] == [4, 4, 2]
    assert [s["successes"] for s in stats] == [4, 3, 0]
    assert all(s["count"] == s["successes"] + s["failed_to_download"] + s["failed_to_resize"] for s in stats)
    assert stats[1]["skipped"] == {"undecodable_image": 1}
    assert stats[2]["skipped"] == {"missing_image": 1, "missing_caption": 1}
    assert "broken.jpg" in stats[1]["skipped_examples"]["undecodable_image"][0]

    spec, info, keys, captions = _read_back(out, student_transforms)
    assert info.num_samples == 7 and keys == sorted(captions) and len(keys) == 7
    assert captions["000000"] == "a red square number 0" and captions["000012"] == "an absolute path, with a comma"
    assert keys == ["000000", "000001", "000002", "000003", "000010", "000011", "000012"]
    assert info.bad_report()["bad"] == 0
    assert preflight(spec, workers=0, world_size=1).num_samples == 7
    # PNG stored as it was, with img2dataset's metadata fields in KEY.json
    raw = {s["key"]: s for s in iter_samples(spec)}
    assert raw["000012"]["image"].size == (50, 20)

    # open_clip_train's CsvDataset reads the same rows (its paths are relative to the current folder)
    from open_clip_train.data import CsvDataset
    monkeypatch.chdir(csv_file.parent)
    theirs = CsvDataset(str(csv_file), transforms=lambda im: im, img_key="filepath", caption_key="title", sep="\t")
    assert [str(p) for p in theirs.images] == [p for p, _ in rows]
    assert [str(c) for c in theirs.captions][:7] == [c for _, c in rows][:7]


def test_folder_into_shards_resized_and_resumed(tmp_path, student_transforms):
    src = tmp_path / "photos"
    _image(src / "a.jpg", size=(60, 30)); (src / "a.txt").write_text("a wide photo\n")
    _image(src / "b.png", size=(20, 40), fmt="PNG"); (src / "b.txt").write_text("a tall one")
    _image(src / "sub" / "c.bmp", size=(33, 33), fmt="BMP"); (src / "sub" / "c.txt").write_text("a bitmap")
    _image(src / "sub" / "d.webp", size=(24, 24), fmt="WEBP"); (src / "sub" / "d.txt").write_text("a webp")
    (src / "e.jpg").write_bytes(b"not a jpeg at all"); (src / "e.txt").write_text("corrupt")
    _image(src / "f.jpg"); (src / "orphan.txt").write_text("a caption whose image is gone")
    (src / ".hidden.jpg").write_bytes(b"ignored")
    out = tmp_path / "out"
    argv = ["make-shards", "--input", str(src), "--out", str(out), "--samples-per-shard", "3",
            "--image-size", "16", "--resize-mode", "center_crop"]
    assert main(argv) == 0
    spec, info, keys, captions = _read_back(out, student_transforms)
    assert sorted(captions.values()) == ["a bitmap", "a tall one", "a webp", "a wide photo"]
    assert info.num_samples == 4 and len(keys) == 4
    assert all(s["image"].size == (16, 16) for s in iter_samples(spec))
    skipped = {}
    for f in out.glob("*_stats.json"):
        for reason, n in json.loads(f.read_text())["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert skipped == {"undecodable_image": 1, "missing_caption": 1, "missing_image": 1}

    # the third shard (the orphan caption alone) has no sample: a stats file and no tar
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar"]
    assert json.loads((out / "00002_stats.json").read_text())["successes"] == 0
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 2}

    # a killed run: two stats files never written; the rerun keeps the complete shard untouched
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tar")}
    (out / "00001_stats.json").unlink()
    (out / "00002_stats.json").unlink()
    (out / "sizes.json").unlink()
    assert main(argv) == 0
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tar")}
    assert after["00000.tar"] == before["00000.tar"]                       # kept, not rewritten
    assert after["00001.tar"][1] == before["00001.tar"][1]                 # rewritten, byte for byte the same
    assert after["00001.tar"][0] != before["00001.tar"][0] and sorted(after) == sorted(before)
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 2}

    # other settings into the same folder need --overwrite, which replaces the shards
    assert main(argv[:5] + ["--samples-per-shard", "10"]) == 1
    assert main(argv[:5] + ["--samples-per-shard", "10", "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar"]
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 4}


def test_several_workers_write_the_same_shards(tmp_path):
    src = tmp_path / "src"
    for i in range(5):
        _image(src / f"{i}.png", size=(10 + i, 12), fmt="PNG"); (src / f"{i}.txt").write_text(f"image {i}")
    (src / "5.jpg").write_bytes(b"broken"); (src / "5.txt").write_text("broken")
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        assert main(["make-shards", "--input", str(src), "--out", str(out), "--samples-per-shard", "2",
                     "--workers", str(workers), "--image-size", "8"]) == 0
        outs[workers] = {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}
        assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 2, "00002.tar": 1}
    assert outs[1] == outs[2] and len(outs[1]) == 3


def test_every_input_bad_is_an_error_after_counting(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.jpg").write_bytes(b"junk"); (src / "x.txt").write_text("junk")
    assert main(["make-shards", "--input", str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "none of the 1 inputs" in err and "undecodable_image=1" in err and "Traceback" not in err
    assert json.loads((tmp_path / "out" / "00000_stats.json").read_text())["failed_to_resize"] == 1


def _img2dataset_folder(folder: Path, counts: list[int], stats: bool = True) -> str:
    """Shards as img2dataset writes them (KEY.jpg, KEY.txt, KEY.json) with its NNNNN_stats.json, no sizes.json."""
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="JPEG")
    for shard, n in enumerate(counts):
        write_shard(folder / f"{shard:05d}.tar",
                    [{"__key__": f"{shard:05d}{i:04d}", "jpg": buf.getvalue(), "txt": f"caption {shard} {i}",
                      "json": json.dumps({"url": f"http://x/{i}.jpg", "key": f"{shard:05d}{i:04d}",
                                          "status": "success", "error_message": None})} for i in range(n)])
        if stats:  # img2dataset's logger.write_stats, field for field
            (folder / f"{shard:05d}_stats.json").write_text(json.dumps({
                "count": n + 3, "successes": n, "failed_to_download": 2, "failed_to_resize": 1,
                "duration": 1.5, "start_time": 1700000000.0, "end_time": 1700000001.5,
                "status_dict": {"success": n, "Name or service not known": 2, "image decoding error": 1},
            }, indent=4))
    return str(folder / f"{{00000..{len(counts) - 1:05d}}}.tar")


def test_raw_img2dataset_output_is_counted_from_its_stats_files(tmp_path, student_transforms):
    spec = _img2dataset_folder(tmp_path / "laion", [5, 4, 3])
    assert not (tmp_path / "laion" / "sizes.json").exists()
    assert count_samples(expand_urls(spec)) == 12
    assert preflight(spec, workers=0, world_size=1).num_samples == 12
    preprocess, tokenizer = student_transforms
    info = make_train_loader(spec, preprocess=preprocess, tokenizer=tokenizer, batch_size=4, workers=0, seed=0)
    assert info.num_samples == 12 and info.num_batches == 3
    assert len([k for batch in info.iterate(0) for k in batch["key"]]) == 12
    # a subset of the shards counts only its own
    assert count_samples(expand_urls(str(tmp_path / "laion" / "{00000..00001}.tar"))) == 9
    # sizes.json, when there is one, wins
    (tmp_path / "laion" / "sizes.json").write_text('{"00000.tar": 5, "00001.tar": 4, "00002.tar": 2}')
    assert count_samples(expand_urls(spec)) == 11


def test_a_shard_without_its_stats_file_cannot_be_counted(tmp_path, student_transforms):
    spec = _img2dataset_folder(tmp_path / "partial", [3, 3])
    (tmp_path / "partial" / "00001_stats.json").unlink()   # img2dataset had not finished that shard
    assert count_samples(expand_urls(spec)) is None
    preprocess, tokenizer = student_transforms
    with pytest.raises(DataError, match="give --train-num-samples"):
        make_train_loader(spec, preprocess=preprocess, tokenizer=tokenizer, batch_size=2, workers=0, seed=0)
    (tmp_path / "partial" / "00000_stats.json").write_text('{"count": 3}')
    with pytest.raises(DataError, match="00000_stats.json is not an img2dataset stats file"):
        count_samples(expand_urls(str(tmp_path / "partial" / "00000.tar")))
