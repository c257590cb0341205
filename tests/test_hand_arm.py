"""The anny arm model (hand + forearm cut from the full anny body).

The first run builds the full-body anny caches (~/.cache/anny, about 3-4 minutes for both rigs).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.sparse.csgraph import connected_components

from harp_kaolin.geometry import axis_angle_to_matrix
from harp_kaolin.hand import load_hand
from harp_kaolin.hand.anny_hand import dense_skin_weights

FULL_BODY_TOL = 1e-5  # m, float32 round-off against anny's own full-body forward
ANNY_HAND_TOL = 1e-5  # m, keypoints of the anny hand model after rigid alignment
TIP_SURFACE_TOL = 0.004  # m: tails lie 1-3 mm from the nearest tip vertex
MIN_ARM_EXTENT = 0.20  # m along the forearm
TIPS = [4, 8, 12, 16, 20]
BASES = [1, 5, 9, 13, 17]
HEAD_ROWS = [0] + [r for f in range(5) for r in range(1 + 4 * f, 4 + 4 * f)]  # harp21 rows that are heads


@pytest.fixture(scope="module")
def arm():
    return load_hand("anny_arm")


def random_pose(hand, batch, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(batch, hand.num_pose, 3, generator=g)


def test_forward_shapes_and_gradients(arm):
    b = 2
    pose = random_pose(arm, b).requires_grad_()
    shape = torch.zeros(1, arm.num_shape, requires_grad=True)
    rot = torch.tensor([[0.1, 2.0, 0.3], [0.5, -1.0, 0.2]], requires_grad=True)
    trans = torch.tensor([[0.0, 0.0, 0.5], [0.02, 0.01, 0.45]], requires_grad=True)
    disp = torch.full((arm.num_vertices,), 1e-3, requires_grad=True)
    out = arm(pose, shape, rot, trans, disp)
    v = arm.num_vertices
    assert (
        arm.num_pose == 21
        and arm.num_shape == 6
        and arm.joint_names[:3] == ["lowerarm01.R", "lowerarm02.R", "wrist.R"]
    )
    assert out.vertices.shape == (b, v, 3) and out.keypoints.shape == (b, 21, 3)
    assert out.joint_transforms.shape == (b, 22, 4, 4) and arm.skin_weights.shape == (v, 22)
    torch.testing.assert_close(arm.skin_weights.sum(1), torch.ones(v))
    (out.vertices.square().sum() + out.keypoints.square().sum()).backward()
    for name, t in [("pose", pose), ("shape", shape), ("rot", rot), ("trans", trans), ("disp", disp)]:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


def test_matches_full_body_anny(arm):
    """Posed vertices and bone heads equal anny's full-body forward, mapped back to anny's world."""
    model = arm._anny[0]
    b = 3
    g = torch.Generator().manual_seed(1)
    pose = 0.4 * torch.randn(b, arm.num_pose, 3, generator=g)
    shape = torch.randn(b, arm.num_shape, generator=g)
    out = arm(pose, shape)
    rest = model.get_rest_model(arm._coefficients(model, shape))
    r = arm.frame_rotation
    delta = torch.eye(4).repeat(b, len(model.bone_labels), 1, 1)
    delta[:, arm.bone_index[1:], :3, :3] = r @ axis_angle_to_matrix(pose) @ r.T  # model axes -> anny's
    transforms, poses = model.get_bone_transforms(delta, rest["rest_bone_poses"])
    full = model.get_skinned_vertices(rest["rest_vertices"], transforms)
    elbow = rest["rest_bone_poses"][:, arm.bone_index[0], :3, 3]
    root = transforms[:, arm.bone_index[0]]

    def to_world(x):
        y = x @ r.T + elbow[:, None]
        return y @ root[:, :3, :3].transpose(1, 2) + root[:, None, :3, 3]

    # Vertices weighted only to the subtree move exactly as in the body; the few at the elbow cut whose
    # upper-arm weight moved to lowerarm01.R differ by millimetres.
    weights = dense_skin_weights(
        model.vertex_bone_weights.double(), model.vertex_bone_indices, len(model.bone_labels)
    )
    inside = weights[arm.vertex_index][:, arm.bone_index].sum(1) > 1 - 1e-6
    assert inside.float().mean() > 0.95
    expected = full[:, arm.vertex_index]
    torch.testing.assert_close(
        to_world(out.vertices)[:, inside], expected[:, inside], atol=FULL_BODY_TOL, rtol=0
    )
    heads = poses[:, arm.bone_index[arm.head_joints], :3, 3]
    torch.testing.assert_close(to_world(out.keypoints)[:, HEAD_ROWS], heads, atol=FULL_BODY_TOL, rtol=0)
    tips_to_mesh = torch.cdist(out.keypoints[:, TIPS], out.vertices).min(-1).values
    assert (tips_to_mesh < TIP_SURFACE_TOL).all(), tips_to_mesh


def test_keypoint_sanity(arm, anny_hand):
    for pose in (torch.zeros(1, arm.num_pose, 3), random_pose(arm, 1, scale=0.2, seed=4)):
        kp = arm.keypoints(pose)[0].numpy()
        wrist = kp[0]
        for tip, base in zip(TIPS, BASES):
            assert np.linalg.norm(kp[tip] - wrist) > np.linalg.norm(kp[base] - wrist)
        across = kp[5] - kp[17]
        assert (kp[4] - kp[9]) @ across > 0  # thumb on the index side
    # A right hand: at zero pose the keypoints are the anny hand's (whose palm side test_hand checks) up
    # to a proper rigid motion; a mirrored hand would need a reflection.
    kp = arm.keypoints(torch.zeros(1, arm.num_pose, 3))[0].double().numpy()
    h = anny_hand.keypoints(torch.zeros(1, anny_hand.num_pose, 3))[0].double().numpy()
    a, h = kp - kp.mean(0), h - h.mean(0)
    u, _, vt = np.linalg.svd(a.T @ h)
    rotation = (u @ vt).T
    assert np.linalg.det(rotation) > 0
    assert np.abs(a @ rotation.T - h).max() < ANNY_HAND_TOL
    # Model frame: elbow at the origin, forearm along +y, palm towards -x (as the anny hand).
    across, along = kp[5] - kp[17], kp[9] - kp[0]
    assert np.cross(across, along) @ np.array([-1.0, 0.0, 0.0]) > 0
    assert kp[0, 1] > 0.15 and np.abs(kp[0, [0, 2]]).max() < 0.02


def test_single_piece_with_forearm(arm):
    faces = arm.base_faces.numpy()
    n = arm.num_base_vertices
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    graph = scipy.sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, _ = connected_components(graph, directed=False)
    assert count == 1
    assert len(np.unique(faces)) == n  # every kept vertex is used
    rest = arm(torch.zeros(1, arm.num_pose, 3)).rest_vertices[0]
    wrist = arm.keypoints(torch.zeros(1, arm.num_pose, 3))[0, 0]
    axis = wrist / wrist.norm()  # elbow (origin) -> wrist
    extent = rest @ axis
    assert extent.max() - extent.min() > MIN_ARM_EXTENT
    assert (extent < 0.5 * wrist.norm()).sum() > 100  # forearm vertices between elbow and mid-forearm


def test_uv_layout_maps_back(arm):
    uvs = arm.base_uvs
    assert uvs.min() >= 0 and uvs.max() <= 1
    original = (uvs - arm.uv_offset) / arm.uv_scale
    ref = arm._anny[0].texture_coordinates[arm.original_uv_index].float()
    torch.testing.assert_close(original, ref, atol=1e-6, rtol=0)


def test_subdivision(arm):
    sub = load_hand("anny_arm", subdivide=1)
    v, f = arm.num_base_vertices, arm.base_faces.shape[0]
    n_edges = arm.facts()["edges"]
    assert sub.num_vertices == v + n_edges and sub.faces.shape == (4 * f, 3)
    pose = random_pose(arm, 2, seed=2)
    out, base = sub(pose), arm(pose)
    assert out.vertices.shape == (2, v + n_edges, 3)
    torch.testing.assert_close(out.vertices[:, :v], base.vertices, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.keypoints, base.keypoints)
