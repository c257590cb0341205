"""The Warp renderer's per-pixel steps in one autograd op: interpolate -> light-view projection -> PCF
shadow lookup -> shading -> composite (Warp kernels, CPU and CUDA).

For the covered pixels of a main-pass rasterization (barycentrics ``bary``, batch item, face, flat index
into the image), in order:

    position = interpolate(vertices)                      (warp_kernels.interpolate)
    coords, depth = project(position)                     (warp_kernels.shadow, the light view)
    visibility = pcf(depth_map, coords, depth)            (warp_kernels.shadow)
    colour, shading normal = shade(..., visibility)       (warp_kernels.shading)
    image = composite(colour, soft mask, background)      (warp_kernels.shading)

with the very kernels (and hand-written adjoints) of those ops, so the results are theirs, bit for bit.
What the op saves is everything around the kernels: each of those ops was its own autograd node with its
own hand-off to the CPU threads, its own private accumulators and their sums, and the gradients of
positions and barycentrics that two ops share went through ``parallel.fan_out``. Here the covered pixels
are split once: each CPU thread runs all the steps on its range of pixels (the forward in order, the
backward in reverse), one hand-off per direction, and the accumulators of all the shared gradients are
summed in one ``parallel.totals``. The composite's pass over the whole image is cut at the first pixel of
each range, so that no two threads write the same pixel.

The device comes from the input tensors; Warp is initialized at the first launch, never at import.
Dimension names: B batch, V vertices, W wedges, S shadow-map size, P = B * H * W image pixels,
N covered pixels.
"""

from __future__ import annotations

import torch
import warp as wp
from torch import Tensor

from warp_kernels import interpolate, parallel, shading, shadow

_MODULES = (interpolate.__name__, shadow.__name__, shading.__name__)  # whose kernels the parts launch


def _layout(device: torch.device, n: int, flat: Tensor, pixels: int) -> list[tuple[slice, slice]]:
    """(covered pixels, image pixels) per part: the covered pixels in near-equal ranges
    (``parallel.split``), the image cut at the first covered pixel of each range after the first, so a
    part's covered pixels lie in its image range (``flat`` increasing)."""
    least = parallel.MIN_ITEMS_PER_PART
    if n == 0:
        return [(slice(0, 0), sl) for sl in parallel.split(device, pixels, min_items=least)]
    parts = parallel.split(device, n, min_items=least)
    cuts = flat[[sl.start for sl in parts[1:]]].tolist() if len(parts) > 1 else []
    bounds = [0, *cuts, pixels]
    return [(sl, slice(bounds[k], bounds[k + 1])) for k, sl in enumerate(parts)]


def _launch(kernel, n: int, args: list) -> tuple:
    """A launch step over n items (``parallel.run_launches``; chunked kernels get their chunk there)."""
    return kernel, n, args


class PixelPipeline(torch.autograd.Function):
    """Autograd bridge of the per-pixel kernels (see the module docstring)."""

    @staticmethod
    @parallel.serial
    def forward(
        ctx, bary, vertices, normals, tangents, albedo, normal_map, light, ambient, mask, depth_map, rotation,
        eye, topo, options,
    ):  # fmt: skip
        wp.init()  # no-op after the first call; Warp is never initialized at import
        batch_index, face, flat, faces, uvs, signs, face_uvs, face_wedges, focal, background = topo
        size, sharpness, bias, image_out = options
        floats = [bary, vertices, normals, tangents, albedo, normal_map, light, ambient, mask]
        bary, vertices, normals, tangents, albedo, normal_map, light, ambient, mask = (
            t.detach().contiguous() for t in floats
        )
        shadows = depth_map is not None
        if shadows:
            depth_map, rotation, eye = (t.detach().contiguous() for t in (depth_map, rotation, eye))
        n, device = bary.shape[0], bary.device
        pcf_forward = shadow.pcf_forward_kernel(bary.dtype, device)
        position, colour, normal_out = (bary.new_empty(n, 3) for _ in range(3))
        image = mask.new_empty(mask.shape[0], 3) if image_out is None else image_out.view(-1, 3)
        coords = bary.new_empty(n if shadows else 0, 2)
        depth = bary.new_empty(n if shadows else 0)
        visibility = bary.new_empty(n if shadows else 0)
        taps = bary.new_empty(n if shadows else 0, 9)
        saved = bary.new_empty(n if any(ctx.needs_input_grad) else 0, shading.SAVED)  # for _shade_backward
        layout = _layout(device, n, flat, mask.shape[0])
        fixed = [normals, tangents, uvs, signs, faces, face_uvs, face_wedges, albedo, normal_map, light]
        fixed.append(ambient)
        steps = []
        for sl, im in layout:
            k = sl.stop - sl.start
            part = []
            if k:
                pix = [bary[sl], batch_index[sl], face[sl]]
                part.append(_launch(interpolate._interpolate, k, [*pix, faces, vertices, position[sl]]))
                if shadows:
                    view = [position[sl], batch_index[sl], rotation, eye, focal, size / 2]
                    part.append(_launch(shadow._project_forward, k, [*view, coords[sl], depth[sl]]))
                    lookup = [depth_map, coords[sl], depth[sl], batch_index[sl], sharpness, bias]
                    part.append(_launch(pcf_forward, k, [*lookup, visibility[sl], taps[sl]]))
                vis = visibility[sl] if shadows else visibility
                kept = saved[sl] if saved.shape[0] else saved
                shade = [*pix, position[sl], *fixed, vis, colour[sl], normal_out[sl], kept]
                part.append(shading._step(shading._shade, k, shade))
            if im.stop > im.start:
                args = [mask[im], background, image[im]]
                part.append(shading._step(shading._composite_background, im.stop - im.start, args))
            if k:
                args = [mask, flat[sl], colour[sl], background, image]
                part.append(shading._step(shading._composite_covered, k, args))
            steps.append(part)
        parallel.run_launches(device, _MODULES, steps)
        keep = [bary, vertices, normals, tangents, albedo, normal_map, light, ambient, mask]
        keep += [position, colour, visibility, coords, depth, taps, saved]
        if shadows:
            keep += [depth_map, rotation, eye]
        ctx.save_for_backward(*keep)
        ctx.topo, ctx.options, ctx.layout, ctx.shadows = topo, options, layout, shadows
        ctx.set_materialize_grads(False)  # gradients of unused outputs come as None: no zeros made
        return image, normal_out, position, visibility if shadows else None

    @staticmethod
    @parallel.serial
    def backward(ctx, adj_image, adj_normal_out, adj_position_out, adj_visibility_out):
        saved = ctx.saved_tensors
        bary, vertices, normals, tangents, albedo, normal_map, light, ambient, mask = saved[:9]
        position, colour, visibility, coords, depth, taps, kept = saved[9:16]
        depth_map, rotation, eye = saved[16:] if ctx.shadows else (None, None, None)
        batch_index, face, flat, faces, uvs, signs, face_uvs, face_wedges, focal, background = ctx.topo
        _, sharpness, bias, _ = ctx.options
        device, shadows = bary.device, ctx.shadows
        shading._check_kept(kept, bary.shape[0])
        adj_image = mask.new_zeros(mask.shape[0], 3) if adj_image is None else adj_image.contiguous()
        adj_normal_out = torch.zeros_like(position) if adj_normal_out is None else adj_normal_out.contiguous()
        extra_position = None if adj_position_out is None else adj_position_out.contiguous()
        extra_visibility = None
        if adj_visibility_out is not None and shadows:
            extra_visibility = adj_visibility_out.contiguous()
        # written per pixel
        adj_mask, adj_colour = torch.empty_like(mask), torch.empty_like(colour)
        adj_bary, adj_bary_lerp, adj_position = (torch.empty_like(bary) for _ in range(3))
        adj_visibility = torch.empty_like(visibility)
        adj_coords, adj_depth = torch.empty_like(coords), torch.empty_like(depth)
        adj_points = coords.new_empty(coords.shape[0], 3)
        # accumulated, one private copy per part
        parts = len(ctx.layout)
        shared = (normals, tangents, albedo, normal_map, light, ambient)
        shade_sums = [parallel.Accumulator(t, parts) for t in shared]
        shadow_sums = [parallel.Accumulator(t, parts) for t in (depth_map, rotation, eye)] if shadows else []
        vertex_sum = parallel.Accumulator(vertices, parts)
        fixed = [normals, tangents, uvs, signs, faces, face_uvs, face_wedges, albedo, normal_map, light]
        fixed.append(ambient)
        steps = []
        for j, (sl, im) in enumerate(ctx.layout):
            k = sl.stop - sl.start
            part = []
            if im.stop > im.start:
                part.append(_background_gradient(adj_image[im], background, adj_mask[im]))
            if k:
                sums = [acc.part(j, zero=False) for acc in (*shade_sums, *shadow_sums, vertex_sum)]
                part += [acc.zero_ for acc in sums]
                shade_acc, shadow_acc, vertex_acc = sums[:6], sums[6:-1], sums[-1]
                args = [mask, flat[sl], colour[sl], background, adj_image, adj_mask, adj_colour[sl]]
                part.append(shading._step(shading._composite_covered_backward, k, args))
                pix = [bary[sl], batch_index[sl], face[sl]]
                vis = visibility[sl] if shadows else visibility
                adj_vis = adj_visibility[sl] if shadows else adj_visibility
                shade = [*pix, position[sl], *fixed, vis, kept[sl], adj_colour[sl], adj_normal_out[sl]]
                shade.append(adj_bary[sl])
                shade += [adj_position[sl], adj_vis, *shade_acc]
                part.append(shading._step(shading._shade_backward, k, shade))
                if shadows:
                    if extra_visibility is not None:  # the visibility output's own gradient
                        part.append(_adder(adj_visibility[sl], extra_visibility[sl]))
                    lookup = [depth_map, coords[sl], depth[sl], batch_index[sl], sharpness, bias]
                    args = [*lookup, adj_visibility[sl], taps[sl], shadow_acc[0]]
                    args += [adj_coords[sl], adj_depth[sl]]
                    part.append(_launch(shadow._pcf_backward, k, args))
                    view = [position[sl], batch_index[sl], rotation, eye, focal]
                    args = [*view, adj_coords[sl], adj_depth[sl], adj_points[sl], *shadow_acc[1:]]
                    part.append(_launch(shadow._project_backward, k, args))
                    part.append(_adder(adj_position[sl], adj_points[sl]))
                if extra_position is not None:
                    part.append(_adder(adj_position[sl], extra_position[sl]))
                args = [*pix, faces, vertices, adj_position[sl], adj_bary_lerp[sl], vertex_acc]
                part.append(_launch(interpolate._interpolate_backward, k, args))
                part.append(_adder(adj_bary[sl], adj_bary_lerp[sl]))
            steps.append(part)
        parallel.run_launches(device, _MODULES, steps)
        totals = parallel.totals([*shade_sums, *shadow_sums, vertex_sum])
        g_normals, g_tangents, g_albedo, g_normal_map, g_light, g_ambient = totals[:6]
        g_depth_map, g_rotation, g_eye = totals[6:9] if shadows else (None, None, None)
        grads = [adj_bary, totals[-1], g_normals, g_tangents, g_albedo, g_normal_map, g_light, g_ambient]
        grads += [adj_mask, g_depth_map, g_rotation, g_eye]
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None)


def _background_gradient(adj_image: Tensor, background: Tensor, adj_mask: Tensor):
    """A step of ``parallel.run_launches`` that writes the mask's gradient of every pixel as if uncovered,
    ``-(adj_image . background)`` (the covered pixels' are written after it): a matrix-vector product,
    which streams the (N, 3) gradient about twice as fast as a kernel pass over the pixels."""
    return lambda: torch.mv(adj_image, background, out=adj_mask).neg_()


def _adder(target: Tensor, value: Tensor):
    """A step of ``parallel.run_launches`` that adds ``value`` into ``target`` (in place)."""
    return lambda: target.add_(value)


def render_pixels(
    barycentrics: Tensor,
    batch_index: Tensor,
    face: Tensor,
    flat_index: Tensor,
    vertices: Tensor,
    normals: Tensor,
    tangents: Tensor,
    faces: Tensor,
    uvs: Tensor,
    face_uvs: Tensor,
    face_wedges: Tensor,
    signs: Tensor,
    albedo: Tensor,
    normal_map: Tensor,
    light: Tensor,
    ambient: Tensor,
    soft_mask: Tensor,
    background: float | Tensor = 1.0,
    shadow: tuple | None = None,
    image_out: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Interpolate, shadow, shade and composite the covered pixels (see the module docstring).

    Args:
        barycentrics: (N, 3) rasterizer barycentrics of the covered pixels, in increasing ``flat_index``.
        batch_index, face: (N,) integer batch item and visible face; flat_index: (N,) integer index into
            the flattened (B * H * W) image, increasing (the rasterizer's order).
        vertices: (B, V, 3) camera coordinates; normals: (B, V, 3) unit vertex normals; tangents: (B, W, 3).
        faces, face_uvs, face_wedges: (F, 3) integer; uvs: (U, 2); signs: (W,) wedge handedness.
        albedo, normal_map: (B or 1, 3, Ht, Wt), row 0 = v 1 (normal map decoded).
        light: (B, 3) light positions; ambient: (B, 1) ambient logits.
        soft_mask: (B, H, W) soft silhouette; background: scalar or (3,) colour (no gradient).
        shadow: None (V = 1) or (depth_map (B, S, S), rotation (B, 3, 3), eye (B, 3), focal (B,), S,
            sharpness, bias): the light view and its map (``harp_kaolin.render.shading``).
        image_out: None, or a contiguous (B, H, W, 3) tensor of the vertices' dtype and device that the
            image is written into and returned as (e.g. a view of a larger batch's image).

    Returns:
        image (B, H, W, 3), shading normals (N, 3), positions (N, 3) and visibility (N,) (None without
        shadows), differentiable w.r.t. every float input but the focal lengths and the background.
    """
    n, dtype, device = barycentrics.shape[0], vertices.dtype, vertices.device
    if barycentrics.shape != (n, 3):
        raise ValueError(f"barycentrics must have shape (N, 3), got {tuple(barycentrics.shape)}")
    for name, t in (("batch_index", batch_index), ("face", face), ("flat_index", flat_index)):
        if t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if soft_mask.dim() != 3:
        raise ValueError(f"soft_mask must have shape (B, H, W), got {tuple(soft_mask.shape)}")
    flat = flat_index.to(device=device, dtype=torch.int64).contiguous()
    if n > 1 and not bool((flat[1:] > flat[:-1]).all()):
        raise ValueError("flat_index must be increasing (the rasterizer's order of the covered pixels)")
    depth_map = rotation = eye = None
    focal, options = vertices.new_zeros(0), (0, 0.0, 0.0)
    if shadow is not None:
        depth_map, rotation, eye, focal, size, sharpness, bias = shadow
        rotation, eye = rotation.to(dtype), eye.to(dtype)
        focal = focal.detach().to(dtype).contiguous()
        options = (int(size), float(sharpness), float(bias))
    if image_out is not None:
        parallel.check_buffer("image_out", image_out, (*soft_mask.shape, 3), dtype, device)
    options = (*options, image_out)
    batch_index, face, faces, face_uvs, face_wedges = (
        t.to(torch.int32).contiguous() for t in (batch_index, face, faces, face_uvs, face_wedges)
    )
    uvs, signs = uvs.to(dtype).contiguous(), signs.to(dtype).contiguous()
    bg = torch.as_tensor(background, dtype=dtype, device=device).detach().expand(3).contiguous()
    topo = (batch_index, face, flat, faces, uvs, signs, face_uvs, face_wedges, focal, bg)
    floats = [barycentrics, vertices, normals, tangents, albedo, normal_map, light, ambient.reshape(-1)]
    floats = [t.to(dtype) for t in floats]
    mask = soft_mask.reshape(-1).to(dtype)
    image, normal_out, position, visibility = PixelPipeline.apply(
        *floats, mask, depth_map, rotation, eye, topo, options
    )
    return image.reshape(*soft_mask.shape, 3), normal_out, position, visibility
