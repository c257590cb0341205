"""harp-kaolin: HARP personalized hand avatars (Karunratanakul et al., CVPR 2023) on Kaolin/Warp."""

import warp as _wp

# Warp prints its banner and per-module compile lines on stdout, which would corrupt `harp ... --json`.
_wp.config.log_level = _wp.LOG_WARNING

__version__ = "0.1.0"
