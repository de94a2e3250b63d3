"""config/seg.yaml is the one source of defaults; bad keys and types name the key and file."""

import pytest

from seg_perception.config import (
    ConfigError,
    SegConfig,
    default_config_path,
    load_config,
    read_params_file,
)


def test_shipped_file_defines_every_key_and_nothing_else():
    params = read_params_file(default_config_path())
    assert set(params) == set(SegConfig.names())
    cfg = load_config()
    assert cfg.model == "gun" and cfg.network_height == 512 and cfg.network_width == 1024


def test_every_key_has_a_description():
    for key in SegConfig.names():
        assert len(SegConfig.description(key)) > 10, key


def _write(tmp_path, body: str):
    path = tmp_path / "user.yaml"
    path.write_text("seg_node:\n  ros__parameters:\n" + body)
    return path


def test_user_file_overrides_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, "    model: shelfnet\n    overlay_alpha: 1\n"))
    assert cfg.model == "shelfnet"
    assert cfg.overlay_alpha == 1.0 and isinstance(cfg.overlay_alpha, float)
    assert cfg.network_width == 1024  # untouched keys keep the shipped default


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "    modle: gun\n")
    with pytest.raises(ConfigError, match=r"user\.yaml.*'modle'"):
        load_config(path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = _write(tmp_path, "    network_height: 'big'\n")
    with pytest.raises(ConfigError, match=r"user\.yaml.*network_height.*int.*str"):
        load_config(path)
    with pytest.raises(ConfigError, match="threads"):
        load_config(_write(tmp_path, "    threads: true\n"))


def test_choices_and_ranges(tmp_path):
    with pytest.raises(ConfigError, match="model.*gun, shelfnet"):
        load_config(_write(tmp_path, "    model: resnet\n"))
    with pytest.raises(ConfigError, match="overlay_alpha.*<= 1"):
        load_config(_write(tmp_path, "    overlay_alpha: 2.0\n"))
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(_write(tmp_path, "    network_height: 500\n"))


def test_nested_sections_and_wildcard(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("/**:\n  ros__parameters:\n    device: cpu\n")
    assert read_params_file(path) == {"device": "cpu"}
    other = tmp_path / "o.yaml"
    other.write_text("other_node:\n  ros__parameters:\n    a: 1\n")
    with pytest.raises(ConfigError, match="no 'seg_node:'"):
        read_params_file(other)
    with pytest.raises(ConfigError, match="not found"):
        read_params_file(tmp_path / "missing.yaml")


def test_nested_sections_are_dotted_parameters(tmp_path):
    assert "panoptic.every_n" in SegConfig.names() and "fusion.method" in SegConfig.names()
    cfg = load_config(
        _write(tmp_path, "    panoptic:\n      every_n: 3\n    fusion:\n      method: baseline\n")
    )
    assert cfg.panoptic.every_n == 3 and cfg.fusion.method == "baseline"
    assert cfg.get("panoptic.every_n") == 3 and cfg.flat()["fusion.method"] == "baseline"
    assert cfg.panoptic.mode == "async"  # shipped default kept
    with pytest.raises(ConfigError, match=r"user\.yaml.*'panoptic\.evry_n'"):
        load_config(_write(tmp_path, "    panoptic:\n      evry_n: 3\n"))
    with pytest.raises(ConfigError, match=r"fusion\.method.*heuristic, baseline"):
        load_config(_write(tmp_path, "    fusion:\n      method: magic\n"))
