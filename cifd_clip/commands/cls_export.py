"""Export a trained classifier: a plain state_dict its own constructor loads (our zoo, or torchvision/timm's
model with its original keys) and a model card. IBMs, projections and optimizer state are left behind."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option, required


@dataclass
class Config:
    checkpoint: str = required("a checkpoint written by `cifd-clip cls-train` or `cifd-clip cls-distill`")
    out: str = required("output folder")
    overwrite: bool = option(False, "replace an earlier export in --out")


def run(cfg: Config) -> int:
    import torch

    from ..classify.models import export_state_dict, load_classifier
    from ..classify.zoo import ExternalNet
    from ..errors import UserError
    from ..file_io import read_torch_file, write_atomic, write_text_atomic
    from ..output_checks import check_folder_target

    out = check_folder_target(cfg.out, "--out")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite to replace an earlier export there")
    ckpt = read_torch_file(cfg.checkpoint, "checkpoint file")
    loaded = load_classifier(cfg.checkpoint)
    name = loaded.name.replace(":", "-")
    write_atomic(out / f"{name}.pt", lambda p: torch.save(export_state_dict(loaded), p))
    net = loaded.net
    if isinstance(net, ExternalNet):
        how = (f"torchvision.models.get_model('{net.name}', num_classes={loaded.num_classes}).load_state_dict("
               f"torch.load('{name}.pt'))" if net.source == "torchvision" else
               f"timm.create_model('{net.name}', num_classes={loaded.num_classes}).load_state_dict(torch.load('{name}.pt'))")
    else:
        how = (f"cifd_clip.classify.zoo.build_classifier('{loaded.name}', {loaded.num_classes}).load_state_dict("
               f"torch.load('{name}.pt'))")
    run_cfg = ckpt.get("config") or {}
    card = [f"# {ckpt.get('name') or name}", "", f"A {loaded.name} classifier ({loaded.num_classes} classes, "
            f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters) exported by cifd_clip.", "",
            f"- Method: `{run_cfg.get('loss', 'ce')}`; teacher: `{run_cfg.get('teacher') or run_cfg.get('cache') or 'none'}`",
            f"- Data: `{run_cfg.get('train_data', '?')}`; epochs completed: {ckpt.get('epoch', '?')}",
            f"- Input: {ckpt.get('preprocess_cfg', {})}", "", "Load it:", "", "```python", how, "```", ""]
    write_text_atomic(out / "README.md", "\n".join(card))
    print(f"exported {cfg.checkpoint} to {out / (name + '.pt')} (load: {how})")
    return 0
