"""DIB-R rasterization front end: one function, three interchangeable backends.

``backend="warp"`` (default) runs :mod:`warp_kernels.raster` on CPU or CUDA, ``"torch"`` its pure-torch
twin, ``"kaolin"`` NVIDIA Kaolin's own ``dibr_rasterization`` (CUDA only). All three share Kaolin v0.18's
semantics (see DESIGN.md, "Conventions"), so switching backend changes nothing but speed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from warp_kernels.raster import check_dibr_inputs, dibr_rasterization_indexed, dibr_rasterization_packed
from warp_kernels.raster import dibr_rasterization as warp_dibr_rasterization
from warp_kernels.reference import dibr_rasterization as torch_dibr_rasterization

BACKENDS = ("warp", "torch", "kaolin")
KAOLIN_INSTALL_HINT = (
    "Kaolin's wheels are not on PyPI (its PyPI entry is a placeholder): install a CUDA build matching your "
    "torch, e.g. `pip install kaolin==0.18.0 -f https://nvidia-kaolin.s3.us-east-2.amazonaws.com/"
    "torch-<TORCH_VERSION>_cu<CUDA_VERSION>.html` (or conda-forge's kaolin), or use backend='warp' "
    "(same results, CPU and CUDA)"
)


@dataclass(frozen=True)
class RasterOutput:
    """What the rasterizer produces for a batch of B images of H x W pixels.

    Attributes:
        features: (B, H, W, D) screen-space interpolated face-vertex features, zero on background;
            a list/tuple of (B, H, W, D_i) when the features were given as a list/tuple.
        soft_mask: (B, H, W) DIB-R soft silhouette in [0, 1] (1 on covered pixels).
        face_idx: (B, H, W) int64 index of the visible face, -1 on background.
    """

    features: Tensor | list[Tensor] | tuple[Tensor, ...]
    soft_mask: Tensor
    face_idx: Tensor

    def __iter__(self):
        """Unpack like Kaolin's tuple: ``features, soft_mask, face_idx = rasterize(...)``."""
        return iter((self.features, self.soft_mask, self.face_idx))


def _kaolin_dibr(
    height, width, face_vertices_z, face_vertices_image, face_features, face_normals_z, **kwargs
):
    try:
        from kaolin.render.mesh import dibr_rasterization
    except (ImportError, OSError) as err:
        message = f"backend='kaolin' needs NVIDIA Kaolin, which could not be imported ({err}). "
        raise RuntimeError(message + KAOLIN_INSTALL_HINT) from err
    if not face_vertices_image.is_cuda:
        raise RuntimeError(
            "backend='kaolin' runs only on CUDA tensors (Kaolin's DIB-R kernels are CUDA-only), got "
            f"face_vertices_image on {face_vertices_image.device}; move the inputs to CUDA or use "
            "backend='warp'"
        )
    features, soft_mask, face_idx = dibr_rasterization(
        height, width, face_vertices_z, face_vertices_image, face_features, face_normals_z, **kwargs
    )
    if isinstance(face_features, list):  # Kaolin returns a tuple for a list input
        features = list(features)
    return features, soft_mask, face_idx


def rasterize(
    height: int,
    width: int,
    face_vertices_z: Tensor,
    face_vertices_image: Tensor,
    face_features: Tensor | list[Tensor],
    face_normals_z: Tensor,
    backend: str = "warp",
    soft_mask: bool = True,
    **dibr_kwargs,
) -> RasterOutput:
    """DIB-R rasterization (Kaolin v0.18 ``dibr_rasterization``) with a selectable backend.

    Args:
        height: image height H in pixels.
        width: image width W in pixels.
        face_vertices_z: (B, F, 3) depth per face vertex; the largest interpolated value is visible
            (see :func:`harp_kaolin.render.camera.face_inputs`).
        face_vertices_image: (B, F, 3, 2) NDC positions in [-1, 1], y up.
        face_features: (B, F, 3, D) per face-vertex features, or a list of (B, F, 3, D_i).
        face_normals_z: (B, F); faces with negative values are not drawn.
        backend: "warp" (default), "torch" or "kaolin" (CUDA tensors and a real Kaolin install).
        soft_mask: False skips the soft mask (where it is not used, e.g. shadow maps) and returns the
            hard coverage in its place (1 on covered pixels, 0 elsewhere, no gradient).
        **dibr_kwargs: sigmainv, boxlen, knum, multiplier, eps (Kaolin's defaults 7000, 0.02, 30, 1000, 1e-8).

    Returns:
        RasterOutput with features (B, H, W, D), soft_mask (B, H, W) and face_idx (B, H, W).
    """
    _check_arguments(backend, dibr_kwargs)
    args = (height, width, face_vertices_z, face_vertices_image, face_features, face_normals_z)
    check_dibr_inputs(*args, dibr_kwargs.get("knum", 30))
    if backend == "warp":
        result = warp_dibr_rasterization(*args, soft_mask=soft_mask, **dibr_kwargs)
    elif backend == "torch":
        result = torch_dibr_rasterization(*args, soft_mask=soft_mask, **dibr_kwargs)
    else:
        features, soft, face_idx = _kaolin_dibr(*args, **dibr_kwargs)
        result = (features, soft if soft_mask else (face_idx >= 0).to(soft.dtype), face_idx)
    return RasterOutput(*result)


@dataclass(frozen=True)
class PackedRasterOutput:
    """The rasterizer's output with the features at the covered pixels only.

    Attributes:
        features: (N, D) interpolated features of the N covered pixels.
        flat_index: (N,) long increasing index of the covered pixels into the flattened (B * H * W) image.
        soft_mask: (B, H, W) DIB-R soft silhouette (or the hard coverage with ``soft_mask=False``).
        face_idx: (B, H, W) long visible face, -1 on background.
    """

    features: Tensor
    flat_index: Tensor
    soft_mask: Tensor
    face_idx: Tensor


def rasterize_packed(
    height: int,
    width: int,
    face_vertices_z: Tensor,
    face_vertices_image: Tensor,
    face_features: Tensor,
    face_normals_z: Tensor,
    backend: str = "warp",
    soft_mask: bool = True,
    out: tuple[Tensor, Tensor] | None = None,
    **dibr_kwargs,
) -> PackedRasterOutput:
    """``rasterize`` returning the features at the covered pixels only (same values and gradients as
    gathering the dense features where ``face_idx >= 0``).

    The Warp backend never builds the dense (B, H, W, D) feature image nor its gradient; the torch and
    Kaolin backends rasterize densely and gather. ``out``: (soft mask, face index) buffers that the Warp
    backend writes into (``dibr_rasterization_packed``).
    """
    _check_arguments(backend, dibr_kwargs)
    args = (height, width, face_vertices_z, face_vertices_image, face_features, face_normals_z)
    if backend == "warp":
        features, soft, face_idx, flat_index = dibr_rasterization_packed(
            *args, soft_mask=soft_mask, out=out, **dibr_kwargs
        )
        return PackedRasterOutput(features, flat_index, soft, face_idx)
    if out is not None:
        raise ValueError(f"out is supported by the warp backend only, not {backend!r}")
    dense = rasterize(*args, backend=backend, soft_mask=soft_mask, **dibr_kwargs)
    flat_index = (dense.face_idx.reshape(-1) >= 0).nonzero()[:, 0]
    features = dense.features.reshape(-1, dense.features.shape[-1])[flat_index]
    return PackedRasterOutput(features, flat_index, dense.soft_mask, dense.face_idx)


def rasterize_indexed(
    height: int,
    width: int,
    vertices_z: Tensor,
    vertices_image: Tensor,
    faces: Tensor,
    face_normals_z: Tensor,
    soft_mask: bool = True,
    out: tuple[Tensor, Tensor] | None = None,
    **dibr_kwargs,
) -> PackedRasterOutput:
    """The Warp backend's ``rasterize_packed`` of the barycentrics, with the mesh given per vertex
    (``harp_kaolin.render.camera.vertex_inputs``): the rasterizer reads each face's corners through
    ``faces`` (int32), so no (B, F, 3, ...) corner arrays are made and the gradients come summed per
    vertex (``warp_kernels.raster.dibr_rasterization_indexed``). The same result as ``rasterize_packed``
    on the corners gathered at ``faces`` with identity corner features."""
    _check_arguments("warp", dibr_kwargs)
    features, soft, face_idx, flat_index = dibr_rasterization_indexed(
        height, width, vertices_z, vertices_image, faces, face_normals_z, soft_mask=soft_mask, out=out,
        **dibr_kwargs,
    )  # fmt: skip
    return PackedRasterOutput(features, flat_index, soft, face_idx)


def _check_arguments(backend: str, dibr_kwargs: dict) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    unknown = set(dibr_kwargs) - {"sigmainv", "boxlen", "knum", "multiplier", "eps"}
    if unknown:
        raise ValueError(
            f"unknown DIB-R arguments {sorted(unknown)}; expected sigmainv, boxlen, knum, multiplier, eps"
        )
