"""OpenCV pinhole camera and its conversion to the DIB-R rasterizer's inputs (the only such place).

Camera space (OpenCV): x right, y down, z forward, meters. Pixels: (u, v), the top-left pixel's centre
is (0.5, 0.5). Rasterizer (DIB-R, see DESIGN.md): NDC x right, y up, pixel (i, j) centre at
((2j + 1 - W) / W, (H - 2i - 1) / H), so ``x_ndc = 2u / W - 1`` and ``y_ndc = 1 - 2v / H``: the pixel
centres of both conventions coincide. DIB-R keeps the largest z, so the depth z goes in as ``-z``.

Face orientation: meshes here wind their faces counter-clockwise seen from outside (outward normals).
``face_normals_z`` is the cosine between a face's outward normal and the direction from the face to the
camera centre: >= 0 for faces turned towards the camera. Its sign is exactly that of the face's signed
area in NDC (y up), so front faces are the ones that appear counter-clockwise in the displayed image.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from harp_kaolin.geometry import gather_corners
from warp_kernels.project import project_vertices

_TINY = 1e-20  # guards the normalization of degenerate faces (their cosine is then 0)


@dataclass(frozen=True)
class Camera:
    """OpenCV pinhole intrinsics in pixels for a ``width`` x ``height`` image."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self):
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("fx", "fy"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict) -> Camera:
        """Camera from a dict with keys width, height, fx, fy, cx, cy (other keys are ignored)."""
        missing = [k for k in ("width", "height", "fx", "fy", "cx", "cy") if k not in values]
        if missing:
            raise ValueError(f"camera is missing {missing}; expected width, height, fx, fy, cx, cy")
        return cls(
            width=int(values["width"]),
            height=int(values["height"]),
            fx=float(values["fx"]),
            fy=float(values["fy"]),
            cx=float(values["cx"]),
            cy=float(values["cy"]),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> Camera:
        """Camera from a camera.json file (keys width, height, fx, fy, cx, cy)."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        """The camera.json dict."""
        return asdict(self)

    def scaled(self, new_width: int, new_height: int) -> Camera:
        """The same camera for the image resized to ``new_width`` x ``new_height``.

        Pixel edges scale (u' = u * new_width / width), so pixel centres map to pixel centres.
        """
        sx, sy = new_width / self.width, new_height / self.height
        return Camera(new_width, new_height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)

    def intrinsics(self, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """(3, 3) matrix K with pixel coordinates ``(u, v, 1) ~ K @ (x, y, z)``."""
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device
        )


def project_to_ndc(vertices_cam: Tensor, camera: Camera) -> tuple[Tensor, Tensor]:
    """Project camera-space points to the rasterizer's NDC and depth.

    Args:
        vertices_cam: (B, V, 3) OpenCV camera coordinates; every point must have z > 0.
        camera: the pinhole camera.

    Returns:
        ndc_xy (B, V, 2): x right, y up, [-1, 1] across the image; z (B, V): ``-depth`` (nearest largest).
    """
    if vertices_cam.dim() != 3 or vertices_cam.shape[-1] != 3:
        raise ValueError(f"vertices_cam must have shape (B, V, 3), got {tuple(vertices_cam.shape)}")
    x, y, depth = vertices_cam.unbind(-1)
    u = camera.fx * x / depth + camera.cx
    v = camera.fy * y / depth + camera.cy
    ndc = torch.stack([2 * u / camera.width - 1, 1 - 2 * v / camera.height], dim=-1)
    return ndc, -depth


def _check_faces(vertices_cam: Tensor, faces: Tensor) -> None:
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices_cam.shape[1]):
        raise ValueError(f"faces must index the {vertices_cam.shape[1]} vertices of vertices_cam")


def face_inputs(
    vertices_cam: Tensor, faces: Tensor, camera: Camera, backend: str = "torch"
) -> tuple[Tensor, Tensor, Tensor]:
    """Rasterizer inputs for a mesh seen by ``camera``.

    Args:
        vertices_cam: (B, V, 3) OpenCV camera coordinates (z > 0).
        faces: (F, 3) vertex indices, counter-clockwise seen from outside.
        camera: the pinhole camera.
        backend: "torch" or "warp": how the vertices are projected (``vertex_inputs``, the same bits).

    Returns:
        face_vertices_z (B, F, 3) = -depth, face_vertices_image (B, F, 3, 2) NDC y up, and
        face_normals_z (B, F): cosine between the outward normal and the direction to the camera.
    """
    z, ndc, face_normals_z = vertex_inputs(vertices_cam, faces, camera, backend)
    faces = faces.long()
    return gather_corners(z, faces), gather_corners(ndc, faces), face_normals_z


def vertex_inputs(
    vertices_cam: Tensor, faces: Tensor, camera: Camera, backend: str = "torch"
) -> tuple[Tensor, Tensor, Tensor]:
    """Rasterizer inputs per vertex, for the rasterizer's indexed form
    (``warp_kernels.raster.dibr_rasterization_indexed``), which reads each face's corners through
    ``faces``; ``face_inputs`` gathers them at the faces for Kaolin's per-face arguments.

    Args:
        vertices_cam, faces, camera: as ``face_inputs``.
        backend: "torch" or "warp" (``warp_kernels.project.project_vertices``, the same bits).

    Returns:
        vertices_z (B, V) = -depth, vertices_image (B, V, 2) NDC y up, and face_normals_z (B, F) as
        ``face_inputs`` (no gradient).
    """
    _check_faces(vertices_cam, faces)
    if backend == "warp":
        intrinsics = (camera.fx, camera.fy, camera.cx, camera.cy)
        return project_vertices(vertices_cam, faces, intrinsics, (camera.width, camera.height))
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'warp', got {backend!r}")
    ndc, z = project_to_ndc(vertices_cam, camera)
    return z, ndc, _face_normals_z(vertices_cam, faces.long())


def _face_normals_z(vertices_cam: Tensor, faces: Tensor) -> Tensor:
    """(B, F) cosine between each face's outward normal and the direction from its centroid to the eye."""
    with torch.no_grad():  # the facing test carries no gradient; per component, no small reductions
        p = [[c.index_select(1, faces[:, k]) for c in vertices_cam.unbind(-1)] for k in range(3)]
        e1 = [p[1][i] - p[0][i] for i in range(3)]
        e2 = [p[2][i] - p[0][i] for i in range(3)]
        normal = [e1[(i + 1) % 3] * e2[(i + 2) % 3] - e1[(i + 2) % 3] * e2[(i + 1) % 3] for i in range(3)]
        to_camera = [-(p[0][i] + p[1][i] + p[2][i]) / 3 for i in range(3)]
        dot = normal[0] * to_camera[0] + normal[1] * to_camera[1] + normal[2] * to_camera[2]
        n2 = normal[0].square() + normal[1].square() + normal[2].square()
        t2 = to_camera[0].square() + to_camera[1].square() + to_camera[2].square()
        return dot / (n2.sqrt() * t2.sqrt()).clamp_min(_TINY)


def project_mesh(
    camera: Camera,
    vertices_cam: Tensor,
    faces: Tensor,
    face_features: Tensor | list[Tensor],
    backend: str = "torch",
) -> tuple[Tensor, Tensor, Tensor | list[Tensor], Tensor]:
    """The four mesh arguments of ``rasterize`` in its order.

    Args:
        camera: the pinhole camera.
        vertices_cam: (B, V, 3) OpenCV camera coordinates (z > 0).
        faces: (F, 3) vertex indices, counter-clockwise seen from outside.
        face_features: (B, F, 3, D) per face-corner features (or a list), passed through.
        backend: "torch" or "warp", as ``face_inputs``.

    Returns:
        face_vertices_z (B, F, 3), face_vertices_image (B, F, 3, 2), face_features, face_normals_z (B, F).
    """
    face_vertices_z, face_vertices_image, face_normals_z = face_inputs(vertices_cam, faces, camera, backend)
    return face_vertices_z, face_vertices_image, face_features, face_normals_z
