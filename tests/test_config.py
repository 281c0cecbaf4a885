"""params.yaml: strict validation with one-line errors naming the key."""

from __future__ import annotations

import pytest
import yaml

from e2essl.config import Params, load_params, params_from_dict
from e2essl.errors import ConfigError

from .conftest import REPO, run_cli


def test_repository_params_load_and_match_the_schema():
    params = load_params(REPO / "params.yaml")
    assert params.study.fractions == sorted(params.study.fractions)
    # Every section of the schema is spelled out in params.yaml, so users see every knob.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields)
    for section, model in Params.model_fields.items():
        assert set(raw[section]) == set(model.annotation.model_fields), section


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"pretrain": {"lrr": 0.1}}, "pretrain.lrr: unknown key"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"pretrain": {"lr": -0.1}}, "pretrain.lr: Input should be greater than 0 (got -0.1)"),
        ({"pretrain": {"epochs": "ten"}}, "pretrain.epochs: Input should be a valid integer"),
        ({"study": {"fractions": [0.1, 1.5]}}, "study.fractions.1: Input should be less than or equal to 1 (got 1.5)"),
        ({"study": {"seeds": []}}, "study.seeds: must not be empty"),
        ({"data": {"bad_pixels": "ignore"}}, "data.bad_pixels: Input should be 'error' or 'zero'"),
        ({"data": {"channels": 8}}, "data: channel_names has 3 entries but channels is 8"),
        ({"finetune": {"frozen_epochs": 50}}, "finetune.frozen_epochs (50) exceeds supervised.epochs (6)"),
    ],
)
def test_invalid_values_name_the_key(raw, expected):
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("params.yaml: ")
    assert expected in message


def test_yaml_scientific_notation_without_dot_is_accepted():
    # PyYAML reads `1e-3` as a string; it must still be taken as a number.
    params = params_from_dict(yaml.safe_load("pretrain:\n  lr: 1e-3\n"))
    assert params.pretrain.lr == pytest.approx(1e-3)


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d"):
        load_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_params(listy)


def test_cli_reports_invalid_params_in_one_line_and_fails(tmp_path):
    (tmp_path / "params.yaml").write_text("supervised:\n  epochs: -3\n")
    result = run_cli("prepare", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == ["e2essl prepare: error: params.yaml: supervised.epochs: Input should be greater than 0 (got -3)"]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("profile", ["params-full.yaml"])
def test_the_other_profiles_are_valid_and_spell_out_the_same_keys(profile):
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    other = yaml.safe_load((REPO / profile).read_text())
    assert {s: set(v) for s, v in other.items()} == {s: set(v) for s, v in default.items()}
    params = load_params(REPO / profile)
    assert len(params.study.seeds) >= 3 and min(params.study.fractions) <= 0.01 and max(params.study.fractions) == 1.0
    assert params.data.labelled != load_params(REPO / "params.yaml").data.labelled  # its own data files
