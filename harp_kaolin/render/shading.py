"""Lambertian shading with one point light, compositing, and shadow-map visibility.

Shading (HARP, Phong without specular):

    I = albedo * (k_a + k_d * max(0, L . N) * V),   k_a = sigmoid(a),  k_d = 1 - k_a
    out = soft_mask * I + (1 - soft_mask) * background          (background = 1: white)

L is the unit direction from the surface point to the light (position in camera coordinates), N the
unit shading normal, V the shadow-map visibility.

Light-view camera of the shadow map (``light_view``): a pinhole at the light looking at the centre c of
the hand's bounding sphere (centre and radius r from the vertices' bounding box, without gradient).
When the light is farther than ``max_distance`` (1.5 m, as HARP) the eye moves to that distance along
the same direction. A light nearer than ``LIGHT_MIN_DISTANCE_RADII * r`` (1.2 r) cannot see the whole
sphere in one perspective map: the eye then backs off to that distance along the same direction (the
shadows are those cast from there; this never happens for a hand lit from 0.3 m or more). The square
field of view is the cone tangent to the sphere grown by ``margin``:
``tan(half angle) = margin * r / sqrt(D^2 - (margin * r)^2)`` at eye distance D. Axes are OpenCV-like
(x right, y down, z forward); depth is the light-view z, in meters. A 256 x 256 map spans about
2.1 r at the hand whatever D, so a texel is ~1 mm for a ~0.11 m hand radius, finer than the 5 mm bias.
The eye position carries the gradient to the light position; centre, radius and focal length do not.

All functions are plain functions on tensors; ``Renderer`` strings them together.
Dimension names: B batch, V vertices, F faces, N points (e.g. covered pixels), S shadow-map size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harp_kaolin.render.camera import Camera, face_inputs, vertex_inputs
from harp_kaolin.render.rasterize import rasterize_packed
from warp_kernels import reference
from warp_kernels.project import bounding_sphere as warp_bounding_sphere
from warp_kernels.project import rigid_transform
from warp_kernels.raster import depth_map_indexed
from warp_kernels.shadow import check_pcf_inputs, project_points
from warp_kernels.shadow import pcf_visibility as warp_pcf_visibility

SHADOW_SIZE = 256  # light-view resolution (texels per side)
SHADOW_SHARPNESS = 1000.0  # s in sigmoid(s (z_map - d + b)), per meter (HARP)
SHADOW_BIAS = 0.005  # b, meters (HARP paper; their code uses 0.008)
LIGHT_MAX_DISTANCE = 1.5  # meters from the hand centre; a farther light is moved to this distance
LIGHT_MIN_DISTANCE_RADII = 1.2  # the light-view eye stays at least this many bounding radii away
LIGHT_VIEW_MARGIN = 1.05  # the field of view covers the bounding sphere grown by this factor


def ambient_diffuse(ambient_logit: Tensor) -> tuple[Tensor, Tensor]:
    """(k_a, k_d) = (sigmoid(a), 1 - sigmoid(a)), same shape as ``ambient_logit``."""
    k_a = torch.sigmoid(ambient_logit)
    return k_a, 1 - k_a


def lambert(
    albedo: Tensor,
    normals: Tensor,
    points: Tensor,
    light_position: Tensor,
    ambient_logit: Tensor,
    visibility: Tensor | None = None,
) -> Tensor:
    """Lambertian shading with ambient term: ``albedo * (k_a + k_d * max(0, L . N) * V)``.

    Args:
        albedo: (..., C) surface colour.
        normals: (..., 3) unit shading normals.
        points: (..., 3) surface positions, camera coordinates.
        light_position: (..., 3) point-light position, broadcastable to ``points``.
        ambient_logit: (..., 1) or scalar a with k_a = sigmoid(a), broadcastable.
        visibility: (...,) shadow visibility V in [0, 1]; None = fully lit.

    Returns:
        (..., C) shaded colour.
    """
    to_light = torch.nn.functional.normalize(light_position - points, dim=-1, eps=1e-12)
    cos = (to_light * normals).sum(-1, keepdim=True).clamp_min(0.0)
    if visibility is not None:
        cos = cos * visibility[..., None]
    k_a, k_d = ambient_diffuse(ambient_logit)
    return albedo * (k_a + k_d * cos)


def composite(colour: Tensor, soft_mask: Tensor, background: float | Tensor = 1.0) -> Tensor:
    """Blend over a background with the soft silhouette: ``mask * colour + (1 - mask) * background``.

    Args:
        colour: (B, H, W, C) shaded image (zero where nothing is covered).
        soft_mask: (B, H, W) soft silhouette in [0, 1].
        background: scalar or (C,) background colour.

    Returns:
        (B, H, W, C) image.
    """
    m = soft_mask[..., None]
    return m * colour + (1 - m) * background


@dataclass(frozen=True)
class LightView:
    """Pinhole camera at the light for the shadow map (see the module docstring).

    Attributes:
        eye: (B, 3) camera centre, camera coordinates of the main view (differentiable in the light).
        rotation: (B, 3, 3) rows = light-view x (right), y (down), z (forward) axes.
        focal: (B,) focal length in texels (no gradient).
        size: S, texels per side; the principal point is the map centre (S/2, S/2).
        far: (B,) depth written where the map sees nothing (beyond the bounding sphere).
    """

    eye: Tensor
    rotation: Tensor
    focal: Tensor
    size: int
    far: Tensor

    def transform(self, points: Tensor) -> Tensor:
        """(B, N, 3) main-camera points to (B, N, 3) light-view coordinates."""
        return (points - self.eye[:, None]) @ self.rotation.transpose(1, 2)

    def project(self, points: Tensor, batch_index: Tensor) -> tuple[Tensor, Tensor]:
        """Texel coordinates (N, 2) and light-view depth (N,) of points (N, 3) of items ``batch_index``."""
        q = (self.rotation[batch_index] * (points - self.eye[batch_index])[:, None]).sum(-1)  # (N, 3)
        z = q[:, 2]
        zs = z.clamp_min(1e-6)  # points behind the eye cannot happen for the hand; keep them finite
        f = self.focal[batch_index, None]
        return f * q[:, :2] / zs[:, None] + self.size / 2, z


def bounding_sphere(vertices: Tensor, backend: str = "torch") -> tuple[Tensor, Tensor]:
    """Centre (B, 3) of the bounding box and radius (B,) of the sphere around it, without gradient.

    "warp" runs its Warp twin (``warp_kernels.project.bounding_sphere``: one kernel, the same bits); any
    other backend these torch operations.
    """
    if backend == "warp":
        return warp_bounding_sphere(vertices)
    v = vertices.detach()
    low, high = torch.aminmax(v, dim=1)
    centre = (low + high) / 2
    return centre, (v - centre[:, None]).square().sum(-1).amax(1).sqrt()


def light_view(
    vertices: Tensor,
    light_position: Tensor,
    size: int = SHADOW_SIZE,
    max_distance: float = LIGHT_MAX_DISTANCE,
    margin: float = LIGHT_VIEW_MARGIN,
    backend: str = "torch",
) -> LightView:
    """Shadow-map camera at the light, looking at the hand (see the module docstring).

    Args:
        vertices: (B, V, 3) camera coordinates.
        light_position: (B, 3) light positions, camera coordinates.
        size: shadow-map texels per side.
        max_distance: farther lights are moved to this distance from the hand centre, meters.
        margin: growth of the bounding sphere that the field of view covers.
        backend: of ``bounding_sphere`` (the same view either way).

    Returns:
        LightView.
    """
    centre, radius = bounding_sphere(vertices, backend)
    offset = light_position - centre
    distance = offset.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    direction = offset / distance
    placed = torch.maximum(distance.clamp_max(max_distance), LIGHT_MIN_DISTANCE_RADII * radius[:, None])
    eye = centre + direction * placed
    forward = -direction
    # Any roll about the axis works; the hint only has to stay away from the axis itself.
    hint = torch.zeros_like(forward)
    use_x = forward[:, 1].abs() > 0.9
    hint[:, 1] = torch.where(use_x, 0.0, 1.0)
    hint[:, 0] = torch.where(use_x, 1.0, 0.0)
    right = torch.nn.functional.normalize(torch.cross(hint, forward, dim=-1), dim=-1, eps=1e-12)
    down = torch.cross(forward, right, dim=-1)
    rotation = torch.stack([right, down, forward], dim=1)
    reach = placed.detach()[:, 0]  # intrinsics are a choice of resolution, not a function of the light
    grown = (margin * radius).clamp_max(0.999 * reach)
    tan_half = grown / (reach**2 - grown**2).sqrt()
    focal = (size / 2) / tan_half
    far = reach + 2 * margin * radius
    return LightView(eye=eye, rotation=rotation, focal=focal, size=int(size), far=far)


def shadow_map(
    vertices: Tensor, faces: Tensor, view: LightView, backend: str = "warp", **raster_options
) -> Tensor:
    """Light-view depth map, rendered with the project's rasterizer (gradients through its barycentrics).

    Only the covered texels' depths are interpolated (``rasterize_packed``) and no soft mask is made:
    a depth map has no use for either.

    Args:
        vertices: (B, V, 3) camera coordinates.
        faces: (F, 3) long vertex indices.
        view: the light-view camera.
        backend: rasterizer backend ("warp", "torch" or "kaolin").
        **raster_options: passed to ``rasterize``.

    Returns:
        (B, S, S) depth of the nearest surface per texel (row 0 = top), ``view.far`` where empty.
    """
    # One Camera for the batch: each item's focal length is folded into the x and y rows of its
    # light-view rotation (same pixels, same facing test: scaling x and y about the eye keeps every
    # face's orientation), so the points come out in one matrix product.
    reference = view.size / 2
    camera = Camera(view.size, view.size, reference, reference, view.size / 2, view.size / 2)
    s = view.focal / reference
    rows = torch.stack([s, s, torch.ones_like(s)], dim=-1)  # (B, 3)
    matrix = view.rotation * rows[..., None]
    if backend == "warp":  # one Warp kernel each way instead of torch's bmm (about 1 ms per call on CPU)
        scaled = rigid_transform(vertices, view.eye, matrix)
    else:
        scaled = (vertices - view.eye[:, None]) @ matrix.transpose(1, 2)
    if backend == "warp":  # the same map in one op (no soft mask, face index or packed rows), per vertex
        unknown = set(raster_options) - {"sigmainv", "boxlen", "knum", "multiplier", "eps"}
        if unknown:
            raise ValueError(f"unknown DIB-R arguments {sorted(unknown)}")
        options = {k: v for k, v in raster_options.items() if k in ("multiplier", "eps")}
        faces = faces.to(device=vertices.device, dtype=torch.int32).contiguous()
        vz, vi, fnz = vertex_inputs(scaled, faces, camera, "warp")
        return depth_map_indexed(view.size, view.size, vz, vi, faces, fnz, view.far, scale=-1.0, **options)
    fvz, fvi, fnz = face_inputs(scaled, faces, camera, "torch")
    # -depth of the corners (a view of fvz) is interpolated as the feature
    out = rasterize_packed(
        view.size, view.size, fvz, fvi, fvz[..., None], fnz, backend=backend, soft_mask=False,
        **raster_options,
    )  # fmt: skip
    empty = view.far[:, None].expand(-1, view.size * view.size).reshape(-1)
    return empty.index_put((out.flat_index,), -out.features[:, 0]).reshape(-1, view.size, view.size)


def pcf_visibility(
    depth_map: Tensor,
    coords: Tensor,
    depth: Tensor,
    batch_index: Tensor,
    sharpness: float = SHADOW_SHARPNESS,
    bias: float = SHADOW_BIAS,
    backend: str = "warp",
) -> Tensor:
    """3x3 PCF soft visibility (N,) of points in shadow maps; "torch" uses the pure-torch twin."""
    if backend == "torch":
        check_pcf_inputs(depth_map, coords, depth, batch_index)
        return reference.pcf_visibility(depth_map, coords, depth, batch_index, sharpness, bias)
    return warp_pcf_visibility(depth_map, coords, depth, batch_index, sharpness, bias)


def shadow_visibility(
    vertices: Tensor,
    faces: Tensor,
    points: Tensor,
    batch_index: Tensor,
    light_position: Tensor,
    size: int = SHADOW_SIZE,
    sharpness: float = SHADOW_SHARPNESS,
    bias: float = SHADOW_BIAS,
    backend: str = "warp",
    **raster_options,
) -> Tensor:
    """Shadow-map visibility V of surface points (HARP's shadow term).

    Args:
        vertices: (B, V, 3) camera coordinates.
        faces: (F, 3) long vertex indices.
        points: (N, 3) surface points (e.g. the camera-visible pixels' interpolated positions).
        batch_index: (N,) long batch item of each point.
        light_position: (B, 3) light positions, camera coordinates.
        size: shadow-map resolution.
        sharpness, bias: s and b of ``sigmoid(s (z_map - d + b))``.
        backend: "warp", "torch" or "kaolin" (rasterizer; the PCF lookup uses Warp unless "torch").
        **raster_options: passed to ``rasterize`` for the depth map.

    Returns:
        (N,) visibility in [0, 1].
    """
    b = vertices.shape[0]
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3), got {tuple(vertices.shape)}")
    if light_position.shape != (b, 3):
        raise ValueError(f"light_position must have shape ({b}, 3), got {tuple(light_position.shape)}")
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    view = light_view(vertices, light_position, size, backend=backend)
    depth_map = shadow_map(vertices, faces, view, backend, **raster_options)
    if backend == "torch":
        coords, depth = view.project(points, batch_index)
    else:  # its Warp twin
        coords, depth = project_points(points, batch_index, view.rotation, view.eye, view.focal, view.size)
    return pcf_visibility(depth_map, coords, depth, batch_index, sharpness, bias, backend=backend)
