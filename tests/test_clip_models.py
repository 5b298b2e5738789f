"""Every model-spec form loads; bad specs get one sentence; the teacher stays frozen."""
import json

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cifd_clip.errors import UserError
from cifd_clip.clip_models import Teacher, load_model, read_state_dict


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return load_model("tiny-vit-student")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registered_name_builds_random_init(student):
    assert student.model_name == "tiny-vit-student"
    assert student.embed_dim == 64
    assert student.tokenizer(["a red circle"]).shape == (1, 24)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_training_checkpoint_with_prefixes_loads(student, tmp_path, prefix):
    sd = {prefix + k: v for k, v in student.model.state_dict().items()}
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "run", "state_dict": sd, "optimizer": {}}, path)
    loaded = load_model(f"tiny-vit-student@{path}")
    assert _same_weights(loaded.model, student.model)
    via_arg = load_model("tiny-vit-student", pretrained=str(path))
    assert _same_weights(via_arg.model, student.model)


def test_bare_state_dict_and_safetensors_load(student, tmp_path):
    torch.save(student.model.state_dict(), tmp_path / "bare.pt")
    assert _same_weights(load_model(f"tiny-vit-student@{tmp_path / 'bare.pt'}").model, student.model)
    save_file({k: v.contiguous() for k, v in student.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert _same_weights(load_model(f"tiny-vit-student@{tmp_path / 'w.safetensors'}").model, student.model)


def test_local_dir_loads_like_open_clip(student, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    cfg = {"model_cfg": student.model_cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in student.model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    tower = load_model(f"local-dir:{folder}")
    assert _same_weights(tower.model, student.model)
    assert tuple(tower.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)


def test_user_json_config_loads(tmp_path):
    cfg = open_clip.get_model_config("tiny-vit-student")
    cfg["embed_dim"] = 48
    path = tmp_path / "my-student.json"
    path.write_text(json.dumps(cfg))
    tower = load_model(str(path))
    img = torch.zeros(2, 3, 48, 48)
    assert tower.model.encode_image(img).shape == (2, 48)


def test_our_checkpoint_alone_is_a_spec(student, tmp_path):
    path = tmp_path / "student.pt"
    torch.save({"epoch": 1, "model_name": "tiny-vit-student", "model_cfg": student.model_cfg,
                "state_dict": student.model.state_dict()}, path)
    assert _same_weights(load_model(str(path)).model, student.model)


@pytest.mark.parametrize("spec, words", [
    ("no-such-model-xyz", "unknown model name"),
    ("tiny-vit-student@/nonexistent/ckpt.pt", "does not exist"),
    ("tiny-vit-student@notatag", "neither a file nor a pretrained tag"),
    ("/nonexistent/config.json", "does not exist"),
])
def test_bad_specs_give_one_sentence(spec, words):
    with pytest.raises(UserError, match=words) as info:
        load_model(spec)
    assert "\n" not in str(info.value)


def test_directory_without_local_dir_prefix_is_explained(tmp_path):
    with pytest.raises(UserError, match="local-dir:"):
        load_model(str(tmp_path))


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        load_model(f"tiny-vit-student@{bad}")


def test_checkpoint_for_another_model_is_refused(tmp_path):
    other = load_model("tiny-rn-student")
    torch.save(other.model.state_dict(), tmp_path / "rn.pt")
    with pytest.raises(UserError, match="does not fit model"):
        load_model(f"tiny-vit-student@{tmp_path / 'rn.pt'}")


def test_pretrained_tag_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub's own setting, as on a machine without network
    with pytest.raises(UserError, match=f"no copy of RN50@openai's weights is in the local cache \\({tmp_path}\\) "
                                        f"and HF_HUB_OFFLINE is set"):
        load_model("RN50@openai", cache_dir=str(tmp_path))


def _hub_cache(cache, repo: str, tower) -> None:
    """A Hugging Face cache holding REPO in open_clip's hub format, laid out as huggingface_hub lays it out."""
    from safetensors.torch import save_file

    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": tower.model_cfg,
                                                                "preprocess_cfg": tower.preprocess_cfg}))
    save_file({k: v.contiguous().clone() for k, v in tower.model.state_dict().items()},
              str(snapshot / "open_clip_model.safetensors"))


def test_hf_hub_model_in_the_cache_loads_without_the_network(monkeypatch, tmp_path):
    """hf-hub:ORG/REPO from --cache-dir, with HF_HUB_OFFLINE unset: a cache hit never asks the hub."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a hub that would refuse every request
    torch.manual_seed(3)
    source = load_model("tiny-vit-student")
    _hub_cache(tmp_path, "someone/tiny-clip", source)
    tower = load_model("hf-hub:someone/tiny-clip", cache_dir=str(tmp_path))
    assert tower.embed_dim == 64 and tower.model_cfg == source.model_cfg
    assert torch.equal(tower.model.state_dict()["text_projection"], source.model.state_dict()["text_projection"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="no copy of hf-hub:someone/elsewhere is in the local cache"):
        load_model("hf-hub:someone/elsewhere", cache_dir=str(tmp_path))


def test_read_state_dict_refuses_pickled_objects(tmp_path):
    import argparse
    path = tmp_path / "ns.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(UserError, match="could not read checkpoint"):
        read_state_dict(path)


def test_teacher_stays_frozen_and_in_eval_mode():
    teacher = Teacher(load_model("tiny-vit-teacher"))
    holder = torch.nn.ModuleDict({"teacher": teacher, "head": torch.nn.Linear(2, 2)})
    holder.train()
    assert not teacher.training and not teacher.model.training
    assert all(not m.training for m in teacher.model.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher.encode_image(torch.randn(2, 3, 64, 64))
    assert not out.requires_grad
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_teacher_and_student_encode_the_same_raw_batch():
    teacher = Teacher(load_model("tiny-vit-teacher"))
    student = load_model("tiny-vit-student")
    images = [Image.new("RGB", (80, 60), (200, 30, 30)), Image.new("RGB", (64, 64), (10, 10, 240))]
    captions = ["a red square", "a blue circle on the left"]
    t_img = torch.stack([teacher.preprocess(im) for im in images])
    s_img = torch.stack([student.preprocess_val(im) for im in images])
    assert t_img.shape[-1] == 64 and s_img.shape[-1] == 48
    t_tok, s_tok = teacher.tokenizer(captions), student.tokenizer(captions)
    assert t_tok.shape[1] == 32 and s_tok.shape[1] == 24
    assert teacher.encode_image(t_img).shape == (2, 128) and teacher.encode_text(t_tok).shape == (2, 128)
    assert student.model.encode_image(s_img).shape == (2, 64) and student.model.encode_text(s_tok).shape == (2, 64)
