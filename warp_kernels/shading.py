"""Fused per-pixel shading (Warp kernels, CPU and CUDA): interpolate -> texture -> normal map -> Lambert.

For each covered pixel (face f, barycentrics w from the rasterizer, batch item b):

    n, t = sum_k w_k N[b, faces[f, k]], sum_k w_k T[b, face_wedges[f, k]]      (interpolated frame)
    uv = sum_k w_k uvs[face_uvs[f, k]];  bt = sign[face_wedges[f, 0]] * cross(n, t)
    albedo, tn = bilinear(albedo_map, uv), bilinear(normal_map, uv)        (v up, border clamp)
    N_s = normalize(tn_0 t + tn_1 bt + tn_2 n)
    colour = albedo * (k_a + k_d * max(0, L . N_s) * V),  k_a = sigmoid(a), k_d = 1 - k_a

exactly as ``renderer.interpolate_pixels`` + ``renderer.shade_pixels`` (the pure-torch twin), in one
pass without (N, 3) intermediates. Gradients come from Warp's generated adjoint of the same kernel
(``wp.launch(adjoint=True)``) and reach the barycentrics, the pixel positions, the vertex normals, the
wedge tangents, both texture maps, the light, the ambient logit and the visibility.

Texture lookups follow ``texture.sample_texture``: texel (i, j) has its centre at
``u = (j + 0.5) / Wt``, ``v = 1 - (i + 0.5) / Ht``; bilinear between centres, border texels outside.

The device comes from the input tensors; Warp is initialized at the first launch, never at import.
Dimension names: B batch, V vertices, F faces, U uv vertices, W wedges, H W image, Ht Wt texture,
N covered pixels.
"""

from __future__ import annotations

from typing import Any

import torch
import warp as wp
from torch import Tensor

NORMALIZE_EPS = 1e-12  # as torch.nn.functional.normalize(eps=1e-12) in the twin


@wp.func
def _lerp3(values: wp.array3d(dtype=Any), b: int, i0: int, i1: int, i2: int, w0: Any, w1: Any, w2: Any):
    return wp.vector(
        w0 * values[b, i0, 0] + w1 * values[b, i1, 0] + w2 * values[b, i2, 0],
        w0 * values[b, i0, 1] + w1 * values[b, i1, 1] + w2 * values[b, i2, 1],
        w0 * values[b, i0, 2] + w1 * values[b, i1, 2] + w2 * values[b, i2, 2],
    )


@wp.func
def _bilinear(tex: wp.array4d(dtype=Any), b: int, u: Any, v: Any):
    """RGB of texture item b at (u, v), as grid_sample(bilinear, border, align_corners=False)."""
    height = tex.shape[2]
    width = tex.shape[3]
    one = type(u)(1.0)
    two = type(u)(2.0)
    # The twin's arithmetic (uv -> grid -> unnormalized texel coordinate), rounding for rounding.
    x = ((two * u - one + one) * type(u)(width) - one) / two
    y = ((one - two * v + one) * type(u)(height) - one) / two
    x0f = wp.floor(x)
    y0f = wp.floor(y)
    x0 = int(x0f)
    y0 = int(y0f)
    xa = wp.clamp(x0, 0, width - 1)
    xb = wp.clamp(x0 + 1, 0, width - 1)
    ya = wp.clamp(y0, 0, height - 1)
    yb = wp.clamp(y0 + 1, 0, height - 1)
    wx = x - x0f
    wy = y - y0f
    c0 = (one - wy) * ((one - wx) * tex[b, 0, ya, xa] + wx * tex[b, 0, ya, xb]) + wy * (
        (one - wx) * tex[b, 0, yb, xa] + wx * tex[b, 0, yb, xb]
    )
    c1 = (one - wy) * ((one - wx) * tex[b, 1, ya, xa] + wx * tex[b, 1, ya, xb]) + wy * (
        (one - wx) * tex[b, 1, yb, xa] + wx * tex[b, 1, yb, xb]
    )
    c2 = (one - wy) * ((one - wx) * tex[b, 2, ya, xa] + wx * tex[b, 2, ya, xb]) + wy * (
        (one - wx) * tex[b, 2, yb, xa] + wx * tex[b, 2, yb, xb]
    )
    return wp.vector(c0, c1, c2)


@wp.func
def _normalize(x: Any):
    length = wp.length(x)
    return x / wp.max(length, type(length)(NORMALIZE_EPS))


@wp.kernel
def _shade(
    bary: wp.array2d(dtype=Any),
    flat_index: wp.array(dtype=wp.int32),
    batch_index: wp.array(dtype=wp.int32),
    face: wp.array(dtype=wp.int32),
    position: wp.array2d(dtype=Any),
    normals: wp.array3d(dtype=Any),
    tangents: wp.array3d(dtype=Any),
    uvs: wp.array2d(dtype=Any),
    signs: wp.array(dtype=Any),
    faces: wp.array2d(dtype=wp.int32),
    face_uvs: wp.array2d(dtype=wp.int32),
    face_wedges: wp.array2d(dtype=wp.int32),
    albedo: wp.array4d(dtype=Any),
    normal_map: wp.array4d(dtype=Any),
    light: wp.array2d(dtype=Any),
    ambient: wp.array(dtype=Any),
    visibility: wp.array(dtype=Any),
    colour: wp.array2d(dtype=Any),
    shading_normal: wp.array2d(dtype=Any),
):
    tid = wp.tid()
    p = flat_index[tid]
    b = batch_index[tid]
    f = face[tid]
    w0 = bary[p, 0]
    w1 = bary[p, 1]
    w2 = bary[p, 2]
    one = type(w0)(1.0)
    zero = type(w0)(0.0)
    n = _lerp3(normals, b, faces[f, 0], faces[f, 1], faces[f, 2], w0, w1, w2)
    wa = face_wedges[f, 0]
    t = _lerp3(tangents, b, wa, face_wedges[f, 1], face_wedges[f, 2], w0, w1, w2)
    ua = face_uvs[f, 0]
    ub = face_uvs[f, 1]
    uc = face_uvs[f, 2]
    u = w0 * uvs[ua, 0] + w1 * uvs[ub, 0] + w2 * uvs[uc, 0]
    v = w0 * uvs[ua, 1] + w1 * uvs[ub, 1] + w2 * uvs[uc, 1]
    bt = signs[wa] * wp.cross(n, t)
    tb = b
    if albedo.shape[0] == 1:
        tb = 0
    rgb = _bilinear(albedo, tb, u, v)
    nb = b
    if normal_map.shape[0] == 1:
        nb = 0
    tn = _bilinear(normal_map, nb, u, v)
    ns = _normalize(tn[0] * t + tn[1] * bt + tn[2] * n)
    x = wp.vector(position[tid, 0], position[tid, 1], position[tid, 2])
    lp = wp.vector(light[b, 0], light[b, 1], light[b, 2])
    cos = wp.max(wp.dot(_normalize(lp - x), ns), zero)
    if visibility.shape[0] > 0:
        cos = cos * visibility[tid]
    k_a = one / (one + wp.exp(-ambient[b]))
    k = k_a + (one - k_a) * cos
    for c in range(3):
        colour[tid, c] = rgb[c] * k
        shading_normal[tid, c] = ns[c]


def _wp(t: Tensor | None, dtype) -> wp.array:
    if t is None:
        return None
    return wp.from_torch(t, dtype=wp.int32 if t.dtype == torch.int32 else dtype, requires_grad=False)


class FusedShade(torch.autograd.Function):
    """Autograd bridge: forward kernel, backward = Warp's adjoint of the same kernel."""

    @staticmethod
    def forward(ctx, bary, position, normals, tangents, albedo, normal_map, light, ambient, visibility, topo):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        floats = [
            t.detach().contiguous()
            for t in (bary, position, normals, tangents, albedo, normal_map, light, ambient, visibility)
        ]
        n = position.shape[0]
        colour = position.new_empty(n, 3)
        shading_normal = position.new_empty(n, 3)
        ctx.save_for_backward(*floats, colour, shading_normal)
        ctx.topo = topo
        if n:
            _launch(floats, topo, [colour, shading_normal])
        return colour, shading_normal

    @staticmethod
    def backward(ctx, adj_colour, adj_normal):
        *floats, colour, shading_normal = ctx.saved_tensors
        grads = [torch.zeros_like(t) for t in floats]
        adj_out = [
            torch.zeros_like(o) if a is None else a.contiguous()
            for a, o in ((adj_colour, colour), (adj_normal, shading_normal))
        ]
        if colour.shape[0]:
            _launch(floats, ctx.topo, [colour, shading_normal], grads, adj_out)
        needs = ctx.needs_input_grad
        return (*(g if needs[i] else None for i, g in enumerate(grads)), None)


def _launch(floats, topo, outputs, grads=None, adj_out=None) -> None:
    """Launch the shading kernel; its adjoint when grads are given (the replayed forward rewrites the
    same outputs, which is harmless)."""
    bary, position, normals, tangents, albedo, normal_map, light, ambient, visibility = floats
    flat_index, batch_index, face, uvs, signs, faces, face_uvs, face_wedges = topo
    inputs = [bary, flat_index, batch_index, face, position, normals, tangents, uvs, signs, faces]
    inputs += [face_uvs, face_wedges, albedo, normal_map, light, ambient, visibility]
    adj = None
    if grads is not None:
        g_bary, g_position, g_normals, g_tangents, g_albedo, g_normal_map, g_light, g_ambient, g_vis = grads
        adj = [g_bary, None, None, None, g_position, g_normals, g_tangents, None, None, None, None, None]
        adj += [g_albedo, g_normal_map, g_light, g_ambient, g_vis]
    _run(_shade, position.shape[0], inputs, outputs, position.device, adj, adj_out)


def fused_shade(
    barycentrics: Tensor,
    flat_index: Tensor,
    batch_index: Tensor,
    face: Tensor,
    position: Tensor,
    normals: Tensor,
    tangents: Tensor,
    uvs: Tensor,
    signs: Tensor,
    faces: Tensor,
    face_uvs: Tensor,
    face_wedges: Tensor,
    albedo: Tensor,
    normal_map: Tensor,
    light: Tensor,
    ambient: Tensor,
    visibility: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Interpolate, texture, normal-map and shade the covered pixels in one Warp kernel.

    Args:
        barycentrics: (B, H, W, 3) rasterizer barycentrics.
        flat_index: (N,) long index of the covered pixels into the flattened (B * H * W) image.
        batch_index: (N,) long batch item; face: (N,) long visible face of each pixel.
        position: (N, 3) interpolated camera-space positions.
        normals: (B, V, 3) vertex normals; tangents: (B, W, 3) wedge tangents.
        uvs: (U, 2); signs: (W,) wedge handedness; faces, face_uvs, face_wedges: (F, 3) long.
        albedo, normal_map: (B or 1, 3, Ht, Wt), row 0 = v 1 (normal map decoded).
        light: (B, 3) light positions; ambient: (B, 1) ambient logits.
        visibility: (N,) shadow visibility or None (fully lit).

    Returns:
        colour (N, 3) and unit shading normals (N, 3), dtype of ``position``.
    """
    if position.dim() != 2 or position.shape[-1] != 3:
        raise ValueError(f"position must have shape (N, 3), got {tuple(position.shape)}")
    n, b = position.shape[0], normals.shape[0]
    if barycentrics.dim() != 4 or barycentrics.shape[0] != b or barycentrics.shape[-1] != 3:
        raise ValueError(f"barycentrics must have shape ({b}, H, W, 3), got {tuple(barycentrics.shape)}")
    for name, t in (("flat_index", flat_index), ("batch_index", batch_index), ("face", face)):
        if t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    for name, t in (("albedo", albedo), ("normal_map", normal_map)):
        if t.dim() != 4 or t.shape[0] not in (1, b) or t.shape[1] != 3:
            raise ValueError(f"{name} must have shape (1 or {b}, 3, Ht, Wt), got {tuple(t.shape)}")
    if light.shape != (b, 3):
        raise ValueError(f"light must have shape ({b}, 3), got {tuple(light.shape)}")
    if ambient.shape != (b, 1):
        raise ValueError(f"ambient must have shape ({b}, 1), got {tuple(ambient.shape)}")
    if visibility is not None and visibility.shape != (n,):
        raise ValueError(f"visibility must have shape ({n},), got {tuple(visibility.shape)}")
    dtype = position.dtype
    if visibility is None:
        visibility = position.new_zeros(0)
    floats = [barycentrics.reshape(-1, 3), position, normals, tangents, albedo, normal_map, light]
    floats += [ambient.reshape(-1), visibility]
    floats = [t.to(dtype) for t in floats]
    as_int = [t.to(torch.int32).contiguous() for t in (flat_index, batch_index, face)]
    topo = (*as_int, uvs.to(dtype).contiguous(), signs.to(dtype).contiguous())
    topo += tuple(t.to(torch.int32).contiguous() for t in (faces, face_uvs, face_wedges))
    return FusedShade.apply(*floats, topo)


# ------------------------------------------------------------------------------- surface frames
ANGLE_CLAMP = 1e-6  # acos argument kept in [-1 + c, 1 - c], as texture.vertex_tangents
TANGENT_EPS = 1e-20  # normalize eps of the face and wedge tangents, as texture.vertex_tangents
COS_LOW, COS_HIGH = -1.0 + ANGLE_CLAMP, 1.0 - ANGLE_CLAMP


@wp.func
def _corner(vertices: wp.array3d(dtype=Any), b: int, i: int):
    return wp.vector(vertices[b, i, 0], vertices[b, i, 1], vertices[b, i, 2])


@wp.func
def _angle(edge: Any, prev: Any):
    """Interior angle between the outgoing edge and the incoming edge ``prev`` of a corner."""
    tiny = type(edge[0])(TANGENT_EPS)
    c = -wp.dot(edge, prev) / (wp.max(wp.length(edge), tiny) * wp.max(wp.length(prev), tiny))
    return wp.acos(wp.clamp(c, type(c)(COS_LOW), type(c)(COS_HIGH)))


@wp.func
def _add3(acc: wp.array3d(dtype=Any), b: int, i: int, value: Any):
    wp.atomic_add(acc, b, i, 0, value[0])
    wp.atomic_add(acc, b, i, 1, value[1])
    wp.atomic_add(acc, b, i, 2, value[2])


@wp.kernel
def _face_frames(
    vertices: wp.array3d(dtype=Any),
    uvs: wp.array2d(dtype=Any),
    faces: wp.array2d(dtype=wp.int32),
    face_uvs: wp.array2d(dtype=wp.int32),
    face_wedges: wp.array2d(dtype=wp.int32),
    acc_n: wp.array3d(dtype=Any),
    acc_t: wp.array3d(dtype=Any),
):
    b, f = wp.tid()
    p0 = _corner(vertices, b, faces[f, 0])
    p1 = _corner(vertices, b, faces[f, 1])
    p2 = _corner(vertices, b, faces[f, 2])
    e0 = p1 - p0
    e1 = p2 - p1
    e2 = p0 - p2
    fn = wp.cross(p1 - p0, p2 - p0)
    for k in range(3):
        _add3(acc_n, b, faces[f, k], fn)
    ua = face_uvs[f, 0]
    ub = face_uvs[f, 1]
    uc = face_uvs[f, 2]
    d1u = uvs[ub, 0] - uvs[ua, 0]
    d1v = uvs[ub, 1] - uvs[ua, 1]
    d2u = uvs[uc, 0] - uvs[ua, 0]
    d2v = uvs[uc, 1] - uvs[ua, 1]
    sign = type(d1u)(1.0)
    if d1u * d2v - d1v * d2u < type(d1u)(0.0):
        sign = type(d1u)(-1.0)
    ft = e0 * d2v - (-e2) * d1v
    ft = ft / wp.max(wp.length(ft), type(d1u)(TANGENT_EPS)) * sign
    _add3(acc_t, b, face_wedges[f, 0], ft * _angle(e0, e2))
    _add3(acc_t, b, face_wedges[f, 1], ft * _angle(e1, e0))
    _add3(acc_t, b, face_wedges[f, 2], ft * _angle(e2, e1))


@wp.kernel
def _vertex_normals(acc_n: wp.array3d(dtype=Any), normals: wp.array3d(dtype=Any)):
    b, i = wp.tid()
    n = _normalize(_corner(acc_n, b, i))
    for c in range(3):
        normals[b, i, c] = n[c]


@wp.kernel
def _wedge_tangents(
    acc_t: wp.array3d(dtype=Any),
    normals: wp.array3d(dtype=Any),
    wedge_vertex: wp.array(dtype=wp.int32),
    tangents: wp.array3d(dtype=Any),
):
    b, w = wp.tid()
    n = _corner(normals, b, wedge_vertex[w])
    a = _corner(acc_t, b, w)
    r = a - n * wp.dot(n, a)
    t = r / wp.max(wp.length(r), type(r[0])(TANGENT_EPS))
    for c in range(3):
        tangents[b, w, c] = t[c]


def _run(kernel, dim, inputs, outputs, device, adj_inputs=None, adj_outputs=None) -> None:
    dtype = wp.float64 if outputs[0].dtype == torch.float64 else wp.float32
    kwargs = {}
    if adj_inputs is not None:
        kwargs = {
            "adjoint": True,
            "adj_inputs": [_wp(a, dtype) for a in adj_inputs],
            "adj_outputs": [_wp(a, dtype) for a in adj_outputs],
        }
    wp.launch(
        kernel,
        dim=dim,
        inputs=[_wp(t, dtype) for t in inputs],
        outputs=[_wp(t, dtype) for t in outputs],
        device=wp.device_from_torch(device),
        stream=wp.stream_from_torch(device) if device.type == "cuda" else None,
        **kwargs,
    )


class FusedFrames(torch.autograd.Function):
    """Autograd bridge of the three frame kernels; backward runs their adjoints in reverse order."""

    @staticmethod
    def forward(ctx, vertices, topo):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        uvs, faces, face_uvs, face_wedges, wedge_vertex = topo
        vertices = vertices.detach().contiguous()
        b, v, f, w, dev = (
            vertices.shape[0],
            vertices.shape[1],
            faces.shape[0],
            wedge_vertex.shape[0],
            vertices.device,
        )
        acc_n = vertices.new_zeros(b, v, 3)
        acc_t = vertices.new_zeros(b, w, 3)
        normals = vertices.new_empty(b, v, 3)
        tangents = vertices.new_empty(b, w, 3)
        _run(_face_frames, (b, f), [vertices, uvs, faces, face_uvs, face_wedges], [acc_n, acc_t], dev)
        _run(_vertex_normals, (b, v), [acc_n], [normals], dev)
        _run(_wedge_tangents, (b, w), [acc_t, normals, wedge_vertex], [tangents], dev)
        ctx.save_for_backward(vertices, acc_n, acc_t, normals, tangents)
        ctx.topo = topo
        return normals, tangents

    @staticmethod
    def backward(ctx, adj_normals, adj_tangents):
        vertices, acc_n, acc_t, normals, tangents = ctx.saved_tensors
        uvs, faces, face_uvs, face_wedges, wedge_vertex = ctx.topo
        b, v, f, w, dev = (
            vertices.shape[0],
            vertices.shape[1],
            faces.shape[0],
            wedge_vertex.shape[0],
            vertices.device,
        )
        # The tangents' adjoint adds into the normals' adjoint: start from a copy.
        adj_n = torch.zeros_like(normals) if adj_normals is None else adj_normals.contiguous().clone()
        adj_t = torch.zeros_like(tangents) if adj_tangents is None else adj_tangents.contiguous()
        adj_acc_n, adj_acc_t, adj_v = (
            torch.zeros_like(acc_n),
            torch.zeros_like(acc_t),
            torch.zeros_like(vertices),
        )
        _run(_wedge_tangents, (b, w), [acc_t, normals, wedge_vertex], [tangents], dev,
             [adj_acc_t, adj_n, None], [adj_t])  # fmt: skip
        _run(_vertex_normals, (b, v), [acc_n], [normals], dev, [adj_acc_n], [adj_n])
        # The adjoint launch replays the forward, atomics included: give it scratch accumulators.
        scratch = [torch.zeros_like(acc_n), torch.zeros_like(acc_t)]
        _run(_face_frames, (b, f), [vertices, uvs, faces, face_uvs, face_wedges], scratch, dev,
             [adj_v, None, None, None, None], [adj_acc_n, adj_acc_t])  # fmt: skip
        return adj_v, None


def surface_frames(
    vertices: Tensor, faces: Tensor, uvs: Tensor, face_uvs: Tensor, face_wedges: Tensor, wedge_vertex: Tensor
) -> tuple[Tensor, Tensor]:
    """Unit vertex normals (B, V, 3) and wedge tangents (B, W, 3) in Warp kernels.

    The same frames as ``geometry.vertex_normals`` (area-weighted) and ``texture.vertex_tangents``
    (angle-weighted MikkTSpace-style tangents, Gram-Schmidt against the vertex normal), the twins.

    Args:
        vertices: (B, V, 3) positions; faces, face_uvs, face_wedges: (F, 3) long; uvs: (U, 2);
            wedge_vertex: (W,) long vertex of each wedge.

    Returns:
        normals (B, V, 3) and tangents (B, W, 3), dtype of ``vertices``.
    """
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3), got {tuple(vertices.shape)}")
    if not vertices.is_floating_point():
        raise ValueError(f"vertices must be a floating-point tensor, got {vertices.dtype}")
    ints = [t.to(torch.int32).contiguous() for t in (faces, face_uvs, face_wedges, wedge_vertex)]
    topo = (uvs.to(vertices.dtype).contiguous(), *ints)
    return FusedFrames.apply(vertices, topo)


# ------------------------------------------------------------------------------------ composite
@wp.kernel
def _composite(
    mask: wp.array(dtype=Any),
    packed: wp.array(dtype=wp.int32),
    colour: wp.array2d(dtype=Any),
    background: wp.array(dtype=Any),
    image: wp.array2d(dtype=Any),
):
    p = wp.tid()
    m = mask[p]
    k = packed[p]
    rest = type(m)(1.0) - m
    for c in range(3):
        if k >= 0:
            image[p, c] = m * colour[k, c] + rest * background[c]
        else:
            image[p, c] = rest * background[c]


@wp.kernel
def _composite_backward(
    mask: wp.array(dtype=Any),
    packed: wp.array(dtype=wp.int32),
    colour: wp.array2d(dtype=Any),
    background: wp.array(dtype=Any),
    adj_image: wp.array2d(dtype=Any),
    adj_mask: wp.array(dtype=Any),
    adj_colour: wp.array2d(dtype=Any),
):
    p = wp.tid()
    m = mask[p]
    k = packed[p]
    total = type(m)(0.0)
    for c in range(3):
        g = adj_image[p, c]
        if k >= 0:
            adj_colour[k, c] = m * g
            total += g * (colour[k, c] - background[c])
        else:
            total -= g * background[c]
    adj_mask[p] = total


class FusedComposite(torch.autograd.Function):
    """Autograd bridge of the composite kernel and its hand-written adjoint."""

    @staticmethod
    def forward(ctx, mask, colour, packed, background):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        mask, colour = mask.detach().contiguous(), colour.detach().contiguous()
        image = mask.new_empty(mask.shape[0], 3)
        _run(_composite, mask.shape[0], [mask, packed, colour, background], [image], mask.device)
        ctx.save_for_backward(mask, colour, packed, background)
        return image

    @staticmethod
    def backward(ctx, adj_image):
        mask, colour, packed, background = ctx.saved_tensors
        adj_mask, adj_colour = torch.empty_like(mask), torch.zeros_like(colour)
        inputs = [mask, packed, colour, background, adj_image.contiguous()]
        _run(_composite_backward, mask.shape[0], inputs, [adj_mask, adj_colour], mask.device)
        return adj_mask, adj_colour, None, None


def composite(
    colour: Tensor, flat_index: Tensor, soft_mask: Tensor, background: float | Tensor = 1.0
) -> Tensor:
    """``mask * colour + (1 - mask) * background`` with the colour given on the covered pixels only.

    The Warp twin of ``renderer.composite_pixels`` (gradients to the colour and the soft mask).

    Args:
        colour: (N, 3) shaded colour of the packed pixels.
        flat_index: (N,) long index of the packed pixels into the flattened (B * H * W) image.
        soft_mask: (B, H, W) soft silhouette.
        background: scalar or (3,) colour (no gradient).

    Returns:
        (B, H, W, 3) image.
    """
    if colour.dim() != 2 or colour.shape[-1] != 3:
        raise ValueError(f"colour must have shape (N, 3), got {tuple(colour.shape)}")
    if flat_index.shape != colour.shape[:1]:
        raise ValueError(f"flat_index must have shape ({colour.shape[0]},), got {tuple(flat_index.shape)}")
    if soft_mask.dim() != 3:
        raise ValueError(f"soft_mask must have shape (B, H, W), got {tuple(soft_mask.shape)}")
    dtype, device = colour.dtype, colour.device
    mask = soft_mask.reshape(-1).to(dtype)
    packed = torch.full((mask.shape[0],), -1, dtype=torch.int32, device=device)
    packed[flat_index] = torch.arange(flat_index.shape[0], dtype=torch.int32, device=device)
    bg = torch.as_tensor(background, dtype=dtype, device=device).detach().expand(3).contiguous()
    return FusedComposite.apply(mask, colour, packed, bg).reshape(*soft_mask.shape, 3)
