"""Stage configs: YAML + command line, and errors that name the offending key (exit code 2)."""
import subprocess
import sys
from dataclasses import dataclass
from typing import List, Optional

import pytest
import yaml

from cifd_clip import config
from cifd_clip.errors import ConfigError


@dataclass
class ToyConfig:
    train_data: str = config.required("shards")
    batch_size: int = config.option(32, "batch size")
    lr: float = config.option(5e-4, "learning rate")
    local_loss: bool = config.option(False, "local loss")
    rates: List[float] = config.option([1.0, 0.5], "RDM rates")
    name: Optional[str] = config.option(None, "run name")
    precision: str = config.option("fp32", "precision", choices=["fp32", "amp", "bf16"])


def test_defaults_yaml_and_cli_layer_in_that_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train-data": "a.tar", "batch_size": 8, "lr": 1}))
    cfg = config.parse(ToyConfig, ["--config", str(path), "--batch-size", "16", "--rates", "3,2", "1",
                                   "--local-loss"])
    assert cfg.train_data == "a.tar" and cfg.batch_size == 16 and cfg.lr == 1.0
    assert cfg.rates == [3.0, 2.0, 1.0] and cfg.local_loss is True and cfg.name is None


def test_a_repeated_list_option_replaces_the_earlier_list_and_the_yaml_list(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train_data": "a.tar", "rates": [9.0]}))
    cfg = config.parse(ToyConfig, ["--config", str(path), "--rates", "3", "--rates", "2", "1"])
    assert cfg.rates == [2.0, 1.0]  # one value list per option, the later one wins


def test_saved_config_round_trips(tmp_path):
    cfg = config.parse(ToyConfig, ["--train-data", "x.tar", "--name", "run1"])
    saved = config.save(cfg, tmp_path / "out" / "config.yaml")
    assert config.parse(ToyConfig, ["--config", str(saved)]) == cfg


@pytest.mark.parametrize("content, key", [
    ({"train_data": "a", "batch_sise": 3}, "batch_sise"),
    ({"train_data": "a", "batch_size": "many"}, "batch_size"),
    ({"train_data": "a", "lr": [1, 2]}, "lr"),
    ({"train_data": "a", "local_loss": "perhaps"}, "local_loss"),
    ({"train_data": "a", "precision": "fp8"}, "precision"),
    ({"batch_size": 3}, "train_data"),
])
def test_yaml_errors_name_the_key(tmp_path, content, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=f"'{key}'") as info:
        config.parse(ToyConfig, ["--config", str(path)])
    assert info.value.exit_code == 2


def test_missing_required_on_command_line_names_the_option():
    with pytest.raises(ConfigError, match="--train-data"):
        config.parse(ToyConfig, [])


def test_cli_config_error_is_one_sentence_and_exit_2(tmp_path):
    from cifd_clip.cli import STAGES
    if not STAGES:
        pytest.skip("no stage registered yet")
    stage = STAGES[0][0]
    path = tmp_path / "bad.yaml"
    path.write_text("no_such_option: 1\n")
    proc = subprocess.run([sys.executable, "-m", "cifd_clip", stage, "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'no_such_option'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_stage_has_help_with_defaults(capsys):
    """The entry point's --help lists every stage (one real process); each stage's --help is parsed in this
    process, since twenty interpreter starts cost a minute of the suite."""
    from cifd_clip.cli import STAGES, build_parser
    proc = subprocess.run([sys.executable, "-m", "cifd_clip", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    parser = build_parser()
    for stage, _ in STAGES:
        assert stage in proc.stdout
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([stage, "--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0 and "--config" in out and "default:" in out, stage


def test_the_package_and_every_stage_module_import_without_torch():
    """`cifd-clip --help` stays fast: importing the package or any stage's options never loads torch."""
    from cifd_clip.cli import STAGES
    code = ("import sys, importlib, cifd_clip, cifd_clip.cli; "
            f"[importlib.import_module(m) for m in {[m for _, m in STAGES]!r}]; "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_entropy_models_import_without_a_warning_or_compressais_other_parts():
    """CompressAI's package import pulls in torch_geometric (~5 s at every stage's start) and warns about
    torch.jit.script; stages import only its entropy models, without either."""
    code = ("import sys, cifd_clip.core.rdm, cifd_clip.core.ibm, cifd_clip.engine.schedule; "
            "assert 'torch_geometric' not in sys.modules, 'torch_geometric imported'")
    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _declared(cls) -> dict:
    import dataclasses
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory(), dict(f.metadata))
            for f in dataclasses.fields(cls)}


def test_the_options_both_paths_read_are_declared_once_with_their_paths_defaults():
    """distill and cls-distill read CIFD's options (cifd_options.CIFDOptions), train-rdm and cls-train-rdm the RDM's
    (RDMArchitecture): the same help and choices on both paths, and a default that differs only where a table
    says why (PATH_DEFAULTS, CLASSIFIER_DEFAULTS)."""
    from cifd_clip.commands import cls_distill, cls_train_rdm, distill, train_rdm
    from cifd_clip.core.cifd_options import CIFDOptions, CLASSIFICATION, CLIP, PATH_DEFAULTS
    from cifd_clip.core.rdm_config import CLASSIFIER_DEFAULTS, RDMArchitecture

    cifd_defaults = {k: v[CLASSIFICATION] for k, v in PATH_DEFAULTS.items()}
    rdm_defaults = {k: v[0] for k, v in CLASSIFIER_DEFAULTS.items()}
    for base, clip_stage, cls_stage, cls_defaults in [
            (CIFDOptions, distill.Config, cls_distill.Config, cifd_defaults),
            (RDMArchitecture, train_rdm.Config, cls_train_rdm.Config, rdm_defaults)]:
        one, clip, cls = _declared(base), _declared(clip_stage), _declared(cls_stage)
        for name, (default, meta) in one.items():
            assert clip[name] == (default, meta), name
            assert cls[name] == (cls_defaults.get(name, default), meta), name
    assert {k: v[CLIP] for k, v in PATH_DEFAULTS.items()} == {k: _declared(CIFDOptions)[k][0] for k in PATH_DEFAULTS}
    assert _declared(cls_distill.Config)["ibm_weight"][0] == 0.005 and _declared(distill.Config)["ibm_weight"][0] == 1e-3


def test_a_classification_config_saved_with_a_zero_ibm_hidden_dim_still_loads(tmp_path):
    """0 was the classification path's 'one layer' before the option was shared (its config.yaml files hold it);
    --no-ibm with --ibm-weight is refused there too now, instead of the weight being silently dropped."""
    from cifd_clip.commands import cls_distill
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({"loss": "kd", "ibm_hidden_dim": 0, "model": "cnn2", "train_data": "cifar100:x",
                                    "cache": "c"}))
    cfg = config.parse(cls_distill.Config, ["--config", str(saved)])
    assert cfg.ibm_hidden_dim is None
    with pytest.raises(ConfigError, match="--no-ibm"):
        config.parse(cls_distill.Config, ["--model", "cnn2", "--train-data", "cifar100:x", "--cache", "c", "--no-ibm",
                                          "--ibm-weight", "0.1"])
