"""What ``harp export AVATAR [--format usda|usdc|usdz|glb] [--out PATH]`` runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from usd_export.avatar import AvatarAsset, asset_from_params
from usd_export.glb import export_glb
from usd_export.usd import DEFAULT_INFLUENCES, USD_FORMATS, export_avatar

FORMATS = (*USD_FORMATS, "glb")


def load_avatar_asset(avatar_dir: str | Path, hand=None) -> AvatarAsset:
    """AvatarAsset of an avatar folder, from its ``params.npz`` (``AvatarParams`` groups + model name)."""
    params = Path(avatar_dir) / "params.npz"
    if not params.is_file():
        raise FileNotFoundError(
            f"{params} not found: is {avatar_dir} an avatar folder written by 'harp fit'?"
        )
    with np.load(params) as arrays:
        return asset_from_params(dict(arrays), hand=hand)


def cli_export(
    avatar: str | Path | AvatarAsset,
    fmt: str | None = None,
    out: str | Path | None = None,
    *,
    max_influences: int | None = DEFAULT_INFLUENCES,
) -> Path:
    """Export an avatar folder (or an AvatarAsset) as .usda, .usdc, .usdz or .glb.

    Args:
        avatar: avatar folder (read through its params.npz) or an AvatarAsset.
        fmt: "usda", "usdc", "usdz" or "glb"; None takes it from ``out``'s extension, else "usda".
        out: output file; None writes ``<avatar folder>/avatar.<fmt>`` (required for an AvatarAsset).
        max_influences: joint influences per vertex in USD files; None = exact weights.

    Returns:
        The path written.
    """
    if fmt is None:
        fmt = Path(out).suffix.lower().lstrip(".") if out is not None else "usda"
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out is None:
        if isinstance(avatar, AvatarAsset):
            raise ValueError("out is required when exporting an AvatarAsset (there is no avatar folder)")
        out = Path(avatar) / f"avatar.{fmt}"
    out = Path(out)
    if out.suffix.lower() != f".{fmt}":
        raise ValueError(f"out must end with .{fmt} for format {fmt}, got {out.name!r}")
    asset = avatar if isinstance(avatar, AvatarAsset) else load_avatar_asset(avatar)
    if fmt == "glb":
        return export_glb(asset, out)
    return export_avatar(asset, out, max_influences=max_influences)


def export_avatar_folder(avatar_dir: str | Path, fmt: str = "usda", out: str | Path | None = None) -> Path:
    """``<avatar_dir>/avatar.<fmt>`` (or ``out``) from the folder's params.npz; see ``cli_export``."""
    return cli_export(Path(avatar_dir), fmt, out)
