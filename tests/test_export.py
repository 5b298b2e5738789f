"""The exported student loads unchanged in open_clip and CLIP_benchmark, with the trained weights."""
import io
import json
import subprocess
import sys
import tarfile

import open_clip
import pytest
import torch
from PIL import Image

from cifd_clip.engine.checkpoint import build_checkpoint, save_atomic
from cifd_clip.errors import UserError
from cifd_clip.export.open_clip_folder import export_student, verify_export
from cifd_clip.clip_models import load_model


@pytest.fixture(scope="module")
def student_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    tower = load_model("tiny-vit-student")
    ibm = torch.nn.Linear(64, 128)  # stands for the distillation-only parts that must not be exported
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "epoch_2.pt"
    ckpt = build_checkpoint(epoch=2, step=40, name="cifd-run", model_name=tower.model_name, model_cfg=tower.model_cfg,
                            preprocess_cfg=tower.preprocess_cfg, state_dict=tower.model.state_dict(),
                            distill_state_dict={f"ibm_image.{k}": v for k, v in ibm.state_dict().items()},
                            optimizer={}, scheduler={}, scaler=None,
                            config={"train_data": "shards/{0..3}.tar", "cache": "cache/", "rdm": "rdm.pt"})
    save_atomic(ckpt, path)
    return path, tower


def _embeddings(model, tokenizer):
    model.eval()
    images = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    tokens = tokenizer(["a red circle", "two blue squares at the top", "a small green triangle"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_local_dir_export_reproduces_the_student(student_checkpoint, tmp_path):
    path, tower = student_checkpoint
    out = export_student(path, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["open_clip_config.json", "open_clip_model.safetensors", "open_clip_state_dict.pt", "tiny-vit-student.json",
         "README.md", ".cifd-clip-export"])
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    from safetensors.torch import load_file
    result = model.load_state_dict(load_file(str(out / "open_clip_model.safetensors")), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    got_img, got_txt = _embeddings(model, tokenizer)
    want_img, want_txt = _embeddings(tower.model, tower.tokenizer)
    assert (got_img - want_img).abs().max() < 1e-5 and (got_txt - want_txt).abs().max() < 1e-5
    assert not any(k.startswith("ibm") for k in load_file(str(out / "open_clip_model.safetensors")))
    assert verify_export(out, path) < 1e-5


def test_bare_state_dict_loads_with_pretrained(student_checkpoint, tmp_path):
    path, tower = student_checkpoint
    out = export_student(path, tmp_path / "export")
    open_clip.add_model_config(out / "tiny-vit-student.json")
    model, _, _ = open_clip.create_model_and_transforms("tiny-vit-student",
                                                        pretrained=str(out / "open_clip_state_dict.pt"))
    got_img, got_txt = _embeddings(model, open_clip.get_tokenizer("tiny-vit-student"))
    want_img, want_txt = _embeddings(tower.model, tower.tokenizer)
    assert (got_img - want_img).abs().max() < 1e-5 and (got_txt - want_txt).abs().max() < 1e-5


def test_model_card_names_data_and_includes_eval_table(student_checkpoint, tmp_path):
    path, _ = student_checkpoint
    table = tmp_path / "results.md"
    table.write_text("| dataset | acc1 |\n|---|---|\n| wds/demo | 42.0 |\n")
    out = export_student(path, tmp_path / "export", eval_results=table)
    card = (out / "README.md").read_text()
    assert "shards/{0..3}.tar" in card and "| wds/demo | 42.0 |" in card and "local-dir:" in card


def test_model_card_has_hugging_face_front_matter_and_no_absolute_paths(tmp_path):
    """What an upload to the Hub needs: library, license, tags and this checkpoint's metrics; no path of this machine."""
    import yaml

    tower = load_model("tiny-vit-student")
    root = tmp_path / "work"
    path = root / "runs" / "s" / "checkpoints" / "epoch_1.pt"
    save_atomic(build_checkpoint(epoch=1, step=4, name="s", model_name=tower.model_name, model_cfg=tower.model_cfg,
                                 preprocess_cfg=tower.preprocess_cfg, state_dict=tower.model.state_dict(),
                                 distill_state_dict={}, optimizer={}, scheduler={}, scaler=None,
                                 config={"train_data": str(root / "data" / "{0..3}.tar"), "cache": str(root / "cache"),
                                         "logs": str(root / "runs")}), path)
    bench = root / "bench"
    bench.mkdir()
    (bench / "results.md").write_text(f"| metric | {path} |\n|---|---|\n| acc1 | 42.00 |\n")
    (bench / "results.json").write_text(json.dumps({"models": ["/elsewhere/other.pt", str(path)], "results": [
        [{"status": "ok", "task": "zeroshot_classification", "dataset": "wds/x", "label": "X", "metrics": {"acc1": 0.1}}],
        [{"status": "ok", "task": "zeroshot_classification", "dataset": "wds/x", "label": "X",
          "metrics": {"acc1": 0.42, "acc5": None}}]]}))
    out = export_student(path, tmp_path / "export", eval_results=bench, license="apache-2.0")
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "open_clip" and meta["license"] == "apache-2.0" and "open_clip" in meta["tags"]
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"] == {"name": "X", "type": "wds/x"}
    assert result["metrics"] == [{"type": "acc1", "name": "acc1 (%)", "value": 42.0}]  # this checkpoint's column
    assert str(tmp_path) not in card and "data/{0..3}.tar" in card and "`cache`" in card


def test_non_student_and_corrupt_checkpoints_are_refused(tmp_path):
    torch.save({"epoch": 1, "rdms": {}}, tmp_path / "rdm.pt")
    with pytest.raises(UserError, match="not a cifd_clip student checkpoint"):
        export_student(tmp_path / "rdm.pt", tmp_path / "out")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UserError, match="corrupt"):
        export_student(tmp_path / "junk.pt", tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "cifd_clip", "export", "--checkpoint", str(tmp_path / "junk.pt"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "corrupt" in proc.stderr


def _write_classification_wds(root, n_classes=10, per_class=3):
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(f"thing {i}" for i in range(n_classes)) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n{c}\n")
    (root / "test" / "nshards.txt").write_text("1\n")
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i in range(n_classes * per_class):
            buf = io.BytesIO()
            Image.new("RGB", (48, 48), (25 * (i % 10), 100, 255 - 20 * (i % 10))).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("cls", str(i % n_classes).encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.slow
def test_clip_benchmark_evaluates_the_export(student_checkpoint, tmp_path):
    path, _ = student_checkpoint
    out = export_student(path, tmp_path / "export")
    root = tmp_path / "wds_set"
    _write_classification_wds(root)
    result = tmp_path / "cb.json"
    proc = subprocess.run(
        [sys.executable, "-m", "clip_benchmark.cli", "eval", "--model", f"local-dir:{out}", "--pretrained", "none",
         "--dataset", "wds/tiny", "--dataset_root", str(root), "--task", "zeroshot_classification",
         "--batch_size", "8", "--num_workers", "0", "--output", str(result)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(result.read_text())["metrics"]
    assert 0.0 <= metrics["acc1"] <= 1.0 and "acc5" in metrics
