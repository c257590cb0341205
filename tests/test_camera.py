"""OpenCV camera -> DIB-R rasterizer inputs: pixel centres, depth sign, face orientation."""

from __future__ import annotations

import json

import pytest
import torch

import warp_kernels.project as warp_project
from harp_kaolin.geometry import gather_corners
from harp_kaolin.render import Camera, face_inputs, project_mesh, project_to_ndc, rasterize
from tests.conftest import DEVICES

NDC_TOL = 1e-6  # float64 projection round trips

CAMERA = Camera(width=40, height=30, fx=50.0, fy=55.0, cx=21.3, cy=14.2)


def unproject(camera: Camera, u: torch.Tensor, v: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """(N, 3) camera points seen at continuous pixel coordinates (u, v) at the given depths."""
    return torch.stack([(u - camera.cx) * depth / camera.fx, (v - camera.cy) * depth / camera.fy, depth], -1)


def cube(centre=(0.0, 0.0, 2.0), half=0.3, dtype=torch.float64):
    """A cube's 8 vertices and 12 triangles, counter-clockwise seen from outside."""
    corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=dtype)
    faces = torch.tensor(
        [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
         [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    )  # fmt: skip
    return half * corners + torch.tensor(centre, dtype=dtype), faces


def test_cube_faces_wind_outwards():
    verts, faces = cube(centre=(0.0, 0.0, 0.0))
    tri = verts[faces]
    normal = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    assert torch.all((normal * tri.mean(1)).sum(-1) > 0)


def test_pixel_centres_coincide_with_the_rasterizer():
    rows, cols = torch.meshgrid(torch.arange(CAMERA.height), torch.arange(CAMERA.width), indexing="ij")
    rows, cols = rows.reshape(-1).double(), cols.reshape(-1).double()
    depth = torch.linspace(0.5, 3.0, rows.numel(), dtype=torch.float64)
    points = unproject(CAMERA, cols + 0.5, rows + 0.5, depth)
    ndc, z = project_to_ndc(points[None], CAMERA)
    expected_x = (2 * cols + 1 - CAMERA.width) / CAMERA.width
    expected_y = (CAMERA.height - 2 * rows - 1) / CAMERA.height
    torch.testing.assert_close(ndc[0, :, 0], expected_x, atol=NDC_TOL, rtol=0)
    torch.testing.assert_close(ndc[0, :, 1], expected_y, atol=NDC_TOL, rtol=0)
    torch.testing.assert_close(z[0], -depth)
    # image corners (u, v) = (0, 0) and (W, H) map to NDC (-1, 1) and (1, -1)
    corners = unproject(CAMERA, torch.tensor([0.0, 40.0]), torch.tensor([0.0, 30.0]), torch.ones(2))
    torch.testing.assert_close(project_to_ndc(corners[None].double(), CAMERA)[0][0], torch.tensor(
        [[-1.0, 1.0], [1.0, -1.0]], dtype=torch.float64))  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pixel", [(0, 0), (7, 22), (29, 39)])
def test_point_at_pixel_centre_is_drawn_on_that_pixel(device, pixel):
    """A small triangle around the 3D point seen at pixel (i, j)'s centre covers that pixel only."""
    i, j = pixel
    offsets = torch.tensor([[-0.3, 0.25], [0.3, 0.25], [0.0, -0.35]])  # pixels; counter-clockwise on screen
    u, v = j + 0.5 + offsets[:, 0], i + 0.5 + offsets[:, 1]
    verts = unproject(CAMERA, u, v, torch.full((3,), 1.7)).float().to(device)[None]
    faces = torch.tensor([[0, 1, 2]], device=device)
    fvz, fvi, fnz = face_inputs(verts, faces, CAMERA)
    assert fnz.item() > 0  # counter-clockwise as displayed = facing the camera
    out = rasterize(CAMERA.height, CAMERA.width, fvz, fvi, torch.ones(1, 1, 3, 1, device=device), fnz)
    covered = torch.nonzero(out.face_idx[0] >= 0).tolist()
    assert covered == [[i, j]]


@pytest.mark.parametrize("device", DEVICES)
def test_front_faces_have_nonnegative_normals_z_and_hide_the_back(device):
    verts, faces = cube(centre=(0.1, -0.05, 1.5))
    rot = torch.linalg.matrix_exp(
        torch.tensor([[0, -0.4, 0.3], [0.4, 0, -0.5], [-0.3, 0.5, 0]], dtype=torch.float64)
    )
    verts = ((verts - verts.mean(0)) @ rot.T + verts.mean(0)).to(device)[None]
    faces = faces.to(device)
    fvz, fvi, fnz = face_inputs(verts, faces, CAMERA)
    # sign of the cosine == sign of the NDC (y up) signed area
    e1, e2 = fvi[0, :, 1] - fvi[0, :, 0], fvi[0, :, 2] - fvi[0, :, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    assert torch.equal(fnz[0] > 0, area > 0)
    front = fnz[0] >= 0
    assert 2 <= int(front.sum()) <= 6  # one to three sides of a convex body face the camera
    torch.testing.assert_close(fvz, -verts[:, faces][..., 2])
    args = (CAMERA.height, CAMERA.width, fvz.float(), fvi.float(), verts[:, faces].float())
    culled = rasterize(*args, fnz.float())
    seen = culled.face_idx[culled.face_idx >= 0].unique()
    assert seen.numel() >= 2 and front[seen].all()
    # without culling, the depth test alone (largest z = -depth wins) keeps the near side
    unculled = rasterize(*args, torch.ones_like(fnz).float())
    covered = culled.face_idx >= 0
    assert torch.equal(covered, unculled.face_idx >= 0)
    assert (culled.face_idx == unculled.face_idx)[covered].float().mean() > 0.99


def test_project_mesh_gives_rasterize_arguments_in_order():
    verts, faces = cube()
    features = torch.rand(1, faces.shape[0], 3, 4, dtype=torch.float64)
    fvz, fvi, passed, fnz = project_mesh(CAMERA, verts[None], faces, features)
    assert (
        passed is features and fvz.shape == (1, 12, 3) and fvi.shape == (1, 12, 3, 2) and fnz.shape == (1, 12)
    )
    torch.testing.assert_close((fvz, fvi, fnz), face_inputs(verts[None], faces, CAMERA))


def test_face_inputs_pass_gradients_to_image_and_depth():
    verts, faces = cube()
    verts = verts[None].clone().requires_grad_()
    fvz, fvi, fnz = face_inputs(verts, faces, CAMERA)
    assert fvz.requires_grad and fvi.requires_grad and not fnz.requires_grad
    (fvi.sum() + fvz.sum()).backward()
    assert verts.grad.abs().sum() > 0


def test_camera_json_scaling_and_checks(tmp_path):
    path = tmp_path / "camera.json"
    path.write_text(
        json.dumps({"width": 640, "height": 480, "fx": 600.0, "fy": 610.0, "cx": 320.5, "cy": 240.5})
    )
    cam = Camera.from_json(path)
    assert cam == Camera(640, 480, 600.0, 610.0, 320.5, 240.5) and Camera.from_dict(cam.to_dict()) == cam
    half = cam.scaled(320, 240)
    assert half == Camera(320, 240, 300.0, 305.0, 160.25, 120.25)
    # the same 3D point lands on corresponding NDC positions at both resolutions
    point = torch.tensor([[[0.03, -0.02, 0.6]]], dtype=torch.float64)
    torch.testing.assert_close(project_to_ndc(point, cam)[0], project_to_ndc(point, half)[0])
    torch.testing.assert_close(cam.intrinsics()[0], torch.tensor([600.0, 0.0, 320.5]))
    with pytest.raises(ValueError, match="missing"):
        Camera.from_dict({"width": 10, "height": 10})
    with pytest.raises(ValueError, match="width must be a positive int"):
        Camera(0, 10, 1.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="vertices_cam must have shape"):
        project_to_ndc(torch.zeros(4, 3), cam)
    with pytest.raises(ValueError, match="faces must index"):
        face_inputs(torch.ones(1, 3, 3), torch.tensor([[0, 1, 3]]), cam)


def test_gather_corners_matches_indexing():
    """gather_corners = values[:, faces] in value and gradient (repeated vertices accumulate)."""
    g = torch.Generator().manual_seed(0)
    for rest in ((), (2,), (3,)):
        values = torch.randn(3, 7, *rest, generator=g, dtype=torch.float64)
        faces = torch.randint(0, 7, (11, 3), generator=g)
        upstream = torch.randn(3, 11, 3, *rest, generator=g, dtype=torch.float64)
        grads = []
        for fn in (gather_corners, lambda v, f: v[:, f]):
            v = values.clone().requires_grad_()
            out = fn(v, faces)
            assert out.shape == (3, 11, 3, *rest)
            (out * upstream).sum().backward()
            grads.append((out.detach(), v.grad))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def random_meshes(batch=3, vertices=40, faces=60, dtype=torch.float32, seed=0):
    """Random triangles in front of CAMERA (z in [1, 3]), both windings."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(batch, vertices, 2, generator=g, dtype=dtype) - 0.5) * 1.5
    z = 1.0 + 2.0 * torch.rand(batch, vertices, 1, generator=g, dtype=dtype)
    return torch.cat([xy * z, z], -1), torch.randint(0, vertices, (faces, 3), generator=g)


def face_inputs_and_grad(verts, faces, backend, upstream):
    x = verts.clone().requires_grad_()
    fvz, fvi, fnz = face_inputs(x, faces, CAMERA, backend)
    ((fvz * upstream[0]).sum() + (fvi * upstream[1]).sum()).backward()
    return fvz.detach(), fvi.detach(), fnz, x.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [None, 7], ids=["default-chunk", "chunk-7"])
def test_warp_face_inputs_match_torch(monkeypatch, device, dtype, chunk):
    """The Warp kernel computes the torch function's projection with the same float operations in the
    same order: identical bits; the facing cosine to rounding (sqrt), with the same sign. Also with
    several CPU threads' worth of faces per item (a chunk of 7 faces per thread, 60 faces)."""
    if chunk is not None:
        monkeypatch.setattr(warp_project, "FACE_CHUNK", chunk)
    verts, faces = (t.to(device) for t in random_meshes(dtype=dtype))
    g = torch.Generator().manual_seed(1)
    upstream = [
        torch.randn(3, 60, 3, generator=g, dtype=dtype),
        torch.randn(3, 60, 3, 2, generator=g, dtype=dtype),
    ]
    upstream = [u.to(device) for u in upstream]
    got = face_inputs_and_grad(verts, faces, "warp", upstream)
    expected = face_inputs_and_grad(verts, faces, "torch", upstream)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2], atol=1e-6, rtol=1e-6)
    assert torch.equal(got[2] >= 0, expected[2] >= 0)
    torch.testing.assert_close(got[3], expected[3], atol=1e-5, rtol=1e-5)


def test_warp_face_inputs_gradcheck():
    verts, faces = random_meshes(batch=2, vertices=6, faces=5, dtype=torch.float64, seed=3)
    verts = verts.requires_grad_()

    def fn(x):
        fvz, fvi, _ = face_inputs(x, faces, CAMERA, "warp")
        return fvz, fvi

    assert torch.autograd.gradcheck(fn, (verts,), eps=1e-6, atol=1e-7)


def test_warp_face_inputs_split_over_threads():
    """Batch items split over 2 threads (whole items each): every vertex gradient is still complete."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        verts, faces = random_meshes(batch=5, vertices=4, faces=300, dtype=torch.float64, seed=4)
        g = torch.Generator().manual_seed(5)
        upstream = [torch.randn(5, 300, 3, generator=g, dtype=torch.float64)]
        upstream.append(torch.randn(5, 300, 3, 2, generator=g, dtype=torch.float64))
        got = face_inputs_and_grad(verts, faces, "warp", upstream)
        expected = face_inputs_and_grad(verts, faces, "torch", upstream)
        torch.testing.assert_close(got[3], expected[3], atol=1e-10, rtol=1e-10)
    finally:
        torch.set_num_threads(threads)


def test_face_inputs_rejects_unknown_backend():
    verts, faces = random_meshes(batch=1)
    with pytest.raises(ValueError, match="backend"):
        face_inputs(verts, faces, CAMERA, "kaolin")
