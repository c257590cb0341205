"""Geometry energies (ARAP, Laplacian, normal consistency): Warp ops against their torch twins,
float64 gradcheck, and values computed by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from tests.conftest import DEVICES
from warp_kernels.arap import arap_energy
from warp_kernels.laplacian import _MODE, _LaplacianFunction, cotangent_weights, laplacian_smoothing
from warp_kernels.mesh_topology import MeshTopology
from warp_kernels.normal_consistency import normal_consistency

FORWARD_TOL = {torch.float32: 2e-5, torch.float64: 1e-11}  # warp vs twin, relative and absolute
BACKWARD_TOL = {torch.float32: 2e-4, torch.float64: 1e-9}  # gradients, warp vs twin, relative and absolute
GRADCHECK_EPS = 1e-6  # finite-difference step of torch.autograd.gradcheck (float64)
GRADCHECK_ATOL = 1e-5
GRADCHECK_RTOL = 1e-4
ZERO_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}  # energies that are 0 in exact arithmetic
EXACT_TOL = 1e-12  # hand-computed values (float64)
DTYPES = (torch.float32, torch.float64)

# (name, energy(vertices, template, topology, reduction, backend)): every op and variant under test
ENERGIES = {
    "arap_edge": lambda x, t, topo, r, be: arap_energy(x, t, topo, reduction=r, backend=be),
    "arap_rigid": lambda x, t, topo, r, be: arap_energy(x, t, topo, "rigid", reduction=r, backend=be),
    "arap_rigid_cot": lambda x, t, topo, r, be: arap_energy(x, t, topo, "rigid", "cot", r, be),
    "laplacian_uniform": lambda x, t, topo, r, be: laplacian_smoothing(x, topo, "uniform", r, be),
    "laplacian_cot": lambda x, t, topo, r, be: laplacian_smoothing(x, topo, "cot", r, be),
    "laplacian_cotcurv": lambda x, t, topo, r, be: laplacian_smoothing(x, topo, "cotcurv", r, be),
    "normal_consistency": lambda x, t, topo, r, be: normal_consistency(x, topo, r, be),
}
# Variants whose weights are computed from the input without gradient (as PyTorch3D): gradcheck holds
# only with those weights frozen.
FROZEN_WEIGHTS = ("laplacian_cot", "laplacian_cotcurv")


# ---------------------------------------------------------------------------------------------- meshes
def grid(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat regular grid in the z = 0 plane, unit spacing, every square split along the same diagonal."""
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    vertices = torch.stack([xs, ys, torch.zeros_like(xs)], dim=-1).reshape(-1, 3).double()
    idx = torch.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return vertices, faces


def octahedron() -> tuple[torch.Tensor, torch.Tensor]:
    """Closed octahedron with outward winding."""
    vertices = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]).double()
    faces = torch.tensor(
        [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]
    )
    return vertices, faces


def square() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit square in z = 0 split along the diagonal (0, 2) into two triangles."""
    vertices = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]).double()
    return vertices, torch.tensor([[0, 1, 2], [0, 2, 3]])


MESHES = {"grid": lambda: grid(4, 5), "octahedron": octahedron}


def random_case(mesh: str, device: str, dtype: torch.dtype, batch: int = 3, seed: int = 0):
    """Template (1, V, 3) = the mesh with noise, vertices (B, V, 3) = template + noise, and topology."""
    vertices, faces = MESHES[mesh]()
    g = torch.Generator().manual_seed(seed)
    template = vertices + 0.15 * torch.randn(vertices.shape, generator=g, dtype=torch.float64)
    posed = template + 0.2 * torch.randn((batch, *vertices.shape), generator=g, dtype=torch.float64)
    topology = MeshTopology.build(faces.to(device))
    return posed.to(device, dtype), template[None].to(device, dtype), topology


def random_rotation(seed: int = 0) -> torch.Tensor:
    q, r = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


# ---------------------------------------------------------------------------------------------- topology
def test_topology_of_a_tetrahedron():
    topo = MeshTopology.build(torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]]))
    assert topo.num_vertices == 4
    assert topo.edges.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert topo.face_pairs.shape == (6, 4)  # closed: every edge has one pair
    for v0, v1, a, b in topo.face_pairs.tolist():  # the opposite vertices complete the edge's two faces
        assert v0 < v1 and sorted({v0, v1, a, b}) == [0, 1, 2, 3]
    assert topo.neighbor_offsets.tolist() == [0, 3, 6, 9, 12]
    for i in range(4):
        row = slice(topo.neighbor_offsets[i], topo.neighbor_offsets[i + 1])
        assert topo.neighbors[row].tolist() == [j for j in range(4) if j != i]
        assert all(i in topo.edges[e].tolist() for e in topo.neighbor_edges[row].tolist())


def test_topology_boundary_and_non_manifold_edges():
    open_topo = MeshTopology.build(square()[1])
    assert open_topo.face_pairs.tolist() == [[0, 2, 1, 3]]  # only the diagonal is shared
    fan = MeshTopology.build(torch.tensor([[0, 1, 2], [1, 0, 3], [0, 1, 4]]))  # three faces on (0, 1)
    assert sorted(map(tuple, fan.face_pairs.tolist())) == [(0, 1, 2, 3), (0, 1, 2, 4), (0, 1, 3, 4)]


def test_topology_checks_faces():
    with pytest.raises(ValueError, match=r"faces must have shape \(F, 3\)"):
        MeshTopology.build(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="faces must hold integer indices"):
        MeshTopology.build(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"faces must index vertices in \[0, 3\)"):
        MeshTopology.build(torch.tensor([[0, 1, 3]]), num_vertices=3)


# ------------------------------------------------------------------------------------ warp vs twin
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("name", ENERGIES)
def test_forward_matches_twin(name, mesh, dtype, device):
    vertices, template, topo = random_case(mesh, device, dtype)
    energy, tol = ENERGIES[name], FORWARD_TOL[dtype]
    for reduction in ("none", "mean"):
        got = energy(vertices, template, topo, reduction, "warp")
        expected = energy(vertices, template, topo, reduction, "torch")
        assert got.dtype == dtype and got.device == vertices.device
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    assert got.item() > 0.01  # the case is far from the energy's minimum


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ENERGIES)
def test_backward_matches_twin(name, dtype, device):
    vertices, template, topo = random_case("grid", device, dtype, seed=1)
    energy, tol = ENERGIES[name], BACKWARD_TOL[dtype]
    grads = []
    for backend in ("warp", "torch"):
        x, t = vertices.clone().requires_grad_(True), template.clone().requires_grad_(True)
        values = energy(x, t, topo, "none", backend)
        upstream = torch.randn(values.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        values.backward(upstream.to(device))
        grads.append((x.grad, t.grad))
    (gx, gt), (ex, et) = grads
    torch.testing.assert_close(gx, ex, rtol=tol, atol=tol)
    if name == "arap_edge":  # the only term with a gradient to its template
        torch.testing.assert_close(gt, et, rtol=tol, atol=tol)
    else:
        assert gt is None and et is None


@pytest.mark.parametrize("name", ENERGIES)
def test_non_contiguous_inputs(name):
    vertices, template, topo = random_case("grid", "cpu", torch.float64, seed=5)
    strided = torch.zeros(*vertices.shape[:2], 5, dtype=vertices.dtype)[..., 1:4]
    strided.copy_(vertices)
    assert not strided.is_contiguous()
    grads = []
    for x in (strided, vertices.clone()):
        x.requires_grad_(True)
        values = ENERGIES[name](x, template, topo, "none", "warp")
        values.backward(torch.ones_like(values))
        assert x.grad is not None and x.grad.abs().max() > 0
        grads.append((values.detach(), x.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ENERGIES)
def test_gradcheck_float64(name, device):
    vertices, template, topo = random_case("octahedron", device, torch.float64, batch=2, seed=3)
    x = vertices.clone().requires_grad_(True)
    if name in FROZEN_WEIGHTS:
        weights, areas = cotangent_weights(vertices, topo)
        mode = _MODE[name.removeprefix("laplacian_")]

        def fn(v):
            return _LaplacianFunction.apply(v, weights, areas, mode, topo)

        inputs = (x,)
    elif name == "arap_edge":

        def fn(v, t):
            return arap_energy(v, t, topo, reduction="none")

        inputs = (x, template.clone().requires_grad_(True))
    else:

        def fn(v):
            return ENERGIES[name](v, template, topo, "none", "warp")

        inputs = (x,)
    assert torch.autograd.gradcheck(fn, inputs, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cotangent_weights_match_twin(dtype, device):
    vertices, _, topo = random_case("octahedron", device, dtype)
    for got, expected in zip(cotangent_weights(vertices, topo), cotangent_weights(vertices, topo, "torch")):
        torch.testing.assert_close(got, expected, rtol=FORWARD_TOL[dtype], atol=FORWARD_TOL[dtype])


# ---------------------------------------------------------------------------------------- analytic
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["warp", "torch"])
@pytest.mark.parametrize("method,weights", [("edge", "uniform"), ("rigid", "uniform"), ("rigid", "cot")])
def test_arap_is_zero_for_template_and_rigid_motions(method, weights, backend, dtype, device):
    vertices, _, topo = random_case("grid", device, torch.float64)
    template = vertices[:1]
    moved = template @ random_rotation().to(device).T + torch.tensor([0.3, -1.0, 2.0], device=device)
    batch = torch.cat([template, moved]).to(dtype)
    values = arap_energy(batch, template.to(dtype), topo, method, weights, "none", backend)
    torch.testing.assert_close(values, torch.zeros_like(values), rtol=0, atol=ZERO_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["warp", "torch"])
@pytest.mark.parametrize("method", ["uniform", "cot", "cotcurv"])
def test_laplacian_is_zero_inside_a_flat_grid(method, backend, device):
    vertices, faces = grid(5, 6)
    if method != "uniform":  # cotangent Laplacians vanish inside any planar mesh, regular or not
        g = torch.Generator().manual_seed(4)
        vertices[:, :2] += 0.2 * (torch.rand(vertices.shape[0], 2, generator=g, dtype=torch.float64) - 0.5)
    values = laplacian_smoothing(
        vertices[None].to(device), MeshTopology.build(faces.to(device)), method, "none", backend
    )
    inside = values.reshape(5, 6)[1:-1, 1:-1]
    torch.testing.assert_close(inside, torch.zeros_like(inside), rtol=0, atol=EXACT_TOL)
    assert values.reshape(5, 6)[0].min() > 0.1  # the boundary is not flat in this sense


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_hand_computed_values_on_a_square(backend, device):
    """Two triangles (0, 1, 2), (0, 2, 3) on the unit square; values worked out on paper."""
    vertices, faces = square()
    x, topo = vertices[None].to(device), MeshTopology.build(faces.to(device))

    def close(value, expected):
        torch.testing.assert_close(
            value, torch.tensor(expected, dtype=value.dtype, device=device), rtol=0, atol=EXACT_TOL
        )

    # cot a + cot b per edge (0,1), (0,2), (0,3), (1,2), (2,3): 45 degree angles give 1, right angles 0.
    weights, areas = cotangent_weights(x, topo, backend)
    close(weights[0], [1.0, 0.0, 1.0, 1.0, 1.0])
    close(areas[0], [1.0, 0.5, 1.0, 0.5])
    # uniform: |L v| = 2 sqrt2 / 3 at the degree-3 corners 0 and 2, sqrt2 / 2 at corners 1 and 3.
    close(laplacian_smoothing(x, topo, "uniform", backend=backend), 7 * math.sqrt(2) / 12)
    # cot: the diagonal has weight 0, so L v is the midpoint of the two sides minus the corner.
    close(laplacian_smoothing(x, topo, "cot", backend=backend), math.sqrt(2) / 2)
    # cotcurv: sum of the two side vectors / (4 x area of the corner's faces): sqrt2/4, sqrt2/2, ...
    close(laplacian_smoothing(x, topo, "cotcurv", backend=backend), 3 * math.sqrt(2) / 8)
    # edge ARAP, square stretched 2x along x: sides (0,1), (2,3) change by 1, the diagonal by sqrt5 - sqrt2.
    stretched = x * torch.tensor([2.0, 1.0, 1.0], dtype=x.dtype, device=device)
    close(arap_energy(stretched, x, topo, backend=backend), (9 - 2 * math.sqrt(10)) / 5)
    # rigid ARAP, square scaled 2x: R = I everywhere, so E = (2 - 1)^2 x weighted mean squared edge length:
    # uniform (1 + 2 + 1 + 1 + 1) / 5, cot (the diagonal has weight 0) 4 / 4.
    close(arap_energy(2 * x, x, topo, "rigid", backend=backend), 6 / 5)
    close(arap_energy(2 * x, x, topo, "rigid", "cot", backend=backend), 1.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_normal_consistency_of_folded_squares(backend, device):
    """Faces (0, 2, 1), (0, 3, 2) hinge on the edge (0, 2) along x: flat 0, right angle 1, folded shut 2."""
    topo = MeshTopology.build(torch.tensor([[0, 2, 1], [0, 3, 2]], device=device))
    hinge = torch.tensor([[0, 0, 0], [0.5, -1, 0], [1, 0, 0]], dtype=torch.float64)
    for tip, expected in (([0.5, 1, 0], 0.0), ([0.5, 0, 1], 1.0), ([0.5, 0, -2], 1.0), ([0.5, -3, 0], 2.0)):
        x = torch.cat([hinge, torch.tensor([tip], dtype=torch.float64)])[None].to(device)
        value = normal_consistency(x, topo, backend=backend)
        torch.testing.assert_close(
            value, torch.tensor(expected, dtype=value.dtype, device=device), rtol=0, atol=EXACT_TOL
        )


# ---------------------------------------------------------------------------------------- inputs
def test_inputs_are_checked_with_the_argument_named():
    vertices, template, topo = random_case("octahedron", "cpu", torch.float32)
    with pytest.raises(ValueError, match=r"vertices must have shape \(B, 6, 3\), got \(6, 3\)"):
        laplacian_smoothing(vertices[0], topo)
    with pytest.raises(ValueError, match="vertices must be float32 or float64, got torch.int64"):
        normal_consistency(vertices.long(), topo)
    with pytest.raises(ValueError, match=r"template must have shape \(V, 3\), \(1, V, 3\) or \(3, V, 3\)"):
        arap_energy(vertices, template.expand(2, -1, -1), topo)
    with pytest.raises(ValueError, match="template must have the dtype of vertices"):
        arap_energy(vertices, template.double(), topo)
    with pytest.raises(ValueError, match="method must be one of 'edge', 'rigid', got 'sorkine'"):
        arap_energy(vertices, template, topo, method="sorkine")
    with pytest.raises(ValueError, match="weights must be one of"):
        arap_energy(vertices, template, topo, "rigid", weights="mean_value")
    with pytest.raises(ValueError, match="method must be one of 'uniform', 'cot', 'cotcurv'"):
        laplacian_smoothing(vertices, topo, method="cotan")
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'none', got 'sum'"):
        normal_consistency(vertices, topo, reduction="sum")
    with pytest.raises(ValueError, match="backend must be one of 'warp', 'torch', got 'kaolin'"):
        normal_consistency(vertices, topo, backend="kaolin")
    with pytest.raises(TypeError, match="topology must be a MeshTopology"):
        normal_consistency(vertices, topo.faces)


def test_mesh_without_face_pairs_has_zero_normal_consistency():
    x = torch.rand(2, 3, 3, requires_grad=True)
    topo = MeshTopology.build(torch.tensor([[0, 1, 2]]))
    for backend in ("warp", "torch"):
        value = normal_consistency(x, topo, backend=backend)
        value.backward()
        assert value.item() == 0.0 and x.grad.abs().max() == 0.0


def test_importing_the_ops_does_not_initialize_warp():
    code = (
        "import warp_kernels.arap, warp_kernels.laplacian, warp_kernels.normal_consistency\n"
        "import warp._src.context as c\n"
        "assert c.runtime is None, 'warp was initialized at import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
