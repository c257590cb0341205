"""The MANO hand model on a generated MANO-format file (never a real MANO file).

The file is written three ways: a plain pickle of numpy arrays (J_regressor scipy csc, as in the official
file), a pickle whose arrays are chumpy ``Ch`` objects (pickled from a stand-in module that is removed
before loading, so loading truly happens without chumpy), and an .npz.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from harp_kaolin.geometry import axis_angle_to_matrix
from harp_kaolin.hand import load_hand
from harp_kaolin.hand.mano import FINGERTIP_VERTICES, ManoHand, load_mano_data

VERTEX_TOL = 1e-5  # m, float32 round-off between our chain and smplx's
PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
RINGS, RING_SIZE, SPLITS = 48, 16, 9  # 48 * 16 + pole + 9 = 778 vertices, 16 * 95 + 18 = 1538 faces
# Rows of harp21 that are MANO joints, and the MANO joint each one is.
HARP21_JOINT_ROWS = [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]
MANO_JOINT_OF_ROW = [0, 13, 14, 15, 1, 2, 3, 4, 5, 6, 10, 11, 12, 7, 8, 9]
HARP21_TIP_ROWS = [4, 8, 12, 16, 20]


def _hand_like_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A tube open at the wrist and capped at the top: MANO's 778 vertices and 1538 faces."""
    y = np.linspace(0.0, 0.18, RINGS)
    angle = np.linspace(0, 2 * np.pi, RING_SIZE, endpoint=False)
    radius = 0.03 * (1 - 0.5 * y / y[-1])
    ring = np.stack(
        [
            radius[:, None] * np.cos(angle),
            np.broadcast_to(y[:, None], (RINGS, RING_SIZE)),
            0.6 * radius[:, None] * np.sin(angle),
        ],
        -1,
    ).reshape(-1, 3)
    pole = RINGS * RING_SIZE
    faces = []
    for r in range(RINGS - 1):
        for i in range(RING_SIZE):
            a, b = r * RING_SIZE + i, r * RING_SIZE + (i + 1) % RING_SIZE
            faces += [[a, b, b + RING_SIZE], [a, b + RING_SIZE, a + RING_SIZE]]
    top = (RINGS - 1) * RING_SIZE
    fan = [[top + i, top + (i + 1) % RING_SIZE, pole] for i in range(RING_SIZE)]
    vertices = [*ring, [0.0, 0.19, 0.0]]
    for k in range(SPLITS):  # split fan triangles at their centroids
        a, b, c = fan[k]
        q = len(vertices)
        vertices.append(np.mean([vertices[a], vertices[b], vertices[c]], 0) + [0, 0.002, 0])
        fan[k] = [a, b, q]
        fan += [[b, c, q], [c, a, q]]
    return np.asarray(vertices), np.asarray(faces + fan, np.int64)


def _mano_arrays(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    v_template, faces = _hand_like_mesh()
    assert v_template.shape == (778, 3) and faces.shape == (1538, 3)
    weights = rng.random((778, 16)) ** 4
    weights /= weights.sum(1, keepdims=True)
    rows, cols, vals = [], [], []
    for j in range(16):  # each joint averages 6 vertices of one ring
        ring = 2 + 3 * j
        idx = ring * RING_SIZE + rng.choice(RING_SIZE, 6, replace=False)
        rows += [j] * 6
        cols += idx.tolist()
        vals += [1 / 6] * 6
    j_regressor = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(16, 778))
    kintree = np.array([[4294967295, *PARENTS[1:]], list(range(16))], np.int64)
    return {
        "v_template": v_template,
        "f": faces.astype(np.uint32),
        "weights": weights,
        "J_regressor": j_regressor,
        "kintree_table": kintree,
        "shapedirs": 0.01 * rng.standard_normal((778, 3, 10)),
        "posedirs": 0.002 * rng.standard_normal((778, 3, 135)),
        "hands_components": np.linalg.qr(rng.standard_normal((45, 45)))[0],
        "hands_mean": 0.1 * rng.standard_normal(45),
        "bs_style": "lbs",
    }


@contextlib.contextmanager
def _fake_chumpy():
    """A module ``chumpy.ch`` with a class ``Ch`` that pickles like chumpy's, present only inside."""
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            # chumpy pickles its __dict__ (minus weak references): the value 'x' and bookkeeping.
            self.x = x
            self._dirty_vars = set()
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch, chumpy.ch = Ch, ch
    sys.modules.update({"chumpy": chumpy, "chumpy.ch": ch})
    try:
        yield Ch
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


@pytest.fixture(scope="module")
def mano_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mano")
    data = _mano_arrays()
    paths = {"pkl": root / "plain" / "MANO_RIGHT.pkl", "chumpy": root / "chumpy" / "MANO_RIGHT.pkl"}
    paths["npz"] = root / "npz" / "MANO_RIGHT.npz"
    for p in paths.values():
        p.parent.mkdir()
    with open(paths["pkl"], "wb") as f:
        pickle.dump(data, f, protocol=2)
    with _fake_chumpy() as Ch, open(paths["chumpy"], "wb") as f:
        wrapped = {
            k: Ch(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v for k, v in data.items()
        }
        pickle.dump(wrapped, f, protocol=2)
    assert "chumpy" not in sys.modules
    np.savez(paths["npz"], **{k: v.toarray() if k == "J_regressor" else v for k, v in data.items()})
    paths["uv_cache"] = root / "uv_cache"
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def mano(mano_files):
    return ManoHand(mano_files["chumpy"], uv_cache_dir=mano_files["uv_cache"])


def _smplx_mano(path):
    import smplx

    with contextlib.redirect_stdout(io.StringIO()):
        return smplx.MANO(str(path), is_rhand=True, use_pca=False, flat_hand_mean=True, ext=path.suffix[1:])


@pytest.mark.parametrize("kind", ["pkl", "chumpy", "npz"])
def test_loader(mano_files, kind):
    assert "chumpy" not in sys.modules
    data = load_mano_data(mano_files[kind])
    ref = _mano_arrays()
    for key in ("v_template", "weights", "shapedirs", "posedirs", "kintree_table", "hands_mean"):
        np.testing.assert_array_equal(data[key], ref[key])
    np.testing.assert_array_equal(data["J_regressor"], ref["J_regressor"].toarray())
    np.testing.assert_array_equal(data["f"], ref["f"])
    hand = ManoHand(mano_files[kind], uv_cache_dir=mano_files["uv_cache"])
    assert hand.num_pose == 15 and hand.num_shape == 10 and hand.num_vertices == 778


def test_forward_shapes_and_gradients(mano):
    b = 2
    pose = (0.3 * torch.randn(b, 15, 3, generator=torch.Generator().manual_seed(0))).requires_grad_()
    shape = torch.zeros(1, 10, requires_grad=True)
    rot = torch.tensor([[0.1, 2.0, 0.3], [0.5, -1.0, 0.2]], requires_grad=True)
    trans = torch.tensor([[0.0, 0.0, 0.5], [0.02, 0.01, 0.45]], requires_grad=True)
    disp = torch.full((mano.num_vertices,), 1e-3, requires_grad=True)
    out = mano(pose, shape, rot, trans, disp)
    assert out.vertices.shape == (b, 778, 3)
    assert out.keypoints.shape == (b, 21, 3)
    assert out.joint_transforms.shape == (b, 16, 4, 4)
    assert mano.faces.shape == (1538, 3) and mano.skin_weights.shape == (778, 16)
    assert mano.uvs.min() >= 0 and mano.uvs.max() <= 1
    (out.vertices.square().sum() + out.keypoints.square().sum()).backward()
    for name, t in [("pose", pose), ("shape", shape), ("rot", rot), ("trans", trans), ("disp", disp)]:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name
    kp_only = mano.keypoints(pose.detach(), shape.detach(), rot.detach(), trans.detach())
    torch.testing.assert_close(kp_only, out.keypoints.detach())


@pytest.mark.parametrize("kind", ["pkl", "npz"])
def test_matches_smplx(mano, mano_files, kind):
    ref = _smplx_mano(mano_files[kind])
    g = torch.Generator().manual_seed(1)
    b = 4
    pose = 0.6 * torch.randn(b, 15, 3, generator=g)
    betas = torch.randn(b, 10, generator=g)
    rot = torch.randn(b, 3, generator=g)
    transl = 0.1 * torch.randn(b, 3, generator=g)
    expected = ref(betas=betas, global_orient=rot, hand_pose=pose.reshape(b, 45), transl=transl)
    # smplx rotates about the wrist joint J0, we about the origin: t_ours = t + J0 - R J0.
    out0 = mano(pose, betas)
    j0 = out0.rest_joint_frames[:, 0, :3, 3]
    ours_t = transl + j0 - (axis_angle_to_matrix(rot) @ j0[..., None])[..., 0]
    out = mano(pose, betas, rot, ours_t)
    torch.testing.assert_close(out.vertices, expected.vertices, atol=VERTEX_TOL, rtol=0)
    torch.testing.assert_close(
        out.keypoints[:, HARP21_JOINT_ROWS], expected.joints[:, MANO_JOINT_OF_ROW], atol=VERTEX_TOL, rtol=0
    )
    tips = expected.vertices[:, list(FINGERTIP_VERTICES)]
    torch.testing.assert_close(out.keypoints[:, HARP21_TIP_ROWS], tips, atol=VERTEX_TOL, rtol=0)
    # Pose correctives make the rest mesh depend on the pose.
    assert (out.rest_vertices - mano(torch.zeros_like(pose), betas).rest_vertices).abs().max() > 1e-3


def test_subdivision(mano, mano_files):
    hand = load_hand("mano", subdivide=1, model_path=mano_files["npz"], uv_cache_dir=mano_files["uv_cache"])
    n_edges = (3 * 1538 + 16) // 2  # interior edges have two faces, the 16 of the open wrist one
    assert hand.num_vertices == 778 + n_edges
    assert hand.faces.shape == (4 * 1538, 3)
    pose = 0.3 * torch.randn(2, 15, 3, generator=torch.Generator().manual_seed(2))
    out, base = hand(pose), mano(pose)
    assert out.vertices.shape == (2, 778 + n_edges, 3)
    torch.testing.assert_close(out.vertices[:, :778], base.vertices, atol=VERTEX_TOL, rtol=0)
    torch.testing.assert_close(out.keypoints, base.keypoints)


def test_uvs_cached_and_from_obj(mano, mano_files, tmp_path):
    caches = list(mano_files["uv_cache"].glob("mano_uv_*.npz"))
    assert len(caches) == 1
    again = ManoHand(mano_files["pkl"], uv_cache_dir=mano_files["uv_cache"])
    torch.testing.assert_close(again.uvs, mano.uvs)
    # An OBJ with MANO's faces: cylindrical UVs, written as v/vt.
    data = _mano_arrays()
    v, f = data["v_template"], data["f"].astype(np.int64)
    uv = np.stack([np.arctan2(v[:, 2], v[:, 0]) / (2 * np.pi) + 0.5, v[:, 1] / 0.19], -1)
    lines = [f"v {x} {y} {z}" for x, y, z in v] + [f"vt {a} {b}" for a, b in uv]
    lines += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in face) for face in f]
    obj = tmp_path / "mano_uv.obj"
    obj.write_text("\n".join(lines) + "\n")
    hand = ManoHand(mano_files["pkl"], uv_obj=obj)
    torch.testing.assert_close(hand.base_face_uvs, torch.from_numpy(f))
    expected = torch.from_numpy(uv).float() * hand.uv_scale + hand.uv_offset
    torch.testing.assert_close(hand.base_uvs, expected)
    bad = tmp_path / "bad.obj"
    bad.write_text("\n".join(lines[:-1] + ["f 1/1 2/2 3/3"]) + "\n")
    with pytest.raises(ValueError, match="bad.obj.*MANO's faces"):
        ManoHand(mano_files["pkl"], uv_obj=bad)


def test_errors_name_the_file(mano_files, tmp_path):
    missing = tmp_path / "nowhere" / "MANO_RIGHT.pkl"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hand("mano", model_path=missing)
    with pytest.raises(ValueError, match="model_path"):
        load_hand("mano")
    data = _mano_arrays()
    del data["posedirs"]
    wrong = tmp_path / "wrong_keys.pkl"
    wrong.write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match=r"wrong_keys\.pkl.*posedirs"):
        ManoHand(wrong)
    data = _mano_arrays()
    data["weights"] = data["weights"][:, :15]
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, **{k: v.toarray() if k == "J_regressor" else v for k, v in data.items()})
    with pytest.raises(ValueError, match=r"wrong_shape\.npz: weights must have shape \(778, 16\)"):
        ManoHand(wrong_shape)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"garbage\.pkl"):
        ManoHand(garbage)
