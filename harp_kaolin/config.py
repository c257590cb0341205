"""Configuration dataclasses; YAML presets in ``configs/`` load into them; ``key=value`` overrides any field.

The three paper stages are a list of ``StageConfig`` (name, epochs, learning rate per parameter group,
weight per loss), not three code paths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAM_GROUPS = (
    "pose",
    "global_orient",
    "transl",
    "shape",
    "displacement",
    "albedo",
    "normal_map",
    "light",
    "ambient",
)
LOSSES = (
    "silhouette",
    "keypoints",
    "displacement",
    "laplacian",
    "normal_consistency",
    "arap",
    "photometric",
    "perceptual",
    "albedo_smoothness",
    "normal_smoothness",
)


@dataclass
class StageConfig:
    name: str = "geometry"  # shown in the progress bar and checkpoints
    epochs: int = 1  # passes over all frames, in minibatches of FitConfig.batch_frames
    lr: dict[str, float] = field(default_factory=dict)  # parameter group -> Adam learning rate
    weights: dict[str, float] = field(default_factory=dict)  # loss name -> weight (missing = 0)


@dataclass
class InitConfig:
    steps: int = 300  # Adam steps of the keypoint fit
    lr: float = 0.02  # Adam learning rate of the keypoint fit
    restarts: int = 3  # extra attempts for frames whose residual stays above restart_threshold
    restart_threshold: float = 0.01  # m, mean keypoint residual above which a frame is retried (HARP: 1 cm)
    use_3d: bool = True  # fit keypoints3d when present
    use_2d: bool = True  # fit keypoints2d (confidence-weighted reprojection) when present
    weight_2d: float = 1e-3  # weight of the squared pixel residual relative to the squared meter one (x 1e4)
    pose_prior: float = 1e-3  # L2 on the finger rotation vectors
    shape_prior: float = 1e-2  # L2 on the shape logits
    smooth: float = 0.0  # temporal smoothness of pose, rotation and translation between frames
    fit_shape: bool = True  # fit the shared shape to the keypoints


@dataclass
class FitConfig:
    hand: str = "anny"  # anny | anny_arm | mano
    hand_options: dict[str, Any] = field(default_factory=dict)  # e.g. {model_path: MANO_RIGHT.pkl}
    subdivide: int = 1  # levels of linear midpoint subdivision
    image_size: int = 448  # longest image side used for fitting (frames and camera are rescaled)
    texture_size: int = 512  # albedo and normal map resolution
    batch_frames: int = 8  # frames per Adam step
    device: str = "cpu"  # cpu | cuda
    seed: int = 0  # seeds minibatch order, smoothness offsets and anything random
    backend: str = "warp"  # rasterizer: warp | torch | kaolin
    shadows: bool = True  # shadow-map visibility (False = the paper's no-shadow ablation)
    shadow_bias: float = 0.005  # b in V = sigmoid(s (z_map - d + b)), meters (paper 0.005, code 0.008)
    erode_px: int = 2  # photometric loss uses the mask eroded by this many pixels at image_size
    perceptual: str = "auto"  # auto (VGG16 if its weights exist, else MS-SSIM) | vgg16 | ms-ssim | none
    vgg_weights: str | None = None  # path to torchvision's vgg16-397923af.pth (else the torch hub cache)
    smooth_offset_std: float = 2.0  # px, std of the random shift of the UV-map smoothness terms
    light_init: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # camera coords, meters
    max_bad_steps: int = 10  # consecutive NaN/inf steps before the fit stops
    init: InitConfig = field(default_factory=InitConfig)
    stages: list[StageConfig] = field(default_factory=list)
    fps: float = 30.0  # frame rate of previews and USD animation


def _from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        if key == "init":
            value = _from_dict(InitConfig, value, f"{where}.init")
        elif key == "stages":
            value = [_from_dict(StageConfig, s, f"{where}.stages[{i}]") for i, s in enumerate(value)]
        kwargs[key] = value
    obj = cls(**kwargs)
    if isinstance(obj, StageConfig):
        for g in obj.lr:
            if g not in PARAM_GROUPS:
                raise ValueError(
                    f"{where}.lr: unknown parameter group {g!r}; known: {', '.join(PARAM_GROUPS)}"
                )
        for w in obj.weights:
            if w not in LOSSES:
                raise ValueError(f"{where}.weights: unknown loss {w!r}; known: {', '.join(LOSSES)}")
    return obj


def _parse_value(text: str):
    return yaml.safe_load(text)


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (list indices allowed: ``stages.0.epochs=5``) to a nested dict in place."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like key=value (e.g. stages.0.epochs=5)")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        if isinstance(node, list):
            node = node[int(p)]
        else:
            node = node.setdefault(p, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = _parse_value(text)
    else:
        node[last] = _parse_value(text)


def config_dir() -> Path:
    """The presets folder: ``configs/`` of the repository, or the copy installed with the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs", here / "configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("configs/ folder not found beside the package")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> FitConfig:
    """Load a preset (a path, or a name in configs/ such as "harp" or "demo") and apply overrides."""
    if path is None:
        path = "harp"
    p = Path(path)
    if not p.suffix and not p.exists():
        p = config_dir() / f"{path}.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    data = yaml.safe_load(p.read_text()) or {}
    for o in overrides:
        apply_override(data, o)
    return _from_dict(FitConfig, data, str(p))


def to_dict(cfg: FitConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: FitConfig, path: str | Path) -> None:
    from harp_kaolin.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
