"""The anny hand model: shapes, gradients, keypoint sanity, and agreement with anny itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_sequence

from harp_kaolin.geometry import axis_angle_to_matrix
from harp_kaolin.hand import HARP21_NAMES, load_hand

GT_VERTEX_TOL = 1e-5  # m, float32 round-off of anny's own forward
GT_KEYPOINT_TOL = 1e-5
SURFACE_TOL = 0.015  # m: finger joint heads lie inside fingers (radius < 1.5 cm)
WRIST_SURFACE_TOL = 0.025  # m: the wrist head lies inside the wrist (half-thickness < 2.5 cm)
TIP_SURFACE_TOL = 0.004  # m: tails lie 1-2.5 mm from the nearest tip vertex
TIPS = [4, 8, 12, 16, 20]
BASES = [1, 5, 9, 13, 17]


def random_pose(hand, batch, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(batch, hand.num_pose, 3, generator=g)


def test_forward_shapes_and_gradients(anny_hand):
    b = 2
    pose = random_pose(anny_hand, b).requires_grad_()
    shape = torch.zeros(1, anny_hand.num_shape, requires_grad=True)
    rot = torch.tensor([[0.1, 2.0, 0.3], [0.5, -1.0, 0.2]], requires_grad=True)
    trans = torch.tensor([[0.0, 0.0, 0.5], [0.02, 0.01, 0.45]], requires_grad=True)
    disp = torch.full((anny_hand.num_vertices,), 1e-3, requires_grad=True)
    out = anny_hand(pose, shape, rot, trans, disp)
    assert out.vertices.shape == (b, 1609, 3)
    assert out.keypoints.shape == (b, 21, 3)
    assert out.joint_transforms.shape == (b, 21, 4, 4)
    assert anny_hand.faces.shape == (3196, 3)
    assert anny_hand.skin_weights.shape == (1609, 21)
    assert len(HARP21_NAMES) == 21
    (out.vertices.square().sum() + out.keypoints.square().sum()).backward()
    for name, t in [("pose", pose), ("shape", shape), ("rot", rot), ("trans", trans), ("disp", disp)]:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


def _sanity(kp: np.ndarray, verts: np.ndarray, palm_axis: np.ndarray | None = None):
    wrist = kp[0]
    for tip, base in zip(TIPS, BASES):
        assert np.linalg.norm(kp[tip] - wrist) > np.linalg.norm(kp[base] - wrist)
    # Right hand: (index base - little base) x (wrist -> middle base) points out of the palm, and the
    # thumb lies on the index side of the middle finger.
    across = kp[5] - kp[17]
    along = kp[9] - kp[0]
    palm_normal = np.cross(across, along)
    if palm_axis is not None:
        assert palm_normal @ palm_axis > 0
    assert (kp[4] - kp[9]) @ across > 0
    d = np.linalg.norm(kp[:, None] - verts[None], axis=-1).min(1)
    assert d[0] < WRIST_SURFACE_TOL, d[0]
    assert (d[1:] < SURFACE_TOL).all(), d
    assert (d[TIPS] < TIP_SURFACE_TOL).all(), d[TIPS]


def test_keypoint_sanity_rest(anny_hand):
    out = anny_hand(torch.zeros(1, anny_hand.num_pose, 3))
    kp, verts = out.keypoints[0].numpy(), out.vertices[0].numpy()
    assert np.allclose(kp[0], 0, atol=1e-6)  # wrist at the origin of anny's frame
    assert (kp[TIPS, 1] > 0.1).all()  # fingers along +y
    _sanity(kp, verts, palm_axis=np.array([-1.0, 0.0, 0.0]))  # palm towards -x


def test_keypoint_sanity_posed(anny_hand):
    # A curl of every finger by 0.4 rad about its local x axis plus a global turn.
    pose = torch.zeros(1, anny_hand.num_pose, 3)
    pose[..., 0] = 0.4
    rot = torch.tensor([[0.3, 1.2, -0.4]])
    out = anny_hand(pose, None, rot, torch.tensor([[0.0, 0.0, 0.5]]))
    r = axis_angle_to_matrix(rot)[0].numpy()
    _sanity(out.keypoints[0].numpy(), out.vertices[0].numpy(), palm_axis=r @ np.array([-1.0, 0, 0]))


def test_matches_anny_ground_truth_frames(anny_hand):
    """Our parameterization reproduces the shared sequence's anny ground truth (rendered by anny itself)."""
    seq = shared_sequence("open_seq_train")
    params = json.loads((seq / "gt" / "params.json").read_text())
    gt = np.load(seq / "gt" / "vertices.npz")
    kp_gt = json.loads((seq / "gt" / "keypoints.json").read_text())["frames"]
    frames = [0, 11, 31]
    mats = torch.tensor([params["frames"][i]["pose_parameters"] for i in frames])[:, 2:, :3, :3]
    # Rotation vectors of the local-ref matrices (log map) via the matrix's axis-angle.
    import roma

    pose = roma.rotmat_to_rotvec(mats.float())
    shape = torch.logit(torch.tensor([[params["phenotype"][k] for k in anny_hand.shape_names]]))
    rot = torch.tensor([params["frames"][i]["rotvec"] for i in frames]).float()
    trans = torch.tensor([params["frames"][i]["translation"] for i in frames]).float()
    out = anny_hand(pose, shape, rot, trans)
    assert np.abs(out.vertices.numpy() - gt["vertices"][frames]).max() < GT_VERTEX_TOL
    kp = np.array([kp_gt[i]["keypoints3d"] for i in frames])
    assert np.abs(out.keypoints.numpy() - kp).max() < GT_KEYPOINT_TOL
    assert torch.equal(anny_hand.original_uv_index, torch.as_tensor(gt["uv_index_in_anny"]))


def test_uv_layout_fills_unit_square_and_maps_back(anny_hand):
    uvs = anny_hand.base_uvs
    assert uvs.min() >= 0 and uvs.max() <= 1
    extent = (uvs.max(0).values - uvs.min(0).values).max()
    assert extent > 0.97  # the hand island now fills the square (it was ~0.19 wide)
    import anny  # noqa: F401  (the original layout comes from anny's own texture coordinates)

    original = (uvs - anny_hand.uv_offset) / anny_hand.uv_scale
    ref = anny_hand._anny[0].texture_coordinates[anny_hand.original_uv_index].float()
    assert torch.allclose(original, ref, atol=1e-6)
    assert 0.35 < original[:, 0].min() and original[:, 0].max() < 0.56


def test_displacement_moves_along_rest_normals(anny_hand):
    from harp_kaolin.geometry import vertex_normals

    pose = torch.zeros(1, anny_hand.num_pose, 3)
    d = torch.full((anny_hand.num_vertices,), 0.002)
    out0, out1 = anny_hand(pose), anny_hand(pose, displacement=d)
    n = vertex_normals(out0.rest_vertices, anny_hand.faces)
    assert torch.allclose(out1.rest_vertices - out0.rest_vertices, 0.002 * n, atol=1e-7)


def test_subdivided_hand_counts(anny_hand_sub):
    f = anny_hand_sub.facts()
    assert (f["vertices"], f["faces"]) == (1609, 3196)
    assert f["subdivided_vertices"] == 1609 + f["edges"]
    assert f["subdivided_faces"] == 4 * 3196
    out = anny_hand_sub(torch.zeros(2, anny_hand_sub.num_pose, 3))
    assert out.vertices.shape == (2, f["subdivided_vertices"], 3)
    assert torch.allclose(anny_hand_sub.skin_weights.sum(1), torch.ones(1), atol=1e-5)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown hand model 'nope'"):
        load_hand("nope")


def test_bad_pose_shape_names_argument(anny_hand):
    with pytest.raises(ValueError, match=r"pose must have shape \(B, 19, 3\)"):
        anny_hand(torch.zeros(1, 20, 3))
