"""UV coverage and layout resampling."""

from __future__ import annotations

import numpy as np
import torch

from harp_kaolin.synth import original_layout_albedo, texture_image
from harp_kaolin.uvmap import resample_from_original_layout, uv_coverage


def test_coverage_of_a_half_square():
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = uv_coverage(uvs, torch.tensor([[0, 1, 2]]), 64)
    # Lower-left triangle in UV (v up) = the lower-left triangle of the image rows.
    assert m[-1, 0] and not m[0, -1]
    assert abs(m.mean() - 0.5) < 0.03


def test_hand_coverage_is_a_fair_share(anny_hand):
    m = uv_coverage(anny_hand.base_uvs, anny_hand.base_face_uvs, 256)
    assert 0.2 < m.mean() < 0.9  # the rescaled island fills a good part of the square


def test_original_layout_round_trip(anny_hand):
    """gt/albedo.png is stored in anny's original layout; resampled back it matches our own map."""
    size = 256
    ours = texture_image(size)[0].permute(1, 2, 0).numpy()
    original = original_layout_albedo(anny_hand, 1024)
    back = resample_from_original_layout(
        original, float(anny_hand.uv_scale), anny_hand.uv_offset.numpy(), size
    )
    cover = uv_coverage(anny_hand.base_uvs, anny_hand.base_face_uvs, size)
    err = np.abs(back - ours)[cover]
    assert np.median(err) < 0.02  # bilinear resampling of a patterned map at ~1 texel
