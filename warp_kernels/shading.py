"""Fused per-pixel shading (Warp kernels, CPU and CUDA): interpolate -> texture -> normal map -> Lambert.

For each covered pixel (face f, barycentrics w from the rasterizer, batch item b):

    n, t = sum_k w_k N[b, faces[f, k]], sum_k w_k T[b, face_wedges[f, k]]      (interpolated frame)
    uv = sum_k w_k uvs[face_uvs[f, k]];  bt = sign[face_wedges[f, 0]] * cross(n, t)
    albedo, tn = bilinear(albedo_map, uv), bilinear(normal_map, uv)        (v up, border clamp)
    N_s = normalize(tn_0 t + tn_1 bt + tn_2 n)
    colour = albedo * (k_a + k_d * max(0, L . N_s) * V),  k_a = sigmoid(a), k_d = 1 - k_a

exactly as ``renderer.interpolate_pixels`` + ``renderer.shade_pixels`` (the pure-torch twin), in one
pass without (N, 3) intermediates. Gradients come from a hand-written adjoint kernel (the chain rule of
the lines above, recomputing the forward per pixel except the texture lookups: when a gradient will be
wanted the forward keeps uv, both samples and their texel-axis differences per pixel, ``SAVED`` values,
so the adjoint reads no texel; about 2x faster than Warp's generated adjoint) and reach the
barycentrics, the pixel positions, the vertex normals, the wedge tangents, both texture maps, the light,
the ambient logit and the visibility. The surface frames and the composite below have hand-written
adjoints too, so Warp builds no adjoints for this module.

Texture lookups follow ``texture.sample_texture``: texel (i, j) has its centre at
``u = (j + 0.5) / Wt``, ``v = 1 - (i + 0.5) / Ht``; bilinear between centres, border texels outside.

CPU: Warp runs a CPU launch on one thread, so every op splits its index range into parts launched from
a thread each (``warp_kernels.parallel``): per-pixel kernels get views of their per-pixel arrays, the
frame kernels whole batch items. Warp's CPU ``atomic_add`` is a plain read-modify-write, so parts that
accumulate into shared arrays (texture, vertex and light gradients of the shading) get their own
accumulators, summed afterwards. Every kernel thread handles ``chunk`` consecutive items
(``parallel.CPU_CHUNK`` on CPU, which amortizes Warp's per-thread setup; 1 on CUDA). On CUDA every op is
one launch.

The device comes from the input tensors; Warp is initialized at the first launch, never at import.
Dimension names: B batch, V vertices, F faces, U uv vertices, W wedges, H W image, Ht Wt texture,
N covered pixels.
"""

from __future__ import annotations

from typing import Any

import torch
import warp as wp
from torch import Tensor

from warp_kernels import parallel
from warp_kernels.interpolate import nonneg, packed_pixel

# Every kernel's gradient is a hand-written kernel: Warp's generated adjoints are not built.
wp.set_module_options({"enable_backward": False})

NORMALIZE_EPS = 1e-12  # as torch.nn.functional.normalize(eps=1e-12) in the twin


@wp.func
def _corner(values: wp.array3d(dtype=Any), b: int, i: int):
    return wp.vector(values[b, i, 0], values[b, i, 1], values[b, i, 2])


@wp.func
def _row(values: wp.array2d(dtype=Any), i: int):
    return wp.vector(values[i, 0], values[i, 1], values[i, 2])


@wp.func
def _add3(acc: wp.array3d(dtype=Any), b: int, i: int, value: Any):
    wp.atomic_add(acc, b, i, 0, value[0])
    wp.atomic_add(acc, b, i, 1, value[1])
    wp.atomic_add(acc, b, i, 2, value[2])


@wp.func
def _unit(x: Any, eps: Any):
    """``x / max(|x|, eps)``, as torch.nn.functional.normalize (one division, then products)."""
    return x * (type(eps)(1.0) / wp.max(wp.length(x), eps))


@wp.func
def _unit_grad(x: Any, y: Any, g: Any, eps: Any):
    """Gradient w.r.t. x of ``y = _unit(x, eps)`` given the gradient g w.r.t. y.

    ``(g - y (y . g)) / |x|`` where the length is used; ``g / eps`` where the clamp is (its gradient does
    not reach the length).
    """
    length = wp.length(x)
    if length > eps:
        return (g - y * wp.dot(y, g)) * (type(eps)(1.0) / length)
    return g * (type(eps)(1.0) / eps)


# --------------------------------------------------------------------------------------- shading
@wp.func
def _taps(height: int, width: int, u: Any, v: Any):
    """Clamped texel columns xa xb, rows ya yb around (u, v) and the bilinear weights wx, wy of xb, yb.

    As grid_sample(bilinear, border, align_corners=False): the unnormalized texel coordinates are
    ``x = u Wt - 1/2`` and ``y = (1 - v) Ht - 1/2``, so dx/du = Wt and dy/dv = -Ht.
    """
    one = type(u)(1.0)
    two = type(u)(2.0)
    # The twin's arithmetic (uv -> grid -> unnormalized texel coordinate), rounding for rounding.
    x = ((two * u - one + one) * type(u)(width) - one) / two
    y = ((one - two * v + one) * type(u)(height) - one) / two
    x0f = wp.floor(x)
    y0f = wp.floor(y)
    x0 = int(x0f)
    y0 = int(y0f)
    # (nonneg: a clamp to [0, n - 1] alone does not tell the compiler that n >= 1)
    xa = nonneg(wp.clamp(x0, 0, width - 1))
    xb = nonneg(wp.clamp(x0 + 1, 0, width - 1))
    ya = nonneg(wp.clamp(y0, 0, height - 1))
    yb = nonneg(wp.clamp(y0 + 1, 0, height - 1))
    return xa, xb, ya, yb, x - x0f, y - y0f


@wp.func
def _rgb(tex: wp.array4d(dtype=Any), b: int, x: int, y: int):
    """RGB of texel (row y, column x) of texture item b."""
    return wp.vector(tex[b, 0, y, x], tex[b, 1, y, x], tex[b, 2, y, x])


@wp.func
def _lerp2(t00: Any, t01: Any, t10: Any, t11: Any, wx: Any, wy: Any):
    """Bilinear blend of four texels (rows a b, columns a b) with the weights wx, wy of the second ones."""
    one = type(wx)(1.0)
    return (one - wy) * ((one - wx) * t00 + wx * t01) + wy * ((one - wx) * t10 + wx * t11)


@wp.func
def _sample(tex: wp.array4d(dtype=Any), b: int, u: Any, v: Any):
    """RGB of texture item b at (u, v), as grid_sample(bilinear, border, align_corners=False), and its
    differences along the texel columns and rows, ``(1 - wy)(t01 - t00) + wy (t11 - t10)`` and
    ``(1 - wx)(t10 - t00) + wx (t11 - t01)`` (d/dx and d/dy of the value, which the uv gradient needs)."""
    xa, xb, ya, yb, wx, wy = _taps(tex.shape[2], tex.shape[3], u, v)
    t00 = _rgb(tex, b, xa, ya)
    t01 = _rgb(tex, b, xb, ya)
    t10 = _rgb(tex, b, xa, yb)
    t11 = _rgb(tex, b, xb, yb)
    one = type(wx)(1.0)
    dx = (one - wy) * (t01 - t00) + wy * (t11 - t10)
    dy = (one - wx) * (t10 - t00) + wx * (t11 - t01)
    return _lerp2(t00, t01, t10, t11, wx, wy), dx, dy


@wp.func
def _bilinear_grad(
    adj_tex: wp.array4d(dtype=Any),
    b: int,
    xa: int,
    xb: int,
    ya: int,
    yb: int,
    wx: Any,
    wy: Any,
    dx: Any,
    dy: Any,
    g: Any,
):
    """Adjoint of a bilinear lookup (taps as ``_taps``, texel-axis differences dx, dy as ``_sample``) for the
    gradient g (RGB) of its value: adds g's share to the four texels of ``adj_tex``; returns the gradient
    w.r.t. u and v."""
    one = type(wx)(1.0)
    gx = wp.dot(g, dx)
    gy = wp.dot(g, dy)
    for c in range(3):
        wp.atomic_add(adj_tex, b, c, ya, xa, g[c] * (one - wx) * (one - wy))
        wp.atomic_add(adj_tex, b, c, ya, xb, g[c] * wx * (one - wy))
        wp.atomic_add(adj_tex, b, c, yb, xa, g[c] * (one - wx) * wy)
        wp.atomic_add(adj_tex, b, c, yb, xb, g[c] * wx * wy)
    return gx * type(wx)(adj_tex.shape[3]), -gy * type(wx)(adj_tex.shape[2])


@wp.func
def _texture_item(tex: wp.array4d(dtype=Any), b: int):
    """The texture of batch item b: item 0 of a shared (batch 1) texture."""
    if tex.shape[0] == 1:
        return 0
    return b


SAVED = 20  # values per pixel that ``_shade`` keeps for ``_shade_backward`` (``_keep``)


@wp.func
def _keep(
    saved: wp.array2d(dtype=Any),
    k: int,
    u: Any,
    v: Any,
    rgb: Any,
    adx: Any,
    ady: Any,
    tn: Any,
    ndx: Any,
    ndy: Any,
):
    """Row k of ``saved``: u, v, then the albedo sample and its texel-axis differences, the normal-map sample
    and its differences (``_sample``), three values each."""
    saved[k, 0] = u
    saved[k, 1] = v
    for c in range(3):
        saved[k, 2 + c] = rgb[c]
        saved[k, 5 + c] = adx[c]
        saved[k, 8 + c] = ady[c]
        saved[k, 11 + c] = tn[c]
        saved[k, 14 + c] = ndx[c]
        saved[k, 17 + c] = ndy[c]


@wp.func
def _kept(saved: wp.array2d(dtype=Any), k: int, at: int):
    """The three values of row k of ``saved`` from column ``at`` (``_keep``)."""
    return wp.vector(saved[k, at], saved[k, at + 1], saved[k, at + 2])


@wp.kernel
def _shade(
    bary: wp.array2d(dtype=Any),
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
    saved: wp.array2d(dtype=Any),
    chunk: int,
):
    """Colour and shading normal of each packed pixel; with a non-empty ``saved`` (N, SAVED) also what the
    adjoint needs of the texture lookups (``_keep``), so that it reads no texel."""
    q = wp.tid()
    keep = saved.shape[0] > 0
    # k_a = sigmoid(ambient[b]) once per run of pixels of one item (they come sorted by item)
    item = wp.int32(-1)  # a dynamic variable (assigned in the loop)
    k_a = ambient[0] * type(ambient[0])(0.0)
    for tid in range(nonneg(q * chunk), wp.min(q * chunk + chunk, bary.shape[0])):
        b, f, i0, i1, i2, w0, w1, w2 = packed_pixel(bary, batch_index, face, faces, tid)
        one = type(w0)(1.0)
        zero = type(w0)(0.0)
        eps = type(w0)(NORMALIZE_EPS)
        n = w0 * _corner(normals, b, i0) + w1 * _corner(normals, b, i1)
        n = n + w2 * _corner(normals, b, i2)
        wa = nonneg(face_wedges[f, 0])
        t = w0 * _corner(tangents, b, wa) + w1 * _corner(tangents, b, nonneg(face_wedges[f, 1]))
        t = t + w2 * _corner(tangents, b, nonneg(face_wedges[f, 2]))
        ua = nonneg(face_uvs[f, 0])
        ub = nonneg(face_uvs[f, 1])
        uc = nonneg(face_uvs[f, 2])
        u = w0 * uvs[ua, 0] + w1 * uvs[ub, 0] + w2 * uvs[uc, 0]
        v = w0 * uvs[ua, 1] + w1 * uvs[ub, 1] + w2 * uvs[uc, 1]
        bt = signs[wa] * wp.cross(n, t)
        rgb, adx, ady = _sample(albedo, _texture_item(albedo, b), u, v)
        tn, ndx, ndy = _sample(normal_map, _texture_item(normal_map, b), u, v)
        if keep:
            _keep(saved, tid, u, v, rgb, adx, ady, tn, ndx, ndy)
        ns = _unit(tn[0] * t + tn[1] * bt + tn[2] * n, eps)
        lp = wp.vector(light[b, 0], light[b, 1], light[b, 2])
        cos = wp.max(wp.dot(_unit(lp - _row(position, tid), eps), ns), zero)
        if visibility.shape[0] > 0:
            cos = cos * visibility[tid]
        if b != item:
            k_a = one / (one + wp.exp(-ambient[b]))
            item = b
        k = k_a + (one - k_a) * cos
        for c in range(3):
            colour[tid, c] = rgb[c] * k
            shading_normal[tid, c] = ns[c]


@wp.kernel
def _shade_backward(
    bary: wp.array2d(dtype=Any),
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
    saved: wp.array2d(dtype=Any),
    adj_colour: wp.array2d(dtype=Any),
    adj_shading_normal: wp.array2d(dtype=Any),
    adj_bary: wp.array2d(dtype=Any),
    adj_position: wp.array2d(dtype=Any),
    adj_visibility: wp.array(dtype=Any),
    adj_normals: wp.array3d(dtype=Any),
    adj_tangents: wp.array3d(dtype=Any),
    adj_albedo: wp.array4d(dtype=Any),
    adj_normal_map: wp.array4d(dtype=Any),
    adj_light: wp.array2d(dtype=Any),
    adj_ambient: wp.array(dtype=Any),
    chunk: int,
):
    """Adjoint of ``_shade``: per-pixel gradients are written, the shared ones (frames, textures, light,
    ambient) accumulated. The texture samples and their differences come from the forward's ``saved``."""
    q = wp.tid()
    # k_a = sigmoid(ambient[b]) once per run of pixels of one item (they come sorted by item)
    item = wp.int32(-1)  # a dynamic variable (assigned in the loop)
    k_a = ambient[0] * type(ambient[0])(0.0)
    for tid in range(nonneg(q * chunk), wp.min(q * chunk + chunk, bary.shape[0])):
        b, f, i0, i1, i2, w0, w1, w2 = packed_pixel(bary, batch_index, face, faces, tid)
        one = type(w0)(1.0)
        zero = type(w0)(0.0)
        eps = type(w0)(NORMALIZE_EPS)
        # Forward, keeping what the adjoint needs.
        j0 = nonneg(face_wedges[f, 0])
        j1 = nonneg(face_wedges[f, 1])
        j2 = nonneg(face_wedges[f, 2])
        ua = nonneg(face_uvs[f, 0])
        ub = nonneg(face_uvs[f, 1])
        uc = nonneg(face_uvs[f, 2])
        u = saved[tid, 0]
        v = saved[tid, 1]
        n0 = _corner(normals, b, i0)
        n1 = _corner(normals, b, i1)
        n2 = _corner(normals, b, i2)
        t0 = _corner(tangents, b, j0)
        t1 = _corner(tangents, b, j1)
        t2 = _corner(tangents, b, j2)
        n = w0 * n0 + w1 * n1 + w2 * n2
        t = w0 * t0 + w1 * t1 + w2 * t2
        sign = signs[j0]
        bt = sign * wp.cross(n, t)
        tb = _texture_item(albedo, b)
        axa, axb, aya, ayb, awx, awy = _taps(albedo.shape[2], albedo.shape[3], u, v)
        nb = _texture_item(normal_map, b)
        nxa, nxb, nya, nyb, nwx, nwy = _taps(normal_map.shape[2], normal_map.shape[3], u, v)
        tn = _kept(saved, tid, 11)
        m = tn[0] * t + tn[1] * bt + tn[2] * n
        ns = _unit(m, eps)
        d = wp.vector(light[b, 0], light[b, 1], light[b, 2]) - _row(position, tid)
        to_light = _unit(d, eps)
        cos_raw = wp.dot(to_light, ns)
        cos = wp.max(cos_raw, zero)
        vis = one
        if visibility.shape[0] > 0:
            vis = visibility[tid]
        if b != item:
            k_a = one / (one + wp.exp(-ambient[b]))
            item = b
        k = k_a + (one - k_a) * cos * vis
        # colour = rgb * k
        g_colour = _row(adj_colour, tid)
        g_k = wp.dot(g_colour, _kept(saved, tid, 2))
        g_rgb = g_colour * k
        adx, ady = _kept(saved, tid, 5), _kept(saved, tid, 8)
        g_u, g_v = _bilinear_grad(adj_albedo, tb, axa, axb, aya, ayb, awx, awy, adx, ady, g_rgb)
        # k = k_a + (1 - k_a) cos V,  k_a = sigmoid(a)
        wp.atomic_add(adj_ambient, b, g_k * (one - cos * vis) * k_a * (one - k_a))
        g_cos_vis = g_k * (one - k_a)
        if visibility.shape[0] > 0:
            adj_visibility[tid] = g_cos_vis * cos
        g_cos_raw = zero
        if cos_raw > zero:
            g_cos_raw = g_cos_vis * vis
        # cos_raw = to_light . ns,  to_light = unit(light - position)
        g_d = _unit_grad(d, to_light, g_cos_raw * ns, eps)
        for c in range(3):
            adj_position[tid, c] = -g_d[c]
            wp.atomic_add(adj_light, b, c, g_d[c])
        # ns = unit(m),  m = tn_0 t + tn_1 bt + tn_2 n,  bt = sign cross(n, t)
        g_m = _unit_grad(m, ns, _row(adj_shading_normal, tid) + g_cos_raw * to_light, eps)
        g_tn = wp.vector(wp.dot(g_m, t), wp.dot(g_m, bt), wp.dot(g_m, n))
        ndx, ndy = _kept(saved, tid, 14), _kept(saved, tid, 17)
        g_un, g_vn = _bilinear_grad(adj_normal_map, nb, nxa, nxb, nya, nyb, nwx, nwy, ndx, ndy, g_tn)
        g_bt = sign * tn[1] * g_m
        g_n = tn[2] * g_m + wp.cross(t, g_bt)
        g_t = tn[0] * g_m + wp.cross(g_bt, n)
        g_u = g_u + g_un
        g_v = g_v + g_vn
        # interpolation
        adj_bary[tid, 0] = wp.dot(g_n, n0) + wp.dot(g_t, t0) + g_u * uvs[ua, 0] + g_v * uvs[ua, 1]
        adj_bary[tid, 1] = wp.dot(g_n, n1) + wp.dot(g_t, t1) + g_u * uvs[ub, 0] + g_v * uvs[ub, 1]
        adj_bary[tid, 2] = wp.dot(g_n, n2) + wp.dot(g_t, t2) + g_u * uvs[uc, 0] + g_v * uvs[uc, 1]
        _add3(adj_normals, b, i0, w0 * g_n)
        _add3(adj_normals, b, i1, w1 * g_n)
        _add3(adj_normals, b, i2, w2 * g_n)
        _add3(adj_tangents, b, j0, w0 * g_t)
        _add3(adj_tangents, b, j1, w1 * g_t)
        _add3(adj_tangents, b, j2, w2 * g_t)


class FusedShade(torch.autograd.Function):
    """Autograd bridge of the shading kernel and its hand-written adjoint, on CPU in parts over the pixels
    (private accumulators per part for the shared gradients)."""

    @staticmethod
    @parallel.serial
    def forward(ctx, bary, position, normals, tangents, albedo, normal_map, light, ambient, visibility, topo):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        floats = [
            t.detach().contiguous()
            for t in (bary, position, normals, tangents, albedo, normal_map, light, ambient, visibility)
        ]
        n = position.shape[0]
        colour = position.new_empty(n, 3)
        shading_normal = position.new_empty(n, 3)
        # what the adjoint needs of the texture lookups, kept only when there will be one
        saved = position.new_empty(n if any(ctx.needs_input_grad) else 0, SAVED)
        ctx.save_for_backward(*floats, saved)
        ctx.topo = topo
        ctx.set_materialize_grads(False)  # zeros for an unused output are made here, on one thread
        if n:
            _shade_parts(_shade, floats, topo, [colour, shading_normal, saved])
        return colour, shading_normal

    @staticmethod
    @parallel.serial
    def backward(ctx, adj_colour, adj_shading_normal):
        *floats, saved = ctx.saved_tensors
        if adj_colour is None and adj_shading_normal is None:
            return (None,) * 10
        _check_kept(saved, floats[1].shape[0])
        adj_colour = torch.zeros_like(floats[1]) if adj_colour is None else adj_colour
        adj_shading_normal = torch.zeros_like(floats[1]) if adj_shading_normal is None else adj_shading_normal
        g_bary, g_position = torch.empty_like(floats[0]), torch.empty_like(floats[1])  # written per pixel
        g_visibility = torch.empty_like(floats[8])
        parts = parallel.split(g_position.device, g_position.shape[0], min_items=parallel.MIN_ITEMS_PER_PART)
        shared = [parallel.Accumulator(t, len(parts)) for t in floats[2:8]]  # normals ... ambient
        if g_position.shape[0]:
            per_pixel = [adj_colour.contiguous(), adj_shading_normal.contiguous(), g_bary, g_position]
            per_pixel = [saved, *per_pixel, g_visibility]
            _shade_parts(_shade_backward, floats, ctx.topo, per_pixel, shared, parts)
        grads = [g_bary, g_position, *parallel.totals(shared), g_visibility]
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None)


def _check_kept(saved: Tensor, n: int) -> None:
    """The adjoint reads row k of ``saved`` for pixel k: the forward must have kept them all."""
    if saved.shape != (n, SAVED):
        raise RuntimeError(
            f"the shading forward kept {tuple(saved.shape)} texture values for {n} pixels; its adjoint "
            f"needs ({n}, {SAVED}) (was the forward run without gradients?)"
        )


def _shade_parts(kernel, floats, topo, per_pixel, shared=(), parts=None) -> None:
    """Launch ``kernel`` over the pixels in ``parts`` (default ``parallel.split``): the shading inputs,
    ``per_pixel`` (N, ...) arrays (views per part), then the ``shared`` accumulators
    (``parallel.Accumulator``, one per gradient, made for these parts)."""
    bary, position, normals, tangents, albedo, normal_map, light, ambient, visibility = floats
    batch_index, face, uvs, signs, faces, face_uvs, face_wedges = topo
    device = position.device
    if parts is None:
        parts = parallel.split(device, position.shape[0], min_items=parallel.MIN_ITEMS_PER_PART)
    fixed = [normals, tangents, uvs, signs, faces, face_uvs, face_wedges, albedo, normal_map, light, ambient]

    steps = []
    for k, sl in enumerate(parts):
        pixels = [t[sl] for t in (bary, batch_index, face, position)]
        outputs = [t[sl] if t.shape[0] else t for t in (visibility, *per_pixel)]  # some may be empty
        accumulators = [acc.part(k, zero=False) for acc in shared]
        launch = _step(kernel, sl.stop - sl.start, [*pixels, *fixed, *outputs, *accumulators])
        steps.append([*(a.zero_ for a in accumulators), launch])  # zeroed by the part itself
    parallel.run_launches(device, __name__, steps)


def _step(kernel, items: int | tuple[int, int], args: list) -> tuple:
    """The launch ``(kernel, dim, args)`` (``parallel.run_launches``) of ``kernel`` over ``items``: the last
    dimension in chunks of ``chunk`` items per thread (the kernel's last argument), on the tensors'
    device."""
    device = next(a for a in args if isinstance(a, Tensor)).device
    chunk = parallel.CPU_CHUNK if device.type == "cpu" else 1
    dim = (items[0], -(-items[1] // chunk)) if isinstance(items, tuple) else -(-items // chunk)
    return kernel, dim, [*args, chunk]


def fused_shade(
    barycentrics: Tensor,
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
        barycentrics: (N, 3) rasterizer barycentrics of the covered pixels.
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
    if barycentrics.shape != (n, 3):
        raise ValueError(f"barycentrics must have shape ({n}, 3), got {tuple(barycentrics.shape)}")
    for name, t in (("batch_index", batch_index), ("face", face)):
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
    floats = [barycentrics, position, normals, tangents, albedo, normal_map, light]
    floats += [ambient.reshape(-1), visibility]
    floats = [t.to(dtype) for t in floats]
    as_int = [t.to(torch.int32).contiguous() for t in (batch_index, face)]
    topo = (*as_int, uvs.to(dtype).contiguous(), signs.to(dtype).contiguous())
    topo += tuple(t.to(torch.int32).contiguous() for t in (faces, face_uvs, face_wedges))
    return FusedShade.apply(*floats, topo)


# ------------------------------------------------------------------------------- surface frames
ANGLE_CLAMP = 1e-6  # acos argument kept in [-1 + c, 1 - c], as texture.vertex_tangents
TANGENT_EPS = 1e-20  # normalize eps of the face and wedge tangents, as texture.vertex_tangents
COS_LOW, COS_HIGH = -1.0 + ANGLE_CLAMP, 1.0 - ANGLE_CLAMP


@wp.func
def _acos(x: wp.float32):
    """acos(x) for x in [-1, 1], inlined (libm's acosf is an opaque call, three per face).

    pi/2 - asin(x) for |x| <= 1/2, else 2 asin(sqrt((1 - |x|) / 2)) (from pi for x < 0), with Cephes'
    asinf polynomial on [0, 1/2]: absolute error below 3e-7, as float32 acos itself.
    """
    half = wp.float32(0.5)
    a = wp.abs(x)
    z = x * x
    s = x
    if a > half:
        z = half * (wp.float32(1.0) - a)
        s = wp.sqrt(z)
    p = wp.float32(4.2163199048e-2) * z + wp.float32(2.4181311049e-2)
    p = (p * z + wp.float32(4.5470025998e-2)) * z + wp.float32(7.4953002686e-2)
    p = (p * z + wp.float32(1.6666752422e-1)) * z * s + s  # asin(s)
    if a <= half:
        return wp.float32(1.5707963267948966) - p
    if x < wp.float32(0.0):
        return wp.float32(3.141592653589793) - p - p
    return p + p


@wp.func
def _acos(x: wp.float64):
    """libm's acos: the float32 polynomial is not accurate enough for float64."""
    return wp.acos(x)


@wp.func
def _angle(c: Any):
    """Interior angle of a corner from its cosine c (clamped, as the twin)."""
    return _acos(wp.clamp(c, type(c)(COS_LOW), type(c)(COS_HIGH)))


@wp.func
def _angle_grad(c: Any, g: Any):
    """g times d angle / dc: -g / sqrt(1 - c^2) inside the clamp, 0 outside."""
    if c >= type(c)(COS_LOW) and c <= type(c)(COS_HIGH):
        return -g / wp.sqrt(type(c)(1.0) - c * c)
    return type(c)(0.0)


@wp.func
def _length_grad(e: Any, length: Any, g: Any):
    """g times d max(|e|, tiny) / de: ``g e / |e|`` where the length is used, 0 where the clamp is."""
    if length > type(length)(TANGENT_EPS):
        return e * (g / length)
    return e * type(length)(0.0)


@wp.func
def _uv_frame(uvs: wp.array2d(dtype=Any), face_uvs: wp.array2d(dtype=wp.int32), f: int):
    """UV derivatives d1v, d2v of a face (corner 0 -> 1, 0 -> 2) and the sign of its UV area."""
    ua = nonneg(face_uvs[f, 0])
    ub = nonneg(face_uvs[f, 1])
    uc = nonneg(face_uvs[f, 2])
    d1u = uvs[ub, 0] - uvs[ua, 0]
    d1v = uvs[ub, 1] - uvs[ua, 1]
    d2u = uvs[uc, 0] - uvs[ua, 0]
    d2v = uvs[uc, 1] - uvs[ua, 1]
    sign = type(d1u)(1.0)
    if d1u * d2v - d1v * d2u < type(d1u)(0.0):
        sign = type(d1u)(-1.0)
    return d1v, d2v, sign


@wp.func
def _marked(mark: wp.array2d(dtype=wp.int32), b: int, i: int):
    """Whether vertex i of item b needs its frame: marked, or ``mark`` empty (every vertex)."""
    if mark.shape[0] == 0:
        return True
    return mark[b, i] != 0


@wp.func
def _touches_mark(mark: wp.array2d(dtype=wp.int32), b: int, i0: int, i1: int, i2: int):
    """Whether a face with corners i0, i1, i2 adds to a frame that is needed (``_marked``)."""
    if mark.shape[0] == 0:
        return True
    return mark[b, i0] != 0 or mark[b, i1] != 0 or mark[b, i2] != 0


@wp.kernel
def _mark_corners(
    batch_index: wp.array(dtype=wp.int32),
    face: wp.array(dtype=wp.int32),
    faces: wp.array2d(dtype=wp.int32),
    first: int,
    mark: wp.array2d(dtype=wp.int32),
    chunk: int,
):
    """Marks the corners of each pixel's face in its item's row of ``mark`` (rows from item ``first``)."""
    q = wp.tid()
    for k in range(q * chunk, wp.min(q * chunk + chunk, face.shape[0])):
        b = batch_index[k] - first
        f = face[k]
        mark[b, faces[f, 0]] = 1
        mark[b, faces[f, 1]] = 1
        mark[b, faces[f, 2]] = 1


@wp.func
def _edges(vertices: wp.array3d(dtype=Any), b: int, i0: int, i1: int, i2: int):
    """A face's edges e_k from corner k to k + 1 (``_face_frames`` and its adjoint)."""
    p0 = _corner(vertices, b, i0)
    p1 = _corner(vertices, b, i1)
    p2 = _corner(vertices, b, i2)
    return p1 - p0, p2 - p1, p0 - p2


@wp.kernel
def _face_frames(
    vertices: wp.array3d(dtype=Any),
    uvs: wp.array2d(dtype=Any),
    faces: wp.array2d(dtype=wp.int32),
    face_uvs: wp.array2d(dtype=wp.int32),
    face_wedges: wp.array2d(dtype=wp.int32),
    acc_n: wp.array3d(dtype=Any),
    acc_t: wp.array3d(dtype=Any),
    angles: wp.array3d(dtype=Any),
    mark: wp.array2d(dtype=wp.int32),
    chunk: int,
):
    """Face normal (area-weighted) to its vertices, unit face tangent times the corner angle to its
    wedges; the corner angles (B, F, 3) are kept for the adjoint. Edge k runs from corner k to k + 1;
    corner k lies between edges k and k - 1. With ``mark`` (B, V) not empty, only the faces with a
    marked corner (``_touches_mark``)."""
    b, q = wp.tid()
    b = nonneg(b)
    for f in range(nonneg(q * chunk), wp.min(q * chunk + chunk, faces.shape[0])):
        i0 = nonneg(faces[f, 0])
        i1 = nonneg(faces[f, 1])
        i2 = nonneg(faces[f, 2])
        if not _touches_mark(mark, b, i0, i1, i2):
            continue
        e0, e1, e2 = _edges(vertices, b, i0, i1, i2)
        fn = wp.cross(e0, -e2)  # p2 - p0 = -e2 exactly
        _add3(acc_n, b, i0, fn)
        _add3(acc_n, b, i1, fn)
        _add3(acc_n, b, i2, fn)
        d1v, d2v, sign = _uv_frame(uvs, face_uvs, f)
        tiny = type(d1v)(TANGENT_EPS)
        ft = _unit(e0 * d2v - (-e2) * d1v, tiny) * sign
        l0 = wp.max(wp.length(e0), tiny)
        l1 = wp.max(wp.length(e1), tiny)
        l2 = wp.max(wp.length(e2), tiny)
        a0 = _angle(-wp.dot(e0, e2) / (l0 * l2))
        a1 = _angle(-wp.dot(e1, e0) / (l1 * l0))
        a2 = _angle(-wp.dot(e2, e1) / (l2 * l1))
        angles[b, f, 0] = a0
        angles[b, f, 1] = a1
        angles[b, f, 2] = a2
        _add3(acc_t, b, nonneg(face_wedges[f, 0]), ft * a0)
        _add3(acc_t, b, nonneg(face_wedges[f, 1]), ft * a1)
        _add3(acc_t, b, nonneg(face_wedges[f, 2]), ft * a2)


@wp.kernel
def _face_frames_backward(
    vertices: wp.array3d(dtype=Any),
    uvs: wp.array2d(dtype=Any),
    faces: wp.array2d(dtype=wp.int32),
    face_uvs: wp.array2d(dtype=wp.int32),
    face_wedges: wp.array2d(dtype=wp.int32),
    angles: wp.array3d(dtype=Any),
    adj_acc_n: wp.array3d(dtype=Any),
    adj_acc_t: wp.array3d(dtype=Any),
    adj_vertices: wp.array3d(dtype=Any),
    mark: wp.array2d(dtype=wp.int32),
    chunk: int,
):
    """Adjoint of ``_face_frames``, accumulated into the vertices' gradient (the faces it ran on).

    Corner k's cosine c_k = -(e_k . e_{k-1}) / (L_k L_{k-1}) with L = max(|e|, tiny) gives
    dc_k/de_k = -e_{k-1} / (L_k L_{k-1}) and dc_k/dL_k = -c_k / L_k.
    """
    b, q = wp.tid()
    b = nonneg(b)
    for f in range(nonneg(q * chunk), wp.min(q * chunk + chunk, faces.shape[0])):
        i0 = nonneg(faces[f, 0])
        i1 = nonneg(faces[f, 1])
        i2 = nonneg(faces[f, 2])
        if not _touches_mark(mark, b, i0, i1, i2):
            continue
        e0, e1, e2 = _edges(vertices, b, i0, i1, i2)
        # fn = cross(e0, -e2)
        g_fn = _corner(adj_acc_n, b, i0) + _corner(adj_acc_n, b, i1) + _corner(adj_acc_n, b, i2)
        g_e0 = wp.cross(-e2, g_fn)
        g_e2 = wp.cross(e0, g_fn)  # minus the gradient w.r.t. -e2 = cross(g_fn, e0)
        # ft = unit(e0 d2v + e2 d1v) sign, added as ft angle_k to wedge k
        d1v, d2v, sign = _uv_frame(uvs, face_uvs, f)
        tiny = type(d1v)(TANGENT_EPS)
        raw = e0 * d2v - (-e2) * d1v
        unit = _unit(raw, tiny)
        ft = unit * sign
        len0 = wp.length(e0)
        len1 = wp.length(e1)
        len2 = wp.length(e2)
        l0 = wp.max(len0, tiny)
        l1 = wp.max(len1, tiny)
        l2 = wp.max(len2, tiny)
        c0 = -wp.dot(e0, e2) / (l0 * l2)
        c1 = -wp.dot(e1, e0) / (l1 * l0)
        c2 = -wp.dot(e2, e1) / (l2 * l1)
        g0 = _corner(adj_acc_t, b, nonneg(face_wedges[f, 0]))
        g1 = _corner(adj_acc_t, b, nonneg(face_wedges[f, 1]))
        g2 = _corner(adj_acc_t, b, nonneg(face_wedges[f, 2]))
        g_ft = g0 * angles[b, f, 0] + g1 * angles[b, f, 1] + g2 * angles[b, f, 2]
        g_raw = _unit_grad(raw, unit, g_ft * sign, tiny)
        g_e0 += d2v * g_raw
        g_e2 += d1v * g_raw
        # angles
        gc0 = _angle_grad(c0, wp.dot(ft, g0))
        gc1 = _angle_grad(c1, wp.dot(ft, g1))
        gc2 = _angle_grad(c2, wp.dot(ft, g2))
        s0 = -gc0 / (l0 * l2)
        s1 = -gc1 / (l1 * l0)
        s2 = -gc2 / (l2 * l1)
        g_e0 += s0 * e2 + s1 * e1 - _length_grad(e0, len0, (gc0 * c0 + gc1 * c1) / l0)
        g_e1 = s1 * e0 + s2 * e2 - _length_grad(e1, len1, (gc1 * c1 + gc2 * c2) / l1)
        g_e2 += s2 * e1 + s0 * e0 - _length_grad(e2, len2, (gc2 * c2 + gc0 * c0) / l2)
        # e0 = p1 - p0, e1 = p2 - p1, e2 = p0 - p2
        _add3(adj_vertices, b, i0, g_e2 - g_e0)
        _add3(adj_vertices, b, i1, g_e0 - g_e1)
        _add3(adj_vertices, b, i2, g_e1 - g_e2)


@wp.kernel
def _vertex_normals(
    acc_n: wp.array3d(dtype=Any), mark: wp.array2d(dtype=wp.int32), normals: wp.array3d(dtype=Any), chunk: int
):
    """Unit accumulated normals; 0 at the vertices ``mark`` leaves out (when not empty)."""
    b, q = wp.tid()
    for i in range(q * chunk, wp.min(q * chunk + chunk, acc_n.shape[1])):
        zero = type(acc_n[b, i, 0])(0.0)
        n = wp.vector(zero, zero, zero)
        if _marked(mark, b, i):
            n = _unit(_corner(acc_n, b, i), type(acc_n[b, i, 0])(NORMALIZE_EPS))
        for c in range(3):
            normals[b, i, c] = n[c]


@wp.kernel
def _vertex_normals_backward(
    acc_n: wp.array3d(dtype=Any),
    normals: wp.array3d(dtype=Any),
    adj_normals: wp.array3d(dtype=Any),
    adj_acc_n: wp.array3d(dtype=Any),
    mark: wp.array2d(dtype=wp.int32),
    chunk: int,
):
    b, q = wp.tid()
    for i in range(q * chunk, wp.min(q * chunk + chunk, acc_n.shape[1])):
        eps = type(acc_n[b, i, 0])(NORMALIZE_EPS)
        g = wp.vector(type(eps)(0.0), type(eps)(0.0), type(eps)(0.0))
        if _marked(mark, b, i):
            g = _unit_grad(_corner(acc_n, b, i), _corner(normals, b, i), _corner(adj_normals, b, i), eps)
        for c in range(3):
            adj_acc_n[b, i, c] = g[c]


@wp.kernel
def _wedge_tangents(
    acc_t: wp.array3d(dtype=Any),
    normals: wp.array3d(dtype=Any),
    wedge_vertex: wp.array(dtype=wp.int32),
    mark: wp.array2d(dtype=wp.int32),
    tangents: wp.array3d(dtype=Any),
    chunk: int,
):
    """Gram-Schmidt of the accumulated tangent against the wedge's vertex normal, normalized; 0 at the
    wedges of the vertices ``mark`` leaves out (when not empty)."""
    b, q = wp.tid()
    for w in range(q * chunk, wp.min(q * chunk + chunk, wedge_vertex.shape[0])):
        i = wedge_vertex[w]
        a = _corner(acc_t, b, w)
        zero = type(a[0])(0.0)
        t = wp.vector(zero, zero, zero)
        if _marked(mark, b, i):
            n = _corner(normals, b, i)
            t = _unit(a - n * wp.dot(n, a), type(a[0])(TANGENT_EPS))
        for c in range(3):
            tangents[b, w, c] = t[c]


@wp.kernel
def _wedge_tangents_backward(
    acc_t: wp.array3d(dtype=Any),
    normals: wp.array3d(dtype=Any),
    wedge_vertex: wp.array(dtype=wp.int32),
    tangents: wp.array3d(dtype=Any),
    adj_tangents: wp.array3d(dtype=Any),
    adj_acc_t: wp.array3d(dtype=Any),
    adj_normals: wp.array3d(dtype=Any),
    mark: wp.array2d(dtype=wp.int32),
    chunk: int,
):
    """Adjoint of ``_wedge_tangents``: r = a - n (n . a) gives dr/da = I - n n^T and
    dr/dn = -(n . a) I - a n^T; the normals' gradient is accumulated (wedges share vertices)."""
    b, q = wp.tid()
    for w in range(q * chunk, wp.min(q * chunk + chunk, wedge_vertex.shape[0])):
        i = wedge_vertex[w]
        if not _marked(mark, b, i):
            for c in range(3):
                adj_acc_t[b, w, c] = type(adj_acc_t[b, w, c])(0.0)
            continue
        n = _corner(normals, b, i)
        a = _corner(acc_t, b, w)
        na = wp.dot(n, a)
        tiny = type(na)(TANGENT_EPS)
        g_r = _unit_grad(a - n * na, _corner(tangents, b, w), _corner(adj_tangents, b, w), tiny)
        ng = wp.dot(n, g_r)
        g_a = g_r - n * ng
        for c in range(3):
            adj_acc_t[b, w, c] = g_a[c]
        _add3(adj_normals, b, i, -(g_r * na + a * ng))


def _batch_parts(device: torch.device, batch: int, per_item: int) -> list[slice]:
    """Slices of whole batch items for a launch over ``per_item`` elements (faces) of every item: as many
    parts as ``parallel.split`` makes, each with at least ``MIN_ITEMS_PER_PART`` elements."""
    return parallel.split(device, batch, min_items=-(-parallel.MIN_ITEMS_PER_PART // max(per_item, 1)))


class FusedFrames(torch.autograd.Function):
    """Autograd bridge of the three frame kernels and their hand-written adjoints, on CPU in parts of whole
    batch items (every kernel accumulates within its own item only)."""

    @staticmethod
    @parallel.serial
    def forward(ctx, vertices, topo, pixels):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        uvs, faces, face_uvs, face_wedges, wedge_vertex = topo
        vertices = vertices.detach().contiguous()
        b, v, f, w = vertices.shape[0], vertices.shape[1], faces.shape[0], wedge_vertex.shape[0]
        acc_n, acc_t = vertices.new_empty(b, v, 3), vertices.new_empty(b, w, 3)
        normals, tangents = vertices.new_empty(b, v, 3), vertices.new_empty(b, w, 3)
        angles = vertices.new_empty(b, f, 3)
        parts = _batch_parts(vertices.device, b, f) if b else []
        # (B, V) marks of the vertices whose frames are needed (empty: all of them)
        mark = torch.empty(
            (b, v) if pixels is not None else (0, 0), dtype=torch.int32, device=vertices.device
        )
        if pixels is not None:
            batch_index, face = pixels
            bounds = torch.tensor([sl.start for sl in parts] + [b], dtype=batch_index.dtype)
            ends = torch.searchsorted(batch_index, bounds.to(batch_index.device)).tolist()

        steps = []
        for k, sl in enumerate(parts):
            items = sl.stop - sl.start
            an, at, nrm, mk = acc_n[sl], acc_t[sl], normals[sl], mark[sl]  # (0, 0) without pixels
            part = [an.zero_, at.zero_]
            if pixels is not None:
                marked = slice(ends[k], ends[k + 1])
                part.append(mk.zero_)
                if marked.stop > marked.start:
                    args = [batch_index[marked], face[marked], faces, sl.start, mk]
                    part.append(_step(_mark_corners, marked.stop - marked.start, args))
            mesh = [vertices[sl], uvs, faces, face_uvs, face_wedges]
            steps.append([
                *part,
                _step(_face_frames, (items, f), [*mesh, an, at, angles[sl], mk]),
                _step(_vertex_normals, (items, v), [an, mk, nrm]),
                _step(_wedge_tangents, (items, w), [at, nrm, wedge_vertex, mk, tangents[sl]]),
            ])  # fmt: skip
        parallel.run_launches(vertices.device, __name__, steps)
        ctx.save_for_backward(vertices, acc_n, acc_t, angles, normals, tangents, mark)
        ctx.topo = topo
        return normals, tangents

    @staticmethod
    @parallel.serial
    def backward(ctx, adj_normals, adj_tangents):
        vertices, acc_n, acc_t, angles, normals, tangents, mark = ctx.saved_tensors
        uvs, faces, face_uvs, face_wedges, wedge_vertex = ctx.topo
        b, v, f, w = vertices.shape[0], vertices.shape[1], faces.shape[0], wedge_vertex.shape[0]
        adj_n = adj_normals.clone(memory_format=torch.contiguous_format)  # the tangents' adjoint adds to it
        adj_t = adj_tangents.contiguous()
        adj_acc_n, adj_acc_t = torch.empty_like(acc_n), torch.empty_like(acc_t)  # written per element
        adj_v = torch.empty_like(vertices)  # accumulated: zeroed per part

        steps = []
        for sl in _batch_parts(vertices.device, b, f) if b else []:
            items = sl.stop - sl.start
            mk = mark[sl]  # (0, 0): every frame
            frames = [acc_t[sl], normals[sl], wedge_vertex, tangents[sl]]
            mesh = [vertices[sl], uvs, faces, face_uvs, face_wedges, angles[sl], adj_acc_n[sl], adj_acc_t[sl]]
            normal_args = [acc_n[sl], normals[sl], adj_n[sl], adj_acc_n[sl], mk]
            tangent_args = [*frames, adj_t[sl], adj_acc_t[sl], adj_n[sl], mk]
            steps.append([
                _step(_wedge_tangents_backward, (items, w), tangent_args),
                _step(_vertex_normals_backward, (items, v), normal_args),
                adj_v[sl].zero_,
                _step(_face_frames_backward, (items, f), [*mesh, adj_v[sl], mk]),
            ])  # fmt: skip
        parallel.run_launches(vertices.device, __name__, steps)
        return adj_v, None, None


def surface_frames(
    vertices: Tensor,
    faces: Tensor,
    uvs: Tensor,
    face_uvs: Tensor,
    face_wedges: Tensor,
    wedge_vertex: Tensor,
    pixels: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Unit vertex normals (B, V, 3) and wedge tangents (B, W, 3) in Warp kernels.

    The same frames as ``geometry.vertex_normals`` (area-weighted) and ``texture.vertex_tangents``
    (angle-weighted MikkTSpace-style tangents, Gram-Schmidt against the vertex normal), the twins.

    Args:
        vertices: (B, V, 3) positions; faces, face_uvs, face_wedges: (F, 3) long; uvs: (U, 2);
            wedge_vertex: (W,) long vertex of each wedge.
        pixels: optional (batch_index, face), (N,) integers sorted by item: the (item, face) of the
            pixels that will use the frames (the rasterizer's covered pixels). Then only the frames at
            these faces' corners are computed (from every face around them, so they are exact), about
            half the work for a hand seen from one side; every other vertex and wedge gets zeros, and
            no gradient flows through them. None: every frame.

    Returns:
        normals (B, V, 3) and tangents (B, W, 3), dtype of ``vertices``.
    """
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3), got {tuple(vertices.shape)}")
    if not vertices.is_floating_point():
        raise ValueError(f"vertices must be a floating-point tensor, got {vertices.dtype}")
    ints = [t.to(torch.int32).contiguous() for t in (faces, face_uvs, face_wedges, wedge_vertex)]
    topo = (uvs.to(vertices.dtype).contiguous(), *ints)
    if pixels is not None:
        pixels = _check_pixels(pixels, vertices.shape[0], faces.shape[0], vertices.device)
    return FusedFrames.apply(vertices, topo, pixels)


def _check_pixels(pixels, batch: int, faces: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``surface_frames``' (batch_index, face) as int32, checked: same length, sorted by item, in range."""
    batch_index, face = pixels
    if batch_index.dim() != 1 or face.shape != batch_index.shape:
        got = (tuple(batch_index.shape), tuple(face.shape))
        raise ValueError(f"pixels must be two (N,) tensors (batch_index, face), got shapes {got}")
    if batch_index.device != device or face.device != device:
        raise ValueError(f"pixels must be on {device} like vertices")
    if batch_index.is_floating_point() or face.is_floating_point():
        raise ValueError("pixels must be integer tensors (batch_index, face)")
    if batch_index.numel():
        if not bool((batch_index[1:] >= batch_index[:-1]).all()):
            raise ValueError("pixels: batch_index must be sorted (the rasterizer's pixel order)")
        low, high = torch.aminmax(face)
        if int(batch_index[0]) < 0 or int(batch_index[-1]) >= batch or int(low) < 0 or int(high) >= faces:
            raise ValueError(
                f"pixels out of range: batch_index in [{int(batch_index[0])}, {int(batch_index[-1])}] for "
                f"{batch} items, face in [{int(low)}, {int(high)}] for {faces} faces"
            )
    return batch_index.to(torch.int32).contiguous(), face.to(torch.int32).contiguous()


# ------------------------------------------------------------------------------------ composite
@wp.kernel
def _composite_background(
    mask: wp.array(dtype=Any), background: wp.array(dtype=Any), image: wp.array2d(dtype=Any), chunk: int
):
    """Every pixel as if uncovered (colour 0): ``(1 - mask) * background``.

    A ``while`` loop: on CPU LLVM unrolls it (4 pixels per iteration), not the ``for ... in range`` form
    Warp emits for runtime bounds: 1.2 against 1.9 ms for the 802k pixels of four 448 x 448 images."""
    p = nonneg(wp.tid() * chunk)
    end = wp.min(p + chunk, mask.shape[0])
    b0 = background[0]
    b1 = background[1]
    b2 = background[2]
    while p < end:
        rest = type(b0)(1.0) - mask[p]
        image[p, 0] = rest * b0
        image[p, 1] = rest * b1
        image[p, 2] = rest * b2
        p = p + 1


@wp.kernel
def _composite_covered(
    mask: wp.array(dtype=Any),
    flat: wp.array(dtype=wp.int64),
    colour: wp.array2d(dtype=Any),
    background: wp.array(dtype=Any),
    image: wp.array2d(dtype=Any),
    chunk: int,
):
    """The covered pixels (row k of ``colour`` is pixel ``flat[k]``): ``mask * colour + (1 - mask) *
    background``."""
    q = wp.tid()
    for k in range(q * chunk, wp.min(q * chunk + chunk, flat.shape[0])):
        p = int(flat[k])
        m = mask[p]
        for c in range(3):
            image[p, c] = m * colour[k, c] + (type(m)(1.0) - m) * background[c]


@wp.kernel
def _composite_background_backward(
    background: wp.array(dtype=Any),
    adj_image: wp.array2d(dtype=Any),
    adj_mask: wp.array(dtype=Any),
    chunk: int,
):
    q = wp.tid()
    for p in range(q * chunk, wp.min(q * chunk + chunk, adj_mask.shape[0])):
        adj_mask[p] = -(
            adj_image[p, 0] * background[0]
            + adj_image[p, 1] * background[1]
            + adj_image[p, 2] * background[2]
        )


@wp.kernel
def _composite_covered_backward(
    mask: wp.array(dtype=Any),
    flat: wp.array(dtype=wp.int64),
    colour: wp.array2d(dtype=Any),
    background: wp.array(dtype=Any),
    adj_image: wp.array2d(dtype=Any),
    adj_mask: wp.array(dtype=Any),
    adj_colour: wp.array2d(dtype=Any),
    chunk: int,
):
    q = wp.tid()
    for k in range(q * chunk, wp.min(q * chunk + chunk, flat.shape[0])):
        p = int(flat[k])
        m = mask[p]
        total = type(m)(0.0)
        for c in range(3):
            g = adj_image[p, c]
            adj_colour[k, c] = m * g
            total += g * (colour[k, c] - background[c])
        adj_mask[p] = total


class FusedComposite(torch.autograd.Function):
    """Autograd bridge of the composite kernels and their hand-written adjoints: a pass over every image
    pixel as background, then one over the covered pixels; on CPU in parts of disjoint pixel ranges, each
    part running both passes over its range (the covered pixels split at the same pixel indices)."""

    @staticmethod
    @parallel.serial
    def forward(ctx, mask, colour, flat, background):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        mask, colour = mask.detach().contiguous(), colour.detach().contiguous()
        image = mask.new_empty(mask.shape[0], 3)
        background_pass = (_composite_background, [mask, background, image], (0, 2))
        covered_pass = (_composite_covered, [mask, flat, colour, background, image], (1, 2))
        ctx.layout = _pixel_parts(mask.shape[0], flat, background_pass, covered_pass)
        ctx.save_for_backward(mask, colour, flat, background)
        return image

    @staticmethod
    @parallel.serial
    def backward(ctx, adj_image):
        mask, colour, flat, background = ctx.saved_tensors
        adj_mask, adj_colour = torch.empty_like(mask), torch.empty_like(colour)
        adj_image = adj_image.contiguous()
        background_pass = (_composite_background_backward, [background, adj_image, adj_mask], (1, 2))
        args = [mask, flat, colour, background, adj_image, adj_mask, adj_colour]
        covered_pass = (_composite_covered_backward, args, (1, 2, 6))
        _pixel_parts(mask.shape[0], flat, background_pass, covered_pass, ctx.layout)
        return adj_mask, adj_colour, None, None


def _pixel_parts(
    n: int, flat: Tensor, background_pass: tuple, covered_pass: tuple, layout: tuple | None = None
) -> tuple:
    """Run a pass over all n pixels, then one over the covered pixels ``flat`` (flat indices), in parts
    (``warp_kernels.parallel``). A pass is (kernel, its arguments, the positions of the arguments sliced
    per part: per pixel, or per covered pixel).

    With ``flat`` increasing (the rasterizer's order), part k runs both passes: the first on pixel range
    k, the second on the covered pixels inside that range, so no two parts write the same pixel, in one
    hand-off to the pool. Otherwise the passes run one after the other, each in its own parts.

    Returns the layout (the parts, and where ``flat`` is cut, or None when it is not increasing); a
    later call with the same ``n`` and ``flat`` (the backward) passes it back instead of finding it again.
    """
    if n == 0:
        return [], None
    device = flat.device
    if layout is None:
        parts = parallel.split(device, n, min_items=parallel.MIN_ITEMS_PER_PART)
        cuts = None
        if len(parts) == 1:  # one part: both passes in order over everything, whatever the order of flat
            cuts = [0, flat.shape[0]]
        elif flat.shape[0] <= 1 or bool((flat[1:] > flat[:-1]).all()):
            starts = torch.tensor([sl.start for sl in parts] + [n], dtype=flat.dtype, device=device)
            cuts = torch.searchsorted(flat, starts).tolist()
        layout = parts, cuts
    parts, cuts = layout
    if cuts is None:
        for k, p in enumerate((background_pass, covered_pass)):
            count = n if k == 0 else flat.shape[0]
            ranges = parts if k == 0 else parallel.split(device, count, min_items=parallel.MIN_ITEMS_PER_PART)
            parallel.run_launches(
                device, __name__, [[_pass_step(p, sl)] for sl in ranges if sl.stop > sl.start]
            )
        return layout
    steps = []
    for k, pixels in enumerate(parts):
        covered = slice(cuts[k], cuts[k + 1])
        steps.append([_pass_step(p, sl) for p, sl in ((background_pass, pixels), (covered_pass, covered))])
    parallel.run_launches(device, __name__, [[s for s in part if s is not None] for part in steps])
    return layout


def _pass_step(composite_pass: tuple, sl: slice) -> tuple | None:
    """The launch of one pass of ``_pixel_parts`` over ``sl`` (None when empty)."""
    kernel, args, per_item = composite_pass
    if sl.stop <= sl.start:
        return None
    return _step(kernel, sl.stop - sl.start, [a[sl] if i in per_item else a for i, a in enumerate(args)])


def composite(
    colour: Tensor, flat_index: Tensor, soft_mask: Tensor, background: float | Tensor = 1.0
) -> Tensor:
    """``mask * colour + (1 - mask) * background`` with the colour given on the covered pixels only.

    The Warp twin of ``renderer.composite_pixels`` (gradients to the colour and the soft mask).

    Args:
        colour: (N, 3) shaded colour of the packed pixels.
        flat_index: (N,) long index of the packed pixels into the flattened (B * H * W) image, distinct.
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
    flat = flat_index.to(device=device, dtype=torch.int64).contiguous()
    bg = torch.as_tensor(background, dtype=dtype, device=device).detach().expand(3).contiguous()
    return FusedComposite.apply(mask, colour, flat, bg).reshape(*soft_mask.shape, 3)


# --------------------------------------------------------------------------------------- overloads
def _overload_all() -> None:
    """Declare the float32 and float64 overloads up front: the module compiles once (before any threads
    launch from it) instead of again when float64 first appears."""
    for t in (wp.float32, wp.float64):
        f1, f2, f3, f4 = (wp.array(dtype=t), wp.array2d(dtype=t), wp.array3d(dtype=t), wp.array4d(dtype=t))
        i1, i2 = wp.array(dtype=wp.int32), wp.array2d(dtype=wp.int32)
        shade = [f2, i1, i1, f2, f3, f3, f2, f1, i2, i2, i2, f4, f4, f2, f1, f1]
        wp.overload(_shade, [*shade, f2, f2, f2, int])
        wp.overload(_shade_backward, [*shade, f2, f2, f2, f2, f2, f1, f3, f3, f4, f4, f2, f1, int])
        wp.overload(_face_frames, [f3, f2, i2, i2, i2, f3, f3, f3, i2, int])
        wp.overload(_face_frames_backward, [f3, f2, i2, i2, i2, f3, f3, f3, f3, i2, int])
        wp.overload(_vertex_normals, [f3, i2, f3, int])
        wp.overload(_vertex_normals_backward, [f3, f3, f3, f3, i2, int])
        wp.overload(_wedge_tangents, [f3, f3, i1, i2, f3, int])
        wp.overload(_wedge_tangents_backward, [f3, f3, i1, f3, f3, f3, f3, i2, int])
        i64 = wp.array(dtype=wp.int64)
        wp.overload(_composite_background, [f1, f1, f2, int])
        wp.overload(_composite_covered, [f1, i64, f2, f1, f2, int])
        wp.overload(_composite_background_backward, [f1, f2, f1, int])
        wp.overload(_composite_covered_backward, [f1, i64, f2, f1, f2, f1, f2, int])


_overload_all()
