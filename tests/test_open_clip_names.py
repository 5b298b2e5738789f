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
