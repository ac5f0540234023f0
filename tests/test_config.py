"""Config validation: every bad parameter is named with its value and what is allowed."""

from dataclasses import dataclass

import pytest

from viscoin_core.config import (ConfigError, config_from, load_config, param, parse_config, read_params, repo_root,
                                 resolve_path, to_dict)


@dataclass
class Example:
    cache_dir: str = param(help="required path: no default")
    lr: float = param(1e-4, low=0, low_open=True)
    steps: int = param(10, low=1)
    mode: str = param("paper", choices=("paper", "code"))
    taus: tuple[float, ...] = param((0.1, 0.2))
    note: str | None = param(None)

    def __post_init__(self):
        if self.steps > 1000 and self.mode == "code":
            raise ConfigError("steps > 1000 needs mode 'paper'")


def test_valid_params_fill_defaults_and_coerce():
    cfg = parse_config(Example, {"cache_dir": "x", "lr": 1, "taus": [0.5]})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.taus == (0.5,) and cfg.steps == 10 and cfg.note is None
    assert to_dict(cfg)["taus"] == [0.5]


@pytest.mark.parametrize("params, words", [
    ({"cache_dir": "x", "lrr": 1.0}, ["unknown", "lrr", "allowed keys"]),
    ({"cache_dir": "x", "steps": 2.5}, ["steps", "2.5", "int"]),
    ({"cache_dir": "x", "steps": True}, ["steps", "True"]),
    ({"cache_dir": "x", "lr": 0.0}, ["lr", "(0"]),
    ({"cache_dir": "x", "steps": 0}, ["steps", "[1"]),
    ({"cache_dir": "x", "mode": "other"}, ["mode", "other", "paper"]),
    ({"lr": 1.0}, ["required", "cache_dir"]),
    ({"cache_dir": "x", "steps": 5000, "mode": "code"}, ["steps > 1000"]),
])
def test_bad_params_name_key_and_value(params, words):
    with pytest.raises(ConfigError) as err:
        parse_config(Example, params, source="cell")
    for word in words:
        assert word in str(err.value)
    assert "cell" in str(err.value)


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("cache_dir: c\nsteps: -3\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(Example, path)
    assert load_config(Example, path, steps=3).steps == 3
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Example, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Example, tmp_path / "list.yaml")


def test_repo_root_found_from_a_subfolder():
    root = repo_root()
    assert (root / "pyproject.toml").is_file()
    assert repo_root(root / "viscoin_core" / "nets") == root


def test_extends_merges_base_and_detects_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("cache_dir: c\nsteps: 5\nlr: 0.1\n")
    (tmp_path / "row.yaml").write_text("extends: base.yaml\nsteps: 7\n")
    cfg = load_config(Example, tmp_path / "row.yaml")
    assert (cfg.cache_dir, cfg.steps, cfg.lr) == ("c", 7, 0.1)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Example, tmp_path / "a.yaml")


def test_extends_a_list_merges_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("cache_dir: a\nsteps: 1\nlr: 0.5\n")
    (tmp_path / "b.yaml").write_text("steps: 2\n")
    (tmp_path / "row.yaml").write_text("extends: [a.yaml, b.yaml]\nlr: 0.25\n")
    assert read_params(tmp_path / "row.yaml") == {"cache_dir": "a", "steps": 2, "lr": 0.25}
    (tmp_path / "bad.yaml").write_text("extends: [a.yaml, 3]\n")
    with pytest.raises(ConfigError, match="bad.yaml.*extends"):
        read_params(tmp_path / "bad.yaml")


def test_relative_paths_resolve_against_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("params/smoke/viscoin.yaml") == repo_root() / "params/smoke/viscoin.yaml"
    assert resolve_path(tmp_path / "x") == tmp_path / "x"


def test_config_from_an_instance_a_mapping_or_a_file(tmp_path):
    @dataclass
    class Two:
        a: int = param(1)
        b: str = param("x")
    assert config_from(Two, Two(a=3)) == Two(a=3)
    assert config_from(Two, {"a": 2}) == Two(a=2)
    (tmp_path / "p.yaml").write_text("b: y\n")
    assert config_from(Two, tmp_path / "p.yaml") == Two(b="y")
    with pytest.raises(ConfigError, match="mine: unknown parameter"):
        config_from(Two, {"c": 1}, source="mine")
