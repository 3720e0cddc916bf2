"""Config: YAML + command-line overrides, with errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_transfer.cli import main, overrides_from_args
from hf_transfer.config import load_config, to_yaml
from hf_transfer.errors import ConfigError

from conftest import REPO, tiny_overrides

REQUIRED = ["data.path=some/images", "model.name=resnet18"]


def test_unknown_key_names_the_key_suggests_and_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, [*REQUIRED, "train.epoch=3"])
    message = str(error.value)
    assert "'train.epoch'" in message and "Did you mean 'train.epochs'?" in message
    assert "Valid keys in 'train':" in message and "batch_size" in message and "lr" in message


def test_unknown_section_suggests_the_close_section() -> None:
    with pytest.raises(ConfigError, match=r"Unknown config key 'trian'.*Did you mean 'train'\?.*augment, compare, data, model"):
        load_config(None, [*REQUIRED, "trian.epochs=3"])


def test_unknown_key_in_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  path: x\n  pth: y\nmodel:\n  name: resnet18\n")
    with pytest.raises(ConfigError, match=rf"'data.pth' in config file {path}.*Did you mean 'data.path'"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=three", r"Invalid value for 'train.epochs'.*'three'"),
        ("train.lr=-0.1", r"'train.lr': -0.1\. It must be > 0"),
        ("train.lr=0", r"'train.lr': 0.0\. It must be > 0"),
        ("train.optimizer=adam", r"'train.optimizer': 'adam'\. Valid values: adamw, sgd"),
        ("model.strategy=everything", r"Valid values: scratch, feature_extraction, partial, full"),
        ("data.val_fraction=1.5", r"'data.val_fraction': 1.5\. It must be in \(0, 1\)"),
        ("augment.scale=[0.9,0.2]", r"'augment.scale'.*0 < min <= max <= 1"),
        ("train.batch_size=10", r"multiple of 'train.grad_accum_steps' \(4\)"),
    ],
)
def test_bad_values_are_rejected_with_the_key_and_the_rule(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [*REQUIRED, "train.grad_accum_steps=4", "train.batch_size=32", override])


def test_missing_required_key_says_how_to_set_it() -> None:
    with pytest.raises(ConfigError, match=r"'data.path' has no value.*--data.path VALUE"):
        load_config(None, ["model.name=resnet18"])


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "does not exist"), ("data: [unclosed", "not valid YAML"), ("- a\n- b\n", "must hold a mapping")],
)
def test_config_file_problems_name_the_file(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_command_line_flags_become_overrides() -> None:
    tokens = ["--train.epochs", "3", "--data.path=./my images", "--output.resume", "--train.lr", "-1e-3"]
    assert overrides_from_args(tokens) == ["train.epochs=3", "data.path=./my images", "output.resume=true", "train.lr=-1e-3"]
    with pytest.raises(ConfigError, match="Unexpected argument 'stray'"):
        overrides_from_args(["stray"])


def test_overrides_win_over_the_file_and_the_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "quickstart.yaml", ["train.epochs=7", "augment.scale=[0.5,1.0]"])
    assert config.train.epochs == 7 and config.augment.scale == [0.5, 1.0]
    saved = tmp_path / "resolved.yaml"
    saved.write_text(to_yaml(config))
    assert load_config(saved) == config


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    load_config(path)


def test_cli_reports_config_errors_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--train.lr", "-1", "--output.dir", str(tmp_path)])
    assert code == 2
    assert "train.lr" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_print_config_shows_the_resolved_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [f"--{o}" for o in tiny_overrides(tmp_path, train__epochs=4)]
    assert main(["--print-config", *args]) == 0
    assert "epochs: 4" in capsys.readouterr().out


def test_readme_documents_every_config_key() -> None:
    import re
    from dataclasses import fields

    from hf_transfer.config import Config

    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"`((?:data|augment|model|train|output|compare)\.[a-z_]+)`", readme))
    keys = {f"{section.name}.{key.name}" for section in fields(Config) for key in fields(section.default_factory)}
    assert keys - documented == set(), "README's config reference misses these keys"


def test_mixed_precision_no_survives_yaml_reading_it_as_false() -> None:
    from hf_transfer.config import load_config

    config = load_config(REPO / "configs" / "quickstart.yaml", ["train.mixed_precision=no"])
    assert config.train.mixed_precision == "no"


@pytest.mark.parametrize(
    "overrides, policy",
    [
        ([], "eval_frozen"),
        (["model.strategy=feature_extraction", "model.unfreeze={5: all}"], "eval"),  # keeps pretrained statistics
        (["model.strategy=feature_extraction", "model.unfreeze={5: all}", "model.bn_policy=train"], "train"),
    ],
)
def test_bn_policy_auto_keeps_pretrained_statistics_through_an_unfreeze(overrides: list[str], policy: str) -> None:
    assert load_config(None, [*REQUIRED, *overrides]).model.bn_policy == policy
