"""open_clip_train's training-option names are accepted as aliases of ours, with their meaning."""
from __future__ import annotations

from cifd_clip.config import parse


def test_open_clip_train_names_set_our_options():
    from cifd_clip.commands.distill import Config as Distill
    from cifd_clip.commands.train import Config as Train

    cfg = parse(Train, ["--train-data", "x.tar", "--model", "tiny-vit-student", "--lr-scheduler", "step",
                        "--lr-decay-epochs", "1", "--log-every-n-steps", "100", "--save-frequency", "2",
                        "--report-to", "tensorboard", "--wandb-project-name", "p", "--delete-previous-checkpoint",
                        "--save-most-recent"])
    assert (cfg.lr_schedule, cfg.log_every_steps, cfg.save_every_epochs) == ("step", 100, 2)
    assert cfg.report_to == "tensorboard" and cfg.wandb_project_name == "p"
    assert cfg.delete_previous_checkpoint and cfg.save_most_recent
    cfg = parse(Distill, ["--train-data", "x.tar", "--model", "tiny-vit-student", "--distill-model", "ViT-L-14",
                          "--distill-pretrained", "openai", "--teacher-online"])
    assert (cfg.teacher, cfg.teacher_pretrained, cfg.teacher_online) == ("ViT-L-14", "openai", True)


def test_the_aliases_are_listed_in_help():
    import argparse

    from cifd_clip.commands.train import Config
    from cifd_clip.config import build_parser

    text = build_parser(Config, argparse.ArgumentParser()).format_help()
    for name in ("--lr-scheduler", "--log-every-n-steps", "--save-frequency", "--report-to"):
        assert name in text, name


def test_open_clip_trains_low_precision_weights_train_and_load_back(demo_train_spec, tmp_path):
    """--precision bf16: the student's matmul and conv weights in bf16, its norms and logit scale in fp32 (open_clip's
    convert_weights_to_lp); pure_bf16: every weight; both train (finite weights, AdamW moments in bf16) and open_clip loads the
    checkpoint into its fp32 model."""
    import open_clip
    import torch

    from cifd_clip.cli import main
    from cifd_clip.clip_models import register_model_configs

    for precision in ("bf16", "pure_bf16"):
        assert main(["train", "--model", "tiny-vit-student", "--train-data", demo_train_spec, "--batch-size", "8",
                     "--workers", "0", "--logs", str(tmp_path), "--name", precision, "--precision", precision,
                     "--stop-after-steps", "2"]) == 0
        path = tmp_path / precision / "checkpoints" / "step_2.pt"
        sd = torch.load(path, weights_only=True)["state_dict"]
        dtypes = {k: v.dtype for k, v in sd.items() if v.is_floating_point()}
        assert dtypes["visual.conv1.weight"] == dtypes["transformer.resblocks.0.mlp.c_fc.weight"] == torch.bfloat16
        low = precision == "pure_bf16"
        assert (dtypes["logit_scale"] == torch.bfloat16) == low and (dtypes["ln_final.weight"] == torch.bfloat16) == low
        assert all(torch.isfinite(v.float()).all() for v in sd.values() if v.is_floating_point())
        register_model_configs()
        model = open_clip.create_model_and_transforms("tiny-vit-student", pretrained=str(path))[0]
        assert model.visual.conv1.weight.dtype == torch.float32
        moments = [st["exp_avg"] for st in torch.load(path, weights_only=True)["optimizer"]["state"].values()]
        assert moments and any(m.dtype == torch.bfloat16 and m.abs().sum() > 0 for m in moments)  # AdamW stepped them
