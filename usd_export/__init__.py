"""OpenUSD export of hand avatars: skinned, textured, animated .usda / .usdc / .usdz, and static .glb.

``add_hand(stage, prim_path, asset)`` adds an avatar to an open stage; ``export_avatar(asset, path)``
writes a file; ``validate_usd(path)`` runs every registered ``pxr.UsdValidation`` validator. Conventions
(axis change, weights, textures) are in ``usd_export.avatar`` and ``usd_export.usd``. ``pxr`` is imported
only when a USD function runs (ImportError with the install hint when it is missing).
"""

from __future__ import annotations

from usd_export.avatar import (
    CAMERA_TO_USD,
    AvatarAsset,
    asset_from_hand,
    asset_from_params,
    dense_weights,
    truncate_weights,
)
from usd_export.cli import FORMATS, cli_export, export_avatar_folder, load_avatar_asset
from usd_export.glb import export_glb
from usd_export.usd import ValidationReport, add_hand, export_avatar, validate_usd, write_textures

__all__ = [
    "CAMERA_TO_USD",
    "FORMATS",
    "AvatarAsset",
    "ValidationReport",
    "add_hand",
    "asset_from_hand",
    "asset_from_params",
    "cli_export",
    "dense_weights",
    "export_avatar",
    "export_avatar_folder",
    "export_glb",
    "load_avatar_asset",
    "truncate_weights",
    "validate_usd",
    "write_textures",
]
