"""Reading an avatar folder written by ``harp fit`` (DESIGN.md "Avatar folder")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harp_kaolin.config import FitConfig, load_config
from harp_kaolin.fit.params import AvatarParams


@dataclass(frozen=True)
class Avatar:
    """A fitted avatar.

    Attributes:
        folder: the avatar folder.
        config: the resolved FitConfig of the fit (config.yaml).
        hand: the hand model (subdivided as during the fit).
        params: AvatarParams (per-frame pose of the training frames, shape, displacement, textures, light).
        names: training frame names; camera: the fitting camera (dict).
    """

    folder: Path
    config: FitConfig
    hand: torch.nn.Module
    params: AvatarParams
    names: list[str]
    camera: dict


def load_avatar(folder: str | Path, device: str = "cpu") -> Avatar:
    """Load params.npz and config.yaml of an avatar folder."""
    from harp_kaolin.fit.pipeline import load_hand_for

    folder = Path(folder)
    npz, cfg_path = folder / "params.npz", folder / "config.yaml"
    for p in (npz, cfg_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; is {folder} an avatar folder written by `harp fit`?")
    cfg = load_config(cfg_path)
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    if str(arrays.get("model", cfg.hand)) != cfg.hand:
        raise ValueError(f"{npz}: model {arrays['model']} differs from config.yaml's hand {cfg.hand!r}")
    hand = load_hand_for(cfg)
    params = AvatarParams.from_numpy(arrays)
    if params.displacement.shape[0] != hand.num_vertices:
        raise ValueError(
            f"{npz}: displacement has {params.displacement.shape[0]} values but the {cfg.hand} hand with "
            f"subdivide={cfg.subdivide} has {hand.num_vertices} vertices"
        )
    return Avatar(
        folder,
        cfg,
        hand.to(device),
        params.to(device),
        [str(n) for n in arrays["names"]],
        json.loads(str(arrays["camera"])),
    )
