"""The HARP renderer: DIB-R rasterization -> texture and normal map -> shadow map -> Lambert -> composite.

``Renderer`` owns only fixed data (camera, topology, UVs, options); everything learnable (vertices,
albedo, normal map, light, ambient) is passed to ``forward``. ``forward`` is a few calls of the plain
functions below, which tests call directly.

Attribute interpolation: the rasterizer interpolates only the three barycentric coordinates (identity
corner features: linear in screen space, as DIB-R, with its barycentric gradients), and every surface
attribute (position, UV, normal, tangent, handedness) is then interpolated with them on the covered
pixels only. This is exactly DIB-R's feature interpolation, but the dense per-pixel tensors stay 3 wide
and the per-pixel work scales with the hand's pixels, not the image.

Backends: "warp" computes the surface frames in fused Warp kernels (``warp_kernels.shading``), only at the
corners of the covered pixels' faces (the only frames the pixels read), and every
per-pixel step (position interpolation, shadow lookup, texturing + normal mapping + Lambert, composite)
in one op (``warp_kernels.pipeline``, running the kernels of the separate ops of ``warp_kernels``);
"torch" and "kaolin" use the plain torch functions below, which are those kernels' twins
(tests/test_fused_shading.py, tests/test_shadow.py, tests/test_pipeline.py).

CPU threads (Warp backend): a batch of several items is rendered as slices of items, one per thread, each
slice start to end on its own thread with its own autograd graph (``_render_slices``); the outputs are the
same, bit for bit, as one render of the batch, and the gradients the same up to the order of the sums of
the shared textures' gradients. One item, one thread, or CUDA: one render, whose launches
``warp_kernels.parallel`` splits over the threads.

Dimension names: B batch, V vertices, F faces, U uv vertices, W wedges, H W image, Ht Wt texture,
N covered pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from harp_kaolin.geometry import vertex_normals
from harp_kaolin.render.camera import Camera, project_mesh, vertex_inputs
from harp_kaolin.render.rasterize import rasterize_indexed, rasterize_packed
from harp_kaolin.render.shading import (
    SHADOW_BIAS,
    SHADOW_SHARPNESS,
    SHADOW_SIZE,
    lambert,
    light_view,
    shadow_map,
    shadow_visibility,
)
from harp_kaolin.render.texture import (
    bitangents,
    perturb_normals,
    sample_texture_packed,
    vertex_tangents,
    wedge_signs,
    wedges,
)
from warp_kernels import interpolate as _wk_interpolate
from warp_kernels import parallel
from warp_kernels import project as _wk_project
from warp_kernels import raster as _wk_raster
from warp_kernels import shading as _wk_shading
from warp_kernels import shadow as _wk_shadow
from warp_kernels.pipeline import render_pixels
from warp_kernels.shading import surface_frames as warp_surface_frames

BACKENDS = ("warp", "torch", "kaolin")


@dataclass(frozen=True)
class RenderOutput:
    """Rendered images.

    ``image``, ``silhouette`` and ``face_idx`` are made by every render; ``normals``, ``visibility`` and
    ``depth`` are unpacked from the covered pixels on first access (a fitting step reads none of them).

    Attributes:
        image: (B, H, W, 3) shaded colour composited over the background with the soft mask.
        silhouette: (B, H, W) DIB-R soft mask in [0, 1] (1 on covered pixels).
        face_idx: (B, H, W) long index of the visible face, -1 on background.
        pixels: the covered pixels (packed), with their camera-space positions.
        pixel_normals: (N, 3) unit shading normals of the covered pixels.
        pixel_visibility: (N,) shadow visibility of the covered pixels, None with shadows off.
        normals: (B, H, W, 3) unit shading normals (normal map applied), camera coordinates; 0 on background.
        visibility: (B, H, W) shadow visibility V in [0, 1]; 1 on background and with shadows off.
        depth: (B, H, W) camera z of the visible surface, meters; 0 on background.
    """

    image: Tensor
    silhouette: Tensor
    face_idx: Tensor
    pixels: Pixels
    pixel_normals: Tensor
    pixel_visibility: Tensor | None

    @cached_property
    def normals(self) -> Tensor:
        return unpack(self.pixel_normals, self.pixels, self.face_idx.shape)

    @cached_property
    def visibility(self) -> Tensor:
        if self.pixel_visibility is None:
            return torch.ones_like(self.silhouette)
        return unpack(self.pixel_visibility, self.pixels, self.face_idx.shape, fill=1.0)

    @cached_property
    def depth(self) -> Tensor:
        return unpack(self.pixels.position[:, 2], self.pixels, self.face_idx.shape)


@dataclass(frozen=True)
class Fragments:
    """Main-pass rasterization, covered pixels packed (N of them, in flat-index order).

    Attributes:
        barycentrics: (N, 3) screen-space barycentrics of the visible face at the covered pixels.
        flat_index: (N,) long index of the covered pixels into the flattened (B * H * W) image.
        batch_index: (N,) long batch item of each covered pixel.
        face: (N,) long visible face of each covered pixel.
        soft_mask: (B, H, W) DIB-R soft silhouette.
        face_idx: (B, H, W) long visible face, -1 on background.
    """

    barycentrics: Tensor
    flat_index: Tensor
    batch_index: Tensor
    face: Tensor
    soft_mask: Tensor
    face_idx: Tensor

    @classmethod
    def from_dense(cls, barycentrics: Tensor, soft_mask: Tensor, face_idx: Tensor) -> Fragments:
        """Pack (B, H, W, 3) barycentrics (differentiably) at the pixels where ``face_idx >= 0``."""
        flat_index, batch_index = covered_pixels(face_idx)
        return cls(
            barycentrics=barycentrics.reshape(-1, 3)[flat_index],
            flat_index=flat_index,
            batch_index=batch_index,
            face=face_idx.reshape(-1).index_select(0, flat_index),
            soft_mask=soft_mask,
            face_idx=face_idx,
        )


@dataclass(frozen=True)
class SurfaceFrames:
    """Per-mesh shading frames.

    Attributes:
        normals: (B, V, 3) unit vertex normals.
        tangents: (B, W, 3) unit wedge tangents (see ``texture.vertex_tangents``).
    """

    normals: Tensor
    tangents: Tensor


@dataclass(frozen=True)
class Pixels:
    """Covered pixels, packed, with their interpolated surface attributes.

    Attributes:
        flat_index: (N,) long index into the flattened (B * H * W) image.
        batch_index: (N,) long batch item.
        position: (N, 3) camera coordinates; uv: (N, 2); normal, tangent, bitangent: (N, 3), not unit.
            uv, normal, tangent and bitangent are None from the Warp renderer (its per-pixel op,
            ``warp_kernels.pipeline``, interpolates them itself).
    """

    flat_index: Tensor
    batch_index: Tensor
    position: Tensor
    uv: Tensor | None = None
    normal: Tensor | None = None
    tangent: Tensor | None = None
    bitangent: Tensor | None = None


def surface_frames(
    vertices: Tensor,
    faces: Tensor,
    uvs: Tensor,
    face_uvs: Tensor,
    face_wedges: Tensor,
    wedge_vertex: Tensor,
    backend: str = "torch",
    pixels: tuple[Tensor, Tensor] | None = None,
) -> SurfaceFrames:
    """Vertex normals and wedge tangents of posed meshes (vertices (B, V, 3), topology as ``texture``).

    "warp" runs the Warp kernels of ``warp_kernels.shading``; any other backend the torch twins.
    ``pixels`` (batch_index, face) of the pixels that will use the frames: the Warp path then computes
    only the frames at those faces' corners (zeros elsewhere); the twins compute all of them.
    """
    if backend == "warp":
        normals, tangents = warp_surface_frames(
            vertices, faces, uvs, face_uvs, face_wedges, wedge_vertex, pixels=pixels
        )
        return SurfaceFrames(normals=normals, tangents=tangents)
    normals = vertex_normals(vertices, faces)
    tangents = vertex_tangents(vertices, normals, faces, uvs, face_uvs, face_wedges, wedge_vertex)
    return SurfaceFrames(normals=normals, tangents=tangents)


def rasterize_mesh(
    camera: Camera,
    vertices: Tensor,
    faces: Tensor,
    backend: str = "warp",
    out: tuple[Tensor, Tensor] | None = None,
    **options,
) -> Fragments:
    """DIB-R main pass returning barycentrics (identity corner features).

    Args:
        camera: the pinhole camera.
        vertices: (B, V, 3) camera coordinates (z > 0).
        faces: (F, 3) integer vertex indices.
        backend: "warp", "torch" or "kaolin".
        out: (soft mask, face index) buffers the Warp backend writes into (``rasterize_packed``).
        **options: DIB-R options (sigmainv, boxlen, knum, multiplier, eps).

    Returns:
        Fragments.
    """
    if backend == "warp":  # per vertex: the rasterizer reads each face's corners through the faces
        faces = faces.to(device=vertices.device, dtype=torch.int32).contiguous()
        vertices_z, vertices_image, face_normals_z = vertex_inputs(vertices, faces, camera, "warp")
        args = (camera.height, camera.width, vertices_z, vertices_image, faces, face_normals_z)
        raster = rasterize_indexed(*args, out=out, **options)
    else:
        corners = _identity_corners(vertices.shape[0], faces.shape[0], vertices.dtype, vertices.device)
        inputs = project_mesh(camera, vertices, faces, corners, "torch")
        raster = rasterize_packed(camera.height, camera.width, *inputs, backend=backend, out=out, **options)
    flat_index = raster.flat_index
    return Fragments(
        barycentrics=raster.features,
        flat_index=flat_index,
        batch_index=flat_index // (camera.height * camera.width),
        face=raster.face_idx.reshape(-1).index_select(0, flat_index),  # ~5x faster than [flat_index] on CPU
        soft_mask=raster.soft_mask,
        face_idx=raster.face_idx,
    )


@functools.lru_cache(maxsize=4)
def _identity_corners(batch: int, faces: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(B, F, 3, 3) identity corner features (interpolated, they give the barycentrics), contiguous and
    kept between calls (the rasterizer would otherwise copy an expanded identity every call; read-only)."""
    return torch.eye(3, dtype=dtype, device=device).expand(batch, faces, 3, 3).contiguous()


def covered_pixels(face_idx: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices (N,) into the (B * H * W) image and batch items (N,) of the pixels with a face."""
    flat_index = (face_idx.reshape(-1) >= 0).nonzero()[:, 0]
    return flat_index, flat_index // (face_idx.shape[1] * face_idx.shape[2])


def interpolate_pixels(
    fragments: Fragments,
    vertices: Tensor,
    frames: SurfaceFrames,
    faces: Tensor,
    uvs: Tensor,
    face_uvs: Tensor,
    face_wedges: Tensor,
    signs: Tensor,
) -> Pixels:
    """Interpolate surface attributes at the covered pixels with the rasterizer's barycentrics.

    Args:
        fragments: main-pass rasterization.
        vertices: (B, V, 3) camera coordinates; frames: their normals and tangents.
        faces, face_uvs, face_wedges: (F, 3) long; uvs: (U, 2); signs: (W,) wedge handedness.

    Returns:
        Pixels.
    """
    flat_index, batch_index, face = fragments.flat_index, fragments.batch_index, fragments.face
    w = fragments.barycentrics[..., None]  # (N, 3, 1)

    def lerp(values: Tensor, corner_index: Tensor) -> Tensor:
        """Interpolate (B, K, C) per-element values; corner_index (F, 3) picks a face's elements."""
        rows = (batch_index[:, None] * values.shape[1] + corner_index[face]).reshape(-1)
        corners = values.reshape(-1, values.shape[-1]).index_select(0, rows).reshape(-1, 3, values.shape[-1])
        return (corners * w).sum(1)

    position, normal = lerp(torch.cat([vertices, frames.normals], dim=-1), faces).split(3, dim=-1)
    tangent = lerp(frames.tangents, face_wedges)
    uv = (uvs.to(w.dtype)[face_uvs[face]] * w).sum(1)
    sign = signs[face_wedges[face[:, None], 0]].to(w.dtype)  # the 3 wedges of a face share their chart
    return Pixels(
        flat_index=flat_index,
        batch_index=batch_index,
        position=position,
        uv=uv,
        normal=normal,
        tangent=tangent,
        bitangent=bitangents(normal, tangent, sign[:, 0]),
    )


def shade_pixels(
    pixels: Pixels,
    albedo: Tensor,
    normal_map: Tensor,
    light: Tensor,
    ambient: Tensor,
    visibility: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Texture, normal-map and shade the packed pixels.

    Args:
        pixels: packed covered pixels.
        albedo: (B or 1, 3, Ht, Wt) albedo map (row 0 = v 1).
        normal_map: (B or 1, 3, Ht, Wt) decoded tangent-space normals (unit vectors; (0, 0, 1) = flat).
        light: (B, 3) light positions; ambient: (B, 1) ambient logits.
        visibility: (N,) shadow visibility or None.

    Returns:
        colour (N, 3) and unit shading normals (N, 3).
    """
    colour = sample_texture_packed(albedo, pixels.uv, pixels.batch_index)
    tangent_normals = sample_texture_packed(normal_map, pixels.uv, pixels.batch_index)
    normals = perturb_normals(pixels.normal, pixels.tangent, pixels.bitangent, tangent_normals)
    b = pixels.batch_index
    return lambert(colour, normals, pixels.position, light[b], ambient[b], visibility), normals


def unpack(values: Tensor, pixels: Pixels, shape: tuple[int, int, int], fill: float = 0.0) -> Tensor:
    """Scatter packed values (N, ...) into a (B, H, W, ...) image filled with ``fill`` elsewhere."""
    b, h, w = shape
    out = values.new_full((b * h * w, *values.shape[1:]), fill)
    return out.index_put((pixels.flat_index,), values).reshape(b, h, w, *values.shape[1:])


def composite_pixels(
    colour: Tensor, pixels: Pixels, soft_mask: Tensor, background: float | Tensor = 1.0
) -> Tensor:
    """``shading.composite`` with the colour given on the covered pixels only (zero elsewhere).

    Args:
        colour: (N, 3) shaded colour of the packed pixels.
        pixels: the packed pixels.
        soft_mask: (B, H, W) soft silhouette.
        background: scalar or (3,) colour.

    Returns:
        (B, H, W, 3) ``mask * colour + (1 - mask) * background``.
    """
    b, h, w = soft_mask.shape
    rest = (1 - soft_mask.reshape(-1, 1)) * background  # uncovered pixels: colour is 0
    rest = rest.expand(b * h * w, colour.shape[-1])
    m = soft_mask.reshape(-1)[pixels.flat_index][:, None]
    covered = m * colour + (1 - m) * background
    return rest.index_put((pixels.flat_index,), covered).reshape(b, h, w, -1)


SLICED = True  # CPU Warp renders of several items: slices of the batch at the same time (see _render_slices)
# the Warp modules whose kernels a render launches: built before the slices' threads start
_WARP_MODULES = tuple(m.__name__ for m in (_wk_raster, _wk_project, _wk_shading, _wk_shadow, _wk_interpolate))


def _render_slices(
    renderer: Renderer, slices: list[slice], vertices, albedo, normal_map, light, ambient
) -> RenderOutput:
    """The Warp render of a batch as slices of items, each rendered start to end on its own CPU thread
    (``parallel.run``; every launch of a slice is one part, ``parallel.one_part``), then joined.

    Splitting each launch over the threads instead (one render) hands work to the threads and waits for
    all of them six or seven times per direction, and the Python and torch work between the launches
    runs while the other threads wait. Slices meet once per direction, and one slice's Python runs while
    another's kernels do: the benchmark step (8 items, 448 x 448, two cores) takes 0.92-0.95 of the one
    render's time (paired in-process runs). With gradients, ``_SlicedRender`` runs the slices' backward
    passes at the same time too.
    """
    inputs = (vertices, albedo, normal_map, light, ambient)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        outputs = _SlicedRender.apply(renderer, slices, *inputs)
    else:  # grad mode is per thread: the pool threads must not build graphs either
        outputs = _join(slices, *_run_slices(renderer, slices, inputs, grad=False))
    image, silhouette, position, normals, visibility, face_idx, flat_index, batch_index = outputs
    return RenderOutput(
        image=image,
        silhouette=silhouette,
        face_idx=face_idx,
        pixels=Pixels(flat_index=flat_index, batch_index=batch_index, position=position),
        pixel_normals=normals,
        pixel_visibility=visibility,
    )


def _slice_input(t: Tensor, sl: slice, batch: int) -> Tensor:
    """A batch slice of a per-item input ((B, ...)); a shared one ((1, ...) textures) whole."""
    return t[sl] if t.shape[0] == batch else t


def _run_slices(renderer: Renderer, slices: list[slice], inputs: tuple, grad: bool) -> tuple[list, tuple]:
    """Per slice, on its own thread: (its inputs, as leaves of its own graph when ``grad``, its
    RenderOutput); and the batch's image, silhouette and face index, which the slices render into (their
    own outputs share that memory, ``_alias``)."""
    vertices = inputs[0]
    batch, h, w = vertices.shape[0], renderer.camera.height, renderer.camera.width
    image = vertices.new_empty(batch, h, w, 3)
    silhouette = vertices.new_empty(batch, h, w)
    face_idx = torch.empty((batch, h, w), dtype=torch.long, device=vertices.device)

    def job(sl: slice):
        with torch.set_grad_enabled(grad), parallel.one_part():
            leaves = [
                _slice_input(t, sl, batch).detach().requires_grad_(grad and t.requires_grad) for t in inputs
            ]
            out = [_alias(t[sl]) for t in (image, silhouette, face_idx)]
            return leaves, renderer._render_warp(*leaves, out=out)

    return parallel.run(vertices.device, _WARP_MODULES, slices, job), (image, silhouette, face_idx)


def _alias(t: Tensor) -> Tensor:
    """A tensor on ``t``'s memory that autograd does not see as a view of it: a slice's outputs are written
    into the batch's, but their graphs stay apart (an in-place op on the batch's image, which autograd
    allows, must not re-base a slice's image onto the batch's graph)."""
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


def _join(slices: list[slice], parts: list, dense: tuple) -> tuple:
    """The slices' outputs as one batch's: image, silhouette, positions, shading normals, visibility
    (None without shadows), face index, flat index, batch index (the packed rows in slice order, which
    is the flat-index order)."""
    outs = [out for _, out in parts]
    pixels = outs[0].face_idx.shape[1] * outs[0].face_idx.shape[2]
    position = torch.cat([o.pixels.position.detach() for o in outs])
    normals = torch.cat([o.pixel_normals.detach() for o in outs])
    visibility = None
    if outs[0].pixel_visibility is not None:
        visibility = torch.cat([o.pixel_visibility.detach() for o in outs])
    flat = torch.cat([o.pixels.flat_index + sl.start * pixels for sl, o in zip(slices, outs)])
    items = torch.cat([o.pixels.batch_index + sl.start for sl, o in zip(slices, outs)])
    return dense[0], dense[1], position, normals, visibility, dense[2], flat, items


class _SlicedRender(torch.autograd.Function):
    """Autograd bridge of ``_render_slices``: each slice keeps its own graph (from its own leaves), and the
    backward runs the slices' graphs at the same time, each on its own thread (``torch.autograd.grad``
    there); per-item gradients are joined, those of shared textures summed."""

    @staticmethod
    @parallel.serial
    def forward(ctx, renderer, slices, vertices, albedo, normal_map, light, ambient):
        inputs = (vertices, albedo, normal_map, light, ambient)
        parts, dense = _run_slices(renderer, slices, inputs, grad=True)
        outputs = _join(slices, parts, dense)
        ctx.parts, ctx.slices = parts, slices
        ends = torch.tensor([out.pixel_normals.shape[0] for _, out in parts]).cumsum(0).tolist()
        ctx.rows = [slice(end - out.pixel_normals.shape[0], end) for end, (_, out) in zip(ends, parts)]
        ctx.shapes = [(t.shape, t.dtype) for t in inputs]
        ctx.device = vertices.device
        ctx.mark_non_differentiable(*outputs[5:])
        ctx.set_materialize_grads(False)
        return outputs

    @staticmethod
    @parallel.serial
    def backward(ctx, g_image, g_silhouette, g_position, g_normals, g_visibility, *_unused):
        if ctx.parts is None:
            raise RuntimeError(
                "the sliced Warp render's graph was freed by an earlier backward (retain_graph is not "
                "supported on the CPU sliced path; set harp_kaolin.render.renderer.SLICED = False)"
            )
        batch = ctx.shapes[0][0][0]

        def job(k: int):
            sl, rows = ctx.slices[k], ctx.rows[k]
            leaves, out = ctx.parts[k]
            pairs = [
                (out.image, g_image, sl),
                (out.silhouette, g_silhouette, sl),
                (out.pixels.position, g_position, rows),
                (out.pixel_normals, g_normals, rows),
                (out.pixel_visibility, g_visibility, rows),
            ]
            pairs = [(o, g[at]) for o, g, at in pairs if g is not None and o is not None and o.requires_grad]
            wanted = [t for t in leaves if t.requires_grad]
            if not pairs or not wanted:
                return [None] * len(leaves)
            with parallel.one_part():
                found = iter(
                    torch.autograd.grad(
                        [o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True
                    )
                )
            return [next(found) if t.requires_grad else None for t in leaves]

        per_slice = parallel.run(ctx.device, _WARP_MODULES, list(range(len(ctx.slices))), job)
        grads = []
        for i, (shape, dtype) in enumerate(ctx.shapes):
            parts = [g[i] for g in per_slice]
            if not ctx.needs_input_grad[2 + i]:
                grads.append(None)
            elif shape[0] == batch:  # per item: the slices' gradients in order
                zeros = [(sl.stop - sl.start, *shape[1:]) for sl in ctx.slices]
                parts = [
                    torch.zeros(z, dtype=dtype, device=ctx.device) if g is None else g
                    for g, z in zip(parts, zeros)
                ]
                grads.append(torch.cat(parts))
            else:  # shared by the items (a (1, ...) texture): the slices' gradients summed
                present = [g for g in parts if g is not None]
                total = present[0] if present else None
                for g in present[1:]:
                    total.add_(g)
                grads.append(total)
        ctx.parts = None
        return (None, None, *grads)


class Renderer(torch.nn.Module):
    """HARP's differentiable renderer (PyTorch3D style: forward strings plain functions together).

    Args:
        camera: ``Camera`` or a dict with width, height, fx, fy, cx, cy (OpenCV pinhole, pixels).
        faces: (F, 3) long vertex indices; face_uvs: (F, 3) long uv indices; uvs: (U, 2) in [0, 1], v up.
        backend: rasterizer "warp", "torch" (pure-torch twins, also for the shadow lookup) or "kaolin".
        shadows: shadow-map visibility on; False sets V = 1 (the paper's no-shadow ablation).
        shadow_bias: b in ``sigmoid(s (z_map - d + b))``, meters.
        shadow_sharpness: s, per meter.
        shadow_size: shadow-map texels per side.
        background: background colour (scalar or 3 values) under the soft mask.
        **raster_options: DIB-R options (sigmainv, boxlen, knum, multiplier, eps) for the main pass.
    """

    def __init__(
        self,
        camera: Camera | dict,
        faces: Tensor,
        face_uvs: Tensor,
        uvs: Tensor,
        backend: str = "warp",
        shadows: bool = True,
        shadow_bias: float = SHADOW_BIAS,
        shadow_sharpness: float = SHADOW_SHARPNESS,
        shadow_size: int = SHADOW_SIZE,
        background: float | tuple[float, float, float] = 1.0,
        **raster_options,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if faces.dim() != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
        if face_uvs.shape != faces.shape:
            raise ValueError(
                f"face_uvs must have shape {tuple(faces.shape)} like faces, got {tuple(face_uvs.shape)}"
            )
        if uvs.dim() != 2 or uvs.shape[1] != 2:
            raise ValueError(f"uvs must have shape (U, 2), got {tuple(uvs.shape)}")
        self.camera = camera if isinstance(camera, Camera) else Camera.from_dict(camera)
        self.backend, self.shadows = backend, bool(shadows)
        self.shadow_bias, self.shadow_sharpness, self.shadow_size = shadow_bias, shadow_sharpness, shadow_size
        self.background = background
        self.raster_options = raster_options
        faces, face_uvs, uvs = faces.long(), face_uvs.long(), uvs.float()
        wedge_vertex, _, face_wedges = wedges(faces, face_uvs)
        self.register_buffer("faces", faces, persistent=False)
        self.register_buffer("face_uvs", face_uvs, persistent=False)
        self.register_buffer("uvs", uvs, persistent=False)
        self.register_buffer("face_wedges", face_wedges, persistent=False)
        self.register_buffer("wedge_vertex", wedge_vertex, persistent=False)
        self.register_buffer(
            "signs", wedge_signs(uvs, face_uvs, face_wedges, wedge_vertex.shape[0]), persistent=False
        )
        # int32 copies for the Warp kernels (converted once here instead of in every call)
        for name in ("faces", "face_uvs", "face_wedges", "wedge_vertex"):
            self.register_buffer(f"{name}_i32", getattr(self, name).int().contiguous(), persistent=False)
        self.num_vertices = int(faces.max()) + 1

    def forward(
        self, vertices: Tensor, albedo: Tensor, normal_map: Tensor, light: Tensor, ambient: Tensor
    ) -> RenderOutput:
        """Render a batch.

        Args:
            vertices: (B, V, 3) camera coordinates, meters.
            albedo: (B or 1, 3, Ht, Wt) albedo map in [0, 1], row 0 = v 1.
            normal_map: (B or 1, 3, Ht, Wt) DECODED tangent-space normals (unit vectors, (0, 0, 1) = flat;
                a stored (n + 1) / 2 image goes through ``texture.decode_normals`` first).
            light: (3,) or (B, 3) point-light position, camera coordinates, meters.
            ambient: scalar, (1,), (B,) or (B, 1) ambient logit a (k_a = sigmoid(a)).

        Returns:
            RenderOutput.
        """
        light, ambient = self._check(vertices, albedo, normal_map, light, ambient)
        if self.backend == "warp":
            # torch's ops between the Warp launches on one thread (see parallel.torch_serial)
            with parallel.torch_serial(vertices.device):
                slices = self._slices(vertices)
                if slices is not None:
                    return _render_slices(self, slices, vertices, albedo, normal_map, light, ambient)
                return self._render(vertices, albedo, normal_map, light, ambient)
        return self._render(vertices, albedo, normal_map, light, ambient)

    def _slices(self, vertices: Tensor) -> list[slice] | None:
        """The batch slices that the Warp path renders at the same time, each on its own CPU thread
        (``_render_slices``), or None: one render whose launches are split over the threads instead
        (CUDA, one thread, one item, or ``SLICED = False``)."""
        if not SLICED or vertices.device.type != "cpu" or parallel.num_threads() < 2 or vertices.shape[0] < 2:
            return None
        return parallel.split(vertices.device, vertices.shape[0], min_items=1)

    def _render(
        self, vertices: Tensor, albedo: Tensor, normal_map: Tensor, light: Tensor, ambient: Tensor
    ) -> RenderOutput:
        if self.backend == "warp":
            return self._render_warp(vertices, albedo, normal_map, light, ambient)
        faces, face_uvs, face_wedges = self.faces, self.face_uvs, self.face_wedges
        frags = rasterize_mesh(self.camera, vertices, faces, self.backend, **self.raster_options)
        frames = surface_frames(
            vertices, faces, self.uvs, face_uvs, face_wedges, self.wedge_vertex, self.backend
        )
        pixels = interpolate_pixels(
            frags, vertices, frames, faces, self.uvs, face_uvs, face_wedges, self.signs
        )
        vis = None
        if self.shadows:
            vis = shadow_visibility(
                vertices, faces, pixels.position, pixels.batch_index, light, self.shadow_size,
                self.shadow_sharpness, self.shadow_bias, backend=self.backend,
            )  # fmt: skip
        colour, normals = shade_pixels(pixels, albedo, normal_map, light, ambient, vis)
        image = composite_pixels(colour, pixels, frags.soft_mask, self._background(colour))
        return RenderOutput(
            image=image,
            silhouette=frags.soft_mask,
            face_idx=frags.face_idx,
            pixels=pixels,
            pixel_normals=normals,
            pixel_visibility=vis,
        )

    def _render_warp(
        self,
        vertices: Tensor,
        albedo: Tensor,
        normal_map: Tensor,
        light: Tensor,
        ambient: Tensor,
        out: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> RenderOutput:
        """The Warp path: rasterization, surface frames and shadow map, then every per-pixel step in one op
        (``warp_kernels.pipeline``). Each consumer of the vertices gets its own alias (``parallel.fan_out``),
        so their gradients are summed on one thread instead of by the autograd engine on all of them.
        ``out``: (image, silhouette, face index) buffers to render into (``_render_slices``)."""
        faces = self.faces_i32
        v_raster, v_frames, v_pixels, v_shadow = parallel.fan_out(vertices, 4)
        raster_out = None if out is None else out[1:]
        frags = rasterize_mesh(self.camera, v_raster, faces, "warp", raster_out, **self.raster_options)
        # int32, the kernels' type, converted once for the frames and the per-pixel op
        items, visible = frags.batch_index.to(torch.int32), frags.face.to(torch.int32)
        frames = surface_frames(
            v_frames, faces, self.uvs, self.face_uvs_i32, self.face_wedges_i32, self.wedge_vertex_i32, "warp",
            pixels=(items, visible),
        )  # fmt: skip
        shadow = None
        if self.shadows:
            view = light_view(v_shadow, light, self.shadow_size, backend="warp")
            depth = shadow_map(v_shadow, faces, view, "warp")
            shadow = (depth, view.rotation, view.eye, view.focal, view.size)
            shadow += (self.shadow_sharpness, self.shadow_bias)
        image, normals, position, vis = render_pixels(
            frags.barycentrics, items, visible, frags.flat_index, v_pixels, frames.normals,
            frames.tangents, faces, self.uvs, self.face_uvs_i32, self.face_wedges_i32, self.signs, albedo,
            normal_map, light, ambient, frags.soft_mask, self._background(vertices), shadow,
            None if out is None else out[0],
        )  # fmt: skip
        return RenderOutput(
            image=image,
            silhouette=frags.soft_mask,
            face_idx=frags.face_idx,
            pixels=Pixels(flat_index=frags.flat_index, batch_index=frags.batch_index, position=position),
            pixel_normals=normals,
            pixel_visibility=vis,
        )

    def _background(self, like: Tensor) -> float | Tensor:
        if isinstance(self.background, (int, float)):
            return float(self.background)
        return torch.as_tensor(self.background, dtype=like.dtype, device=like.device)

    def _check(self, vertices, albedo, normal_map, light, ambient) -> tuple[Tensor, Tensor]:
        """Validate the inputs once; returns light (B, 3) and ambient (B, 1) on the vertices' device."""
        if vertices.dim() != 3 or vertices.shape[-1] != 3 or vertices.shape[1] < self.num_vertices:
            got = tuple(vertices.shape)
            raise ValueError(
                f"vertices must have shape (B, V >= {self.num_vertices}, 3) for these faces, got {got}"
            )
        if not vertices.is_floating_point():
            raise ValueError(f"vertices must be a floating-point tensor, got {vertices.dtype}")
        b, dtype, device = vertices.shape[0], vertices.dtype, vertices.device
        for name, t in (("albedo", albedo), ("normal_map", normal_map)):
            if t.dim() != 4 or t.shape[0] not in (1, b) or t.shape[1] != 3:
                raise ValueError(f"{name} must have shape (1 or {b}, 3, Ht, Wt), got {tuple(t.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
            if t.device != device:
                raise ValueError(f"{name} must be on {device} like vertices, got {t.device}")
        light = torch.as_tensor(light, dtype=dtype, device=device)
        if light.shape not in ((3,), (1, 3), (b, 3)):
            raise ValueError(f"light must have shape (3,) or ({b}, 3), got {tuple(light.shape)}")
        ambient = torch.as_tensor(ambient, dtype=dtype, device=device).reshape(-1, 1)
        if ambient.shape[0] not in (1, b):
            raise ValueError(f"ambient must have 1 or {b} values, got {ambient.shape[0]}")
        return light.reshape(-1, 3).expand(b, 3), ambient.expand(b, 1)
