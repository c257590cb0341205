"""Config presets, overrides and their errors."""

from __future__ import annotations

import re

import pytest

from harp_kaolin.config import LOSSES, PARAM_GROUPS, load_config


def test_paper_preset_matches_table_c1():
    cfg = load_config("harp")
    assert cfg.image_size == 448 and cfg.texture_size == 512
    assert [(s.name, s.epochs) for s in cfg.stages] == [("geometry", 100), ("joint", 50), ("appearance", 50)]
    geo, joint, app = cfg.stages
    assert geo.weights == {
        "silhouette": 7.0,
        "keypoints": 10.0,
        "displacement": 2.0,
        "laplacian": 4.0,
        "normal_consistency": 0.1,
        "arap": 0.2,
    }
    assert joint.weights["photometric"] == 1.0 and joint.weights["perceptual"] == 1.0
    assert joint.weights["albedo_smoothness"] == 2.0 and joint.weights["normal_smoothness"] == 0.5
    assert set(geo.lr.values()) == {1e-3} and app.lr == {
        "albedo": 1e-2,
        "normal_map": 1e-2,
        "light": 1e-2,
        "ambient": 1e-2,
    }
    for s in cfg.stages:
        assert set(s.lr) <= set(PARAM_GROUPS) and set(s.weights) <= set(LOSSES)


def test_demo_preset_loads():
    cfg = load_config("demo")
    assert cfg.image_size <= 128 and len(cfg.stages) == 3


def test_overrides_any_field():
    cfg = load_config(
        "harp",
        [
            "image_size=64",
            "stages.0.epochs=3",
            "init.steps=10",
            "stages.1.weights.photometric=2.5",
            "light_init=[0.1, 0.2, 0.3]",
        ],
    )
    assert cfg.image_size == 64 and cfg.stages[0].epochs == 3 and cfg.init.steps == 10
    assert cfg.stages[1].weights["photometric"] == 2.5 and cfg.light_init == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    "override, message",
    [
        ("image_sise=64", "unknown field(s) ['image_sise']"),
        ("stages.0.lr.posee=0.1", "unknown parameter group 'posee'"),
        ("stages.0.weights.silhouete=1", "unknown loss 'silhouete'"),
        ("image_size", "must look like key=value"),
    ],
)
def test_bad_override_names_the_field(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config("harp", [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
