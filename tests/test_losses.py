"""Each HARP loss on a known case."""

from __future__ import annotations

import math

import pytest
import torch

from harp_kaolin.fit import losses as L

ATOL = 1e-6


def test_silhouette_l1_known_value():
    soft = torch.zeros(1, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, :2] = 1.0  # 8 of 16 pixels differ by 1
    soft[0, 0, 0] = 1.0  # one of them is right
    assert L.silhouette_loss(soft, mask).item() == pytest.approx(7 / 16)


def test_keypoint_loss_is_mean_distance_in_meters():
    a = torch.zeros(2, 21, 3)
    b = a.clone()
    b[..., 0] = 0.003
    b[..., 1] = 0.004  # every keypoint 5 mm away
    assert L.keypoint_loss(a, b).item() == pytest.approx(0.005, abs=ATOL)


def test_displacement_loss_in_square_centimeters():
    d = torch.tensor([0.01, -0.02, 0.0, 0.0])  # 1 cm, 2 cm
    assert L.displacement_loss(d).item() == pytest.approx((1 + 4) / 4)


def test_photometric_loss_only_inside_mask():
    img = torch.zeros(1, 2, 2, 3)
    tgt = torch.zeros(1, 2, 2, 3)
    tgt[0, 0, 0] = 0.3
    tgt[0, 1, 1] = 0.9  # outside the mask: ignored
    mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # 2 masked pixels x 3 channels = 6 values, of which 3 differ by 0.3
    assert L.photometric_loss(img, tgt, mask).item() == pytest.approx(0.9 / 6)


def test_erode_mask_square():
    m = torch.zeros(1, 7, 7)
    m[0, 1:6, 1:6] = 1
    e = L.erode_mask(m, 1)
    assert e.sum().item() == 9 and e[0, 2:5, 2:5].all()
    assert torch.equal(L.erode_mask(m, 0), m)


def test_texture_smoothness_zero_for_constant_and_positive_for_checker():
    const = torch.full((1, 3, 16, 16), 0.4)
    g = torch.Generator().manual_seed(0)
    assert L.texture_smoothness_loss(const, 2.0, g).item() == pytest.approx(0.0, abs=ATOL)
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2).float().expand(1, 3, 16, 16)
    assert L.texture_smoothness_loss(checker, 2.0, torch.Generator().manual_seed(0)).item() > 0.2


def test_texture_smoothness_of_a_linear_ramp_matches_the_expected_shift():
    # For a ramp f = a * x (x in texels), |f(x + dx) - f(x)| = a |dx| with dx ~ N(0, s^2):
    # E = a s sqrt(2 / pi), away from the borders.
    n, a, s = 256, 0.001, 2.0
    ramp = (a * (torch.arange(n).float() + 0.5)).expand(1, 1, n, n).contiguous()
    diff = (ramp - L.shifted(ramp, s, torch.Generator().manual_seed(1))).abs()[..., 16:-16, 16:-16]
    assert diff.mean().item() == pytest.approx(a * s * math.sqrt(2 / math.pi), rel=0.05)


def test_normal_smoothness_pulls_towards_flat():
    flat = torch.zeros(1, 3, 8, 8)
    flat[:, 2] = 1
    assert L.normal_smoothness_loss(flat, 2.0, torch.Generator().manual_seed(0)).item() == pytest.approx(
        0, abs=ATOL
    )
    tilted = torch.nn.functional.normalize(flat + torch.tensor([0.5, 0, 0]).reshape(1, 3, 1, 1), dim=1)
    expected = (tilted - flat).abs().mean().item()
    assert L.normal_smoothness_loss(tilted, 2.0).item() == pytest.approx(expected, abs=1e-5)
