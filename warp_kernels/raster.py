"""DIB-R rasterization (Kaolin ``dibr_rasterization`` v0.18 semantics) with Warp kernels.

Same signature, outputs and gradients as ``kaolin.render.mesh.dibr_rasterization``; its pure-torch twin
is ``warp_kernels.reference.dibr_rasterization``. Details matched to Kaolin's source
(``kaolin/render/mesh/{dibr,rasterization}.py``,
``kaolin/csrc/render/mesh/{rasterization,dibr_soft_mask}_cuda.cu``):

- Coordinates are scaled by ``multiplier`` before every geometric test; pixel centres are
  ``multiplier / W * (2j + 1 - W)`` and ``multiplier / H * (H - 2i - 1)`` computed in float32 (as
  Kaolin's kernels do, also for float64 inputs).
- Hard pass: faces with ``face_normals_z >= 0`` only. A face is tested on a pixel when the pixel centre
  lies in its half-open bounding box ``[min, max)``; it covers the pixel when its three barycentrics
  ``w_k = cross_k / (sum cross + copysign(eps, sum cross))`` (multiplied coordinates) are all >= 0, so
  both windings are drawn. The largest ``z = sum w_k z_k`` wins; ties go to the lowest face index.
- Features are ``sum w_k f_k``. Gradients follow Kaolin's backward: to the features ``w_k``; to
  ``face_vertices_image`` the derivative of ``w1 = k1 / (k3 + copysign(eps, k3))``,
  ``w2 = k2 / (...)``, ``w0 = 1 - w1 - w2`` in NDC units (so ``eps`` acts there in the backward);
  none to ``face_vertices_z``.
- Soft mask: covered pixel -> 1 (no gradient). Uncovered pixel -> ``1 - prod_k (1 - exp(-sigmainv d_k^2))``
  over ALL faces, back faces included, whose bounding box grown by ``boxlen`` contains the pixel centre
  (half-open, as above); when more than ``knum`` qualify, the ``knum`` lowest face indices are used
  (Kaolin scans faces in index order and stops at ``knum``). ``d_k^2`` is the smallest of the three
  squared vertex distances and the squared perpendicular distances to the edges whose foot lies inside
  the edge, with Kaolin's ``1e-7`` added to each edge's squared length (multiplied units).
  Its gradient is the exact derivative of that expression (Kaolin's analytic backward).

Decisions (not visible in Kaolin's API):

- When ``face_features`` is a list (or tuple) the features come back in a container of the same type
  (Kaolin returns a tuple for both).
- ``copysign(eps, s)`` is taken as ``+eps`` for ``s == -0.0`` (a degenerate face through the pixel
  centre). On exact distance ties the soft mask may pick another (equally near) edge or vertex than
  Kaolin for its gradient. Float32 results match Kaolin up to rounding; NaN inputs are undefined.
- Gradients of the soft mask use ``prod_{l != k} (1 - p_l)`` exactly (Kaolin divides the product by
  ``1 - p_k + 1e-7``, which differs only when ``p_k`` is ~1).

Algorithm (no pixels x faces brute force; flat arrays, indices computed by hand):

- hard pass: every front face scans the pixels of its bounding box (wide faces: a conservative span per
  row, 1 pixel margin, before the exact test). On CPU a launch runs its threads in index order, so one
  pass keeps the first face with the largest z; on CUDA two passes (atomic max of z, then atomic min of
  the index among faces at that z) give the same answer whatever the thread order.
- dense outputs: the union of the faces' grown boxes (the window) holds every covered pixel and every
  nonzero soft-mask value, so it is computed first and the per-pixel pass (face index, coverage, the
  list of covered pixels) visits the window only; the rest of the image is filled as background
  (a fill is several times cheaper per pixel than a kernel pass, and the hand covers a small part).
- soft pass: faces draw their grown boxes into a difference array whose 2D prefix sum counts the
  candidates of every pixel. On CPU (index order) each face in turn visits the pixels of its box that
  have fewer than ``knum`` faces yet, computes their probabilities and appends them to one stream in
  face order, which the backward walks face by face (gradients summed in registers). On CUDA per-pixel
  CSR lists of all candidates are filled in any order, sorted, and computed and differentiated pixel
  by pixel. In float32 on CPU the stream's arithmetic (distances, exp) runs 8 entries at a time in SIMD
  lanes (``_soft_stream_simd``, ``warp_kernels.lanes``), equal to the generic kernel bit for bit; every
  float32 CPU path takes the soft mask's exp from Cephes' polynomial (``_soft_exp``: relative error below
  2e-7, and never below 1.2e-38, where libm's ``expf`` goes on into denormals).
- the kernels read the mesh in an indexed form: one depth and NDC position per point, each face's
  corners through an (F, 3) index (``_Mesh``). Kaolin's per-face arguments are the case of 3 points per
  face and the identity index, so ``dibr_rasterization`` and its twin read the same numbers;
  ``dibr_rasterization_indexed`` and ``depth_map_indexed`` take a mesh's vertices and faces directly
  (the renderer's path: no (B, F, 3, ...) corner arrays, gradients summed per vertex in the kernels).
- forward and backward are Warp kernels inside one ``torch.autograd.Function``; the device comes from
  the input tensors. Warp's CPU kernels are single-threaded but release the GIL, so on CPU the batch is
  split over ``torch.get_num_threads()`` Python threads.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import warp as wp

from warp_kernels import lanes, parallel

# Gradients are written by hand (Kaolin's analytic formulas), so Warp's adjoints are not built; no FMA
# contraction, so results round like torch's (the twin) and both depth passes agree bit for bit.
wp.set_module_options({"enable_backward": False, "fuse_fp": False})

_EDGE_EPS = 1e-7  # Kaolin's EPS in dibr_soft_mask_cuda.cu (added to squared edge lengths)
_FAR = 1e30  # "no distance" for an edge whose foot is off the edge (any real squared distance is less)
_NO_FACE = 2**31 - 1
_KINDS = 8  # a soft-mask list entry is face * _KINDS + kind (the kind: 0-5), so faces < 2**28
MAX_FACES = (2**31 - 1) // _KINDS
# CPU launches run their threads in index order, which the CPU path relies on; tests switch this off to
# run the order-independent path (the CUDA one) on CPU.
SEQUENTIAL_CPU = True
SIMD_CPU = True  # float32 CPU soft stream with its probabilities in SIMD lanes (``_soft_stream_simd``)
_COLUMN_BLOCK = 32  # columns per thread in the vertical prefix sum
# How the kernels read the corner features (``fstride``): the identity, so the features are the barycentrics
# (broadcast identity corners); one (1, 1, 3, D) set shared by every face and item; or D per point.
_BARYCENTRIC = -1
_SHARED = 0
_PER_POINT = 1


@wp.func
def _first_at_least(centres: wp.array(dtype=Any), value: Any, inverse_scale: Any):
    """First index k of the ascending pixel centres ``scale * (2k + 1 - n)`` whose value is >= ``value``
    (``inverse_scale`` = 1 / scale: the estimate needs no division; the exact centres settle it).

    The estimate is ``ceil(t)`` for the fractional index t of ``value``. Rounding moves t and the stored
    centres by far less than 0.01 of an index (about 1e-4 for 8192 columns in float32), so when t is
    farther than that from an integer the estimate is the answer; only within 0.01 of an integer are
    the centres read."""
    n = centres.shape[0]
    t = wp.clamp(
        (value * inverse_scale + type(inverse_scale)(n - 1)) * type(inverse_scale)(0.5),
        type(inverse_scale)(-1.0),
        type(inverse_scale)(n + 1),
    )
    up = wp.ceil(t)
    k = wp.clamp(int(up), 0, n)
    if up - t > type(inverse_scale)(0.01) and up - t < type(inverse_scale)(0.99):
        return k
    # the estimate is off by at most one; settle it with the exact centres
    while k > 0:
        if centres[k - 1] < value:
            break
        k = k - 1
    while k < n:
        if centres[k] >= value:
            break
        k = k + 1
    return k


@wp.func
def _clip_span(alpha: Any, beta: Any, sign: Any, lo: Any, hi: Any):
    """Narrow [lo, hi] to where sign * (alpha x + beta) >= 0, ignoring near-horizontal edges."""
    a = alpha * sign
    if a >= type(a)(1.0):
        lo = wp.max(lo, -beta / alpha)
    elif a <= type(a)(-1.0):
        hi = wp.min(hi, -beta / alpha)
    return lo, hi


@wp.func
def _crosses(ax: Any, ay: Any, bx: Any, by: Any, cx: Any, cy: Any, x0: Any, y0: Any, eps: Any):
    """Kaolin's unnormalized barycentrics of pixel (x0, y0) and their eps-shifted sum (multiplied units)."""
    a_x = ax - x0
    a_y = ay - y0
    b_x = bx - x0
    b_y = by - y0
    c_x = cx - x0
    c_y = cy - y0
    w0 = b_x * c_y - b_y * c_x
    w1 = c_x * a_y - c_y * a_x
    w2 = a_x * b_y - a_y * b_x
    norm = w0 + w1 + w2
    if norm >= type(norm)(0.0):
        norm = norm + eps
    else:
        norm = norm - eps
    return w0, w1, w2, norm


@wp.func
def _covers(w0: Any, w1: Any, w2: Any, norm: Any):
    """Whether all of w_k / norm are >= 0, without dividing."""
    zero = type(norm)(0.0)
    if norm > zero:
        return w0 >= zero and w1 >= zero and w2 >= zero
    if norm < zero:
        return w0 <= zero and w1 <= zero and w2 <= zero
    return False


@wp.func
def _edge_dist2(x0: Any, y0: Any, x1: Any, y1: Any, x2: Any, y2: Any):
    """Kaolin's squared distance from (x0, y0) to the line of edge (1, 2), ``(A x0 + B y0 + C)^2 /
    (A^2 + B^2 + EPS)``, if its foot lies on the edge, else a huge value."""
    ex = x2 - x1
    ey = y2 - y1
    along = (x0 - x1) * ex + (y0 - y1) * ey
    down = ey * ey + ex * ex + type(x0)(_EDGE_EPS)
    up = ey * x0 - ex * y0 + (x2 * y1 - x1 * y2)
    inside = along >= type(x0)(0.0) and along <= ex * ex + ey * ey
    return wp.where(inside, up * up * (type(x0)(1.0) / down), type(x0)(_FAR))  # 1 / down: per face, hoisted


@wp.func
def _edge_dist2_grad(x0: Any, y0: Any, x1: Any, y1: Any, x2: Any, y2: Any, coef: Any):
    """coef times the gradient of ``_edge_dist2`` (foot on the edge) w.r.t. the edge's ends (x1, y1) and
    (x2, y2), as (x1, y1, x2, y2)."""
    one = type(x0)(1.0)
    two = type(x0)(2.0)
    ea = y2 - y1
    eb = x1 - x2
    up = ea * x0 + eb * y0 + (x2 * y1 - x1 * y2)
    inv = one / (ea * ea + eb * eb + type(x0)(_EDGE_EPS))
    d2 = up * up * inv
    dda = two * (x0 * up - d2 * ea) * inv
    ddb = two * (y0 * up - d2 * eb) * inv
    ddc = two * up * inv
    return coef * (ddb - y2 * ddc), coef * (x2 * ddc - dda), coef * (y1 * ddc - ddb), coef * (dda - x1 * ddc)


@wp.func
def _closer(d: Any, k: int, best: Any, kind: int):
    """(d, k) if d < best else (best, kind), without a branch."""
    c = d < best
    return wp.where(c, d, best), wp.where(c, k, kind)


@wp.func
def _soft_dist2(x0: Any, y0: Any, ax: Any, ay: Any, bx: Any, by: Any, cx: Any, cy: Any):
    """Kaolin's squared distance to a face and its kind: 0-2 edge k -> k+1, 3-5 vertex k - 3.

    Kaolin keeps the first minimum of (edge 0, edge 1, edge 2, vertex 0, vertex 1, vertex 2); this order
    differs from it only on ties (the same distance up to rounding, a measure-zero set of pixels).
    Branch-free: which feature is nearest is unpredictable from one candidate to the next, and
    mispredicted branches cost more than the three divisions (about 2x faster on CPU).
    """
    best = (x0 - ax) * (x0 - ax) + (y0 - ay) * (y0 - ay)
    kind = wp.int32(3)
    best, kind = _closer((x0 - bx) * (x0 - bx) + (y0 - by) * (y0 - by), 4, best, kind)
    best, kind = _closer((x0 - cx) * (x0 - cx) + (y0 - cy) * (y0 - cy), 5, best, kind)
    best, kind = _closer(_edge_dist2(x0, y0, ax, ay, bx, by), 0, best, kind)
    best, kind = _closer(_edge_dist2(x0, y0, bx, by, cx, cy), 1, best, kind)
    best, kind = _closer(_edge_dist2(x0, y0, cx, cy, ax, ay), 2, best, kind)
    return best, kind


_CEPHES_EXP = "#if defined(__CUDA_ARCH__)\nreturn expf(a);\n#else\n" + lanes.CPU_LANES
_CEPHES_EXP += "return cephes_exp(a);\n#endif\n"  # lanes' exp on CPU, CUDA's expf on CUDA


@wp.func_native(_CEPHES_EXP)
def _cephes_exp(a: wp.float32) -> wp.float32: ...


@wp.func
def _soft_exp(a: wp.float32):
    """The soft mask's exp: on CPU ``lanes``' Cephes polynomial, which ``_soft_stream_simd`` runs in
    SIMD lanes, so that every CPU path (lanes, the generic stream, the per-pixel lists) gives the same
    probabilities bit for bit; CUDA's ``expf`` on CUDA."""
    return _cephes_exp(a)


@wp.func
def _soft_exp(a: wp.float64):
    """libm's exp: the float32 polynomial is not accurate enough for float64."""
    return wp.exp(a)


@wp.func
def _entry(face: int, kind: int):
    """A soft-mask list entry: the face index and its distance kind (0-5, ``_soft_dist2``) in one int32."""
    return face * _KINDS + kind


@wp.func
def _entry_face(entry: int):
    return entry // _KINDS


@wp.func
def _entry_kind(entry: int):
    return entry % _KINDS


@wp.func
def _pixel(p: int, height: int, width: int):
    """(b, i, j) of flat pixel index p."""
    b = p // (height * width)
    r = p - b * height * width
    i = r // width
    return b, i, r - i * width


@wp.func
def _carried_pixel(p: int, b: int, i: int, row_start: int, height: int, width: int):
    """(b, i, j, row_start) of flat pixel p given those of an earlier pixel (row_start: the flat index of
    its row's first pixel): no integer division while p stays in that image row, ``_pixel`` otherwise.
    A kernel thread carries them over its run of pixels (start with row_start = -width)."""
    if p >= row_start and p < row_start + width:
        return b, i, p - row_start, row_start
    nb, ni, nj = _pixel(p, height, width)
    return nb, ni, nj, p - nj


@wp.func
def _window_pixel(t: int, window: wp.array(dtype=wp.int32), height: int, width: int):
    """Flat pixel index of thread t over (image, window row, window column), its image, row and column."""
    rows = window[1] - window[0]
    columns = window[3] - window[2]
    b = t // (rows * columns)
    r = t - b * rows * columns
    i = r // columns
    j = r - i * columns + window[2]
    i = i + window[0]
    return (b * height + i) * width + j, b, i, j


@wp.func
def _corner_points(corner: wp.array(dtype=wp.int32), points: int, b: int, f: int):
    """Flat indices into the item-major (B*V) points of face f's three corners in item b (``corner``:
    the (F*3,) point index of each face corner, ``points``: V)."""
    base = b * points
    k = f * 3
    return base + corner[k], base + corner[k + 1], base + corner[k + 2]


@wp.func
def _corners_xy(vim: wp.array(dtype=Any), p0: int, p1: int, p2: int):
    """The projected corners (ax, ay, bx, by, cx, cy) at flat points p0, p1, p2 of the (B*V*2,) array."""
    return vim[p0 * 2], vim[p0 * 2 + 1], vim[p1 * 2], vim[p1 * 2 + 1], vim[p2 * 2], vim[p2 * 2 + 1]


@parallel.chunked
@wp.kernel
def _hard_pass(
    vim: wp.array(dtype=Any),
    vz: wp.array(dtype=Any),
    nz: wp.array(dtype=Any),
    faces: int,
    corner: wp.array(dtype=wp.int32),
    points: int,
    xs: wp.array(dtype=Any),
    ys_up: wp.array(dtype=Any),
    x_scale: Any,
    y_scale: Any,
    eps: Any,
    mode: int,
    zbuf: wp.array(dtype=Any),
    fidx: wp.array(dtype=wp.int32),
    items: int,
    chunk: int,
):
    """Per face, over the pixels of its box it covers (largest z wins, then the lowest index).

    mode 0: atomic max of z; mode 1: atomic min of the index among faces at that z (``zbuf`` starts at
    -inf, ``fidx`` at ``_NO_FACE``); mode 2: both at once, only valid for a sequential launch (CPU),
    where faces come in index order (``fidx`` starts at -1, ``zbuf`` is read only where a face won).
    """
    thread = wp.tid()
    for t in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        if not (nz[t] >= type(eps)(0.0)):
            continue
        b = t // faces
        f = t - b * faces
        p0, p1, p2 = _corner_points(corner, points, b, f)
        ax, ay, bx, by, cx, cy = _corners_xy(vim, p0, p1, p2)
        xmin = wp.min(ax, wp.min(bx, cx))
        xmax = wp.max(ax, wp.max(bx, cx))
        x_inv = type(x_scale)(1.0) / x_scale
        j0 = _first_at_least(xs, xmin, x_inv)
        j1 = _first_at_least(xs, xmax, x_inv)
        if j0 >= j1:  # no pixel-centre column in the box (many faces smaller than a pixel)
            continue
        az = vz[p0]
        bz = vz[p1]
        cz = vz[p2]
        y_inv = type(y_scale)(1.0) / y_scale
        k0 = _first_at_least(ys_up, wp.min(ay, wp.min(by, cy)), y_inv)
        k1 = _first_at_least(ys_up, wp.max(ay, wp.max(by, cy)), y_inv)
        one = type(eps)(1.0)
        half = type(eps)(0.5)
        width = xs.shape[0]
        height = ys_up.shape[0]
        offset = type(eps)(width - 1)
        # Wide faces test only a conservative span per row (1 pixel margin); the exact test decides.
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        spans = j1 - j0 > 4 and wp.abs(area) >= one
        sign = wp.where(area > type(eps)(0.0), one, -one)
        for k in range(k0, k1):
            y0 = ys_up[k]
            row = (b * height + height - 1 - k) * width
            ja = j0
            jb = j1
            if spans:
                lo, hi = _clip_span(by - cy, bx * (cy - y0) - (by - y0) * cx, sign, xmin, xmax)
                lo, hi = _clip_span(cy - ay, cx * (ay - y0) - (cy - y0) * ax, sign, lo, hi)
                lo, hi = _clip_span(ay - by, ax * (by - y0) - (ay - y0) * bx, sign, lo, hi)
                ja = wp.max(j0, int(wp.floor((lo / x_scale + offset) * half)) - 1)
                jb = wp.min(j1, int(wp.ceil((hi / x_scale + offset) * half)) + 2)
            for j in range(ja, jb):
                w0, w1, w2, norm = _crosses(ax, ay, bx, by, cx, cy, xs[j], y0, eps)
                if _covers(w0, w1, w2, norm):
                    z = w0 / norm * az + w1 / norm * bz + w2 / norm * cz
                    p = row + j
                    if mode == 2:  # fidx starts at -1 and zbuf unset: the first face only has to beat -inf
                        won = fidx[p] >= 0
                        if (not won and z > -wp.inf) or (won and z > zbuf[p]):
                            zbuf[p] = z
                            fidx[p] = f
                    elif mode == 0:
                        wp.atomic_max(zbuf, p, z)
                    elif z == zbuf[p]:
                        wp.atomic_min(fidx, p, f)


@wp.func
def _is_background(fidx: wp.array(dtype=wp.int32), p: int, f: int):
    """Whether no face won pixel p (``f = fidx[p]``): -1 from the sequential pass, ``_NO_FACE`` from the
    atomic ones, which becomes -1 here."""
    if f == _NO_FACE:
        fidx[p] = -1
        return True
    return f < 0


@wp.func
def _feature_offsets(fstride: int, dims: int, p0: int, p1: int, p2: int):
    """Where the three corners' features start: at their points (``_PER_POINT``), or in the one shared
    set of three corners (``_SHARED``)."""
    if fstride == _SHARED:
        return 0, dims, 2 * dims
    return p0 * dims, p1 * dims, p2 * dims


@wp.func
def _write_features(
    vim: wp.array(dtype=Any),
    feats: wp.array(dtype=Any),
    corner: wp.array(dtype=wp.int32),
    points: int,
    dims: int,
    fstride: int,
    f: int,
    b: int,
    i: int,
    j: int,
    xs: wp.array(dtype=Any),
    ys: wp.array(dtype=Any),
    eps: Any,
    out: wp.array(dtype=Any),
    row: int,
):
    """Row ``row`` of ``out``: face f's features interpolated at pixel (b, i, j) with Kaolin's barycentrics
    (``fstride``: ``_PER_POINT`` for (B*V*dims,) point features, ``_SHARED`` for one set of corner
    features shared by every face and item, ``_BARYCENTRIC`` for the identity: the barycentrics
    themselves, without reading the features)."""
    p0, p1, p2 = _corner_points(corner, points, b, f)
    ax, ay, bx, by, cx, cy = _corners_xy(vim, p0, p1, p2)
    w0, w1, w2, norm = _crosses(ax, ay, bx, by, cx, cy, xs[j], ys[i], eps)
    w0 = w0 / norm
    w1 = w1 / norm
    w2 = w2 / norm
    if fstride == _BARYCENTRIC:  # identity corners: w0 * 1 + w1 * 0 + w2 * 0 = w0, and so on
        out[row * 3] = w0
        out[row * 3 + 1] = w1
        out[row * 3 + 2] = w2
        return
    c0, c1, c2 = _feature_offsets(fstride, dims, p0, p1, p2)
    for d in range(dims):
        out[row * dims + d] = w0 * feats[c0 + d] + w1 * feats[c1 + d] + w2 * feats[c2 + d]


@parallel.chunked
@wp.kernel
def _interpolate(
    vim: wp.array(dtype=Any),
    feats: wp.array(dtype=Any),
    corner: wp.array(dtype=wp.int32),
    points: int,
    dims: int,
    fstride: int,
    fidx: wp.array(dtype=wp.int32),
    xs: wp.array(dtype=Any),
    ys: wp.array(dtype=Any),
    eps: Any,
    face_idx: wp.array(dtype=wp.int64),
    soft: wp.array(dtype=Any),
    out: wp.array(dtype=Any),
    covered: wp.array(dtype=wp.int64),
    count: wp.array(dtype=wp.int32),
    window: wp.array(dtype=wp.int32),
    items: int,
    chunk: int,
):
    """Per pixel of the window (items x window rows x window columns, ``_window_pixel``): face index (-1
    for background), soft mask 1 if covered (else 0 for now) and the features of the winning face
    (``out`` comes zeroed). With ``covered`` not empty (sequential CPU launches only) the covered pixels
    are also listed there, in increasing order, ``count[0]`` of them."""
    thread = wp.tid()
    start = thread * chunk
    # the next pixel (flat index, image, row, column), carried from pixel to pixel: integer divisions once
    # per window row instead of for every pixel
    p0, b0, i0, j0 = _window_pixel(start, window, ys.shape[0], xs.shape[0])
    nxt = wp.int32(p0)
    b = wp.int32(b0)
    i = wp.int32(i0)
    j = wp.int32(j0)
    right = window[3]
    for t in range(start, wp.min(start + chunk, items)):
        if j == right:  # past the row's last window pixel: the next row's (or image's) first
            nxt, b, i, j = _window_pixel(t, window, ys.shape[0], xs.shape[0])
        p = nxt
        column = j
        nxt = nxt + 1
        j = j + 1
        f = fidx[p]
        if _is_background(fidx, p, f):
            face_idx[p] = wp.int64(-1)
            soft[p] = type(eps)(0.0)
            continue
        face_idx[p] = wp.int64(f)
        soft[p] = type(eps)(1.0)
        if covered.shape[0] > 0:
            covered[wp.atomic_add(count, 0, 1)] = wp.int64(p)
        if dims > 0:  # 0 for a packed call (``_interpolate_packed`` writes the features)
            _write_features(vim, feats, corner, points, dims, fstride, f, b, i, column, xs, ys, eps, out, p)


@parallel.chunked
@wp.kernel
def _depth_fill(
    vim: wp.array(dtype=Any),
    values: wp.array(dtype=Any),
    corner: wp.array(dtype=wp.int32),
    points: int,
    fidx: wp.array(dtype=wp.int32),
    xs: wp.array(dtype=Any),
    ys: wp.array(dtype=Any),
    eps: Any,
    empty: wp.array(dtype=Any),
    zbuf: wp.array(dtype=Any),
    zscale: Any,
    out: wp.array(dtype=Any),
    items: int,
    chunk: int,
):
    """Per pixel: the winning face's corner values interpolated, ``empty[b]`` where no face covers it
    (``fidx`` becomes -1 there). ``zscale`` not 0: the values are the depth test's z, so the pixel gets
    ``zscale`` times the winner's z from ``zbuf`` (the same sum of the same products) instead."""
    thread = wp.tid()
    for p in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        f = fidx[p]
        if _is_background(fidx, p, f):
            out[p] = empty[p // (ys.shape[0] * xs.shape[0])]
            continue
        if zscale != type(eps)(0.0):  # the values are the z of the depth test: the winner's z, scaled
            out[p] = zscale * zbuf[p]
            continue
        b, i, j = _pixel(p, ys.shape[0], xs.shape[0])
        _write_features(vim, values, corner, points, 1, _PER_POINT, f, b, i, j, xs, ys, eps, out, p)


@parallel.chunked
@wp.kernel
def _interpolate_packed(
    vim: wp.array(dtype=Any),
    feats: wp.array(dtype=Any),
    corner: wp.array(dtype=wp.int32),
    points: int,
    dims: int,
    fstride: int,
    fidx: wp.array(dtype=wp.int32),
    flat: wp.array(dtype=wp.int64),
    xs: wp.array(dtype=Any),
    ys: wp.array(dtype=Any),
    eps: Any,
    out: wp.array(dtype=Any),
    items: int,
    chunk: int,
):
    """Per covered pixel ``flat[k]``: the features of its face, in row k of ``out``."""
    thread = wp.tid()
    b = wp.int32(0)
    i = wp.int32(0)
    row_start = wp.int32(-xs.shape[0])
    for k in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        p = int(flat[k])
        f = fidx[p]
        b, i, j, row_start = _carried_pixel(p, b, i, row_start, ys.shape[0], xs.shape[0])
        _write_features(vim, feats, corner, points, dims, fstride, f, b, i, j, xs, ys, eps, out, k)


@wp.func
def _grown_box(
    vim: wp.array(dtype=Any),
    p0: int,
    p1: int,
    p2: int,
    margin: Any,
    xs: wp.array(dtype=Any),
    ys_up: wp.array(dtype=Any),
    x_scale: Any,
    y_scale: Any,
):
    """Pixels [top, bottom) x [left, right) whose centres lie in the box of the face with corners at
    points p0, p1, p2, grown by ``margin``."""
    ax, ay, bx, by, cx, cy = _corners_xy(vim, p0, p1, p2)
    x_inv = type(x_scale)(1.0) / x_scale
    y_inv = type(y_scale)(1.0) / y_scale
    left = _first_at_least(xs, wp.min(ax, wp.min(bx, cx)) - margin, x_inv)
    right = _first_at_least(xs, wp.max(ax, wp.max(bx, cx)) + margin, x_inv)
    k0 = _first_at_least(ys_up, wp.min(ay, wp.min(by, cy)) - margin, y_inv)
    k1 = _first_at_least(ys_up, wp.max(ay, wp.max(by, cy)) + margin, y_inv)
    height = ys_up.shape[0]
    return height - k1, height - k0, left, right


@parallel.chunked
@wp.kernel
def _soft_boxes(
    vim: wp.array(dtype=Any),
    faces: int,
    corner: wp.array(dtype=wp.int32),
    points: int,
    margin: Any,
    xs: wp.array(dtype=Any),
    ys_up: wp.array(dtype=Any),
    x_scale: Any,
    y_scale: Any,
    corners: wp.array(dtype=wp.int32),
    window: wp.array(dtype=wp.int32),
    boxes: wp.array(dtype=wp.int32),
    items: int,
    chunk: int,
):
    """Per face: its grown pixel box into ``boxes`` (top, bottom, left, right; empty as top = bottom),
    +-1 at the box's corners in a (B, H + 1, W + 1) difference array, and the box into ``window`` (the
    union of the boxes of all faces)."""
    thread = wp.tid()
    for t in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        b = t // faces
        p0, p1, p2 = _corner_points(corner, points, b, t - b * faces)
        top, bottom, left, right = _grown_box(vim, p0, p1, p2, margin, xs, ys_up, x_scale, y_scale)
        if top >= bottom or left >= right:
            top = 0
            bottom = 0
        boxes[t * 4] = top
        boxes[t * 4 + 1] = bottom
        boxes[t * 4 + 2] = left
        boxes[t * 4 + 3] = right
        if top >= bottom:
            continue
        stride = xs.shape[0] + 1
        base = b * (ys_up.shape[0] + 1) * stride
        wp.atomic_add(corners, base + top * stride + left, 1)
        wp.atomic_add(corners, base + top * stride + right, -1)
        wp.atomic_add(corners, base + bottom * stride + left, -1)
        wp.atomic_add(corners, base + bottom * stride + right, 1)
        wp.atomic_min(window, 0, top)
        wp.atomic_max(window, 1, bottom)
        wp.atomic_min(window, 2, left)
        wp.atomic_max(window, 3, right)


@wp.kernel
def _column_prefix(
    corners: wp.array(dtype=wp.int32), height: int, width: int, block: int, window: wp.array(dtype=wp.int32)
):
    """Per image and block of ``block`` window columns: running sums down the window rows of the
    (B, H + 1, W + 1) difference array (row-major walk, for caches). Outside the window it is zero."""
    t = wp.tid()
    columns = window[3] - window[2]
    blocks = (columns + block - 1) // block
    b = t // blocks
    first = window[2] + (t - b * blocks) * block
    last = wp.min(first + block, window[3])
    stride = width + 1
    k = b * (height + 1) * stride + window[0] * stride
    for _r in range(window[0] + 1, window[1]):
        for c in range(first, last):
            corners[k + stride + c] = corners[k + stride + c] + corners[k + c]
        k = k + stride


@wp.kernel
def _row_counts(
    corners: wp.array(dtype=wp.int32),
    fidx: wp.array(dtype=wp.int32),
    height: int,
    width: int,
    cap: int,
    window: wp.array(dtype=wp.int32),
    count: wp.array(dtype=wp.int32),
    links: int,
    row_free: wp.array(dtype=wp.int32),
    row_total: wp.array(dtype=wp.int64),
):
    """Per image row of the window: the row's total candidate count (at most ``cap`` per uncovered
    pixel) and, in ``row_free`` (W + 1 per image row), either the running count of uncovered pixels from
    the window's left column or, with ``links``, a link per column: itself if uncovered, else the next
    column (the sequential fill's "next open pixel" forest; the window's right column links to itself).
    Without ``links`` ``count`` gets each pixel's candidate count; with ``links`` it is zeroed."""
    t = wp.tid()
    rows = window[1] - window[0]
    b = t // rows
    i = window[0] + t - b * rows
    src = (b * (height + 1) + i) * (width + 1)
    row = (b * height + i) * width
    free_row = (b * height + i) * (width + 1)
    acc = wp.int32(0)
    free = wp.int32(0)
    total = wp.int64(0)
    if links == 0:
        row_free[free_row + window[2]] = 0
    else:
        row_free[free_row + window[3]] = window[3]
    for j in range(window[2], window[3]):
        p = row + j
        acc = acc + corners[src + j]
        c = wp.int32(0)
        open = fidx[p] < 0
        if open:
            c = wp.min(acc, cap)
        total = total + wp.int64(c)
        if links == 0:
            count[p] = c
            if open:
                free = free + 1
            row_free[free_row + j + 1] = free
        else:
            count[p] = 0
            row_free[free_row + j] = wp.where(open, j, j + 1)
    row_total[b * height + i] = total


@wp.func
def _next_open(links: wp.array(dtype=wp.int32), base: int, j: int):
    """The first open column >= j of a row's link forest (path halving keeps later searches short)."""
    while links[base + j] != j:
        up = links[base + links[base + j]]
        links[base + j] = up
        j = up
    return j


@wp.kernel
def _row_starts(
    count: wp.array(dtype=wp.int32),
    row_start: wp.array(dtype=wp.int64),
    height: int,
    width: int,
    window: wp.array(dtype=wp.int32),
    start: wp.array(dtype=wp.int32),
):
    """Per image row of the window: where each pixel's list starts; resets ``count`` for the fill."""
    t = wp.tid()
    rows = window[1] - window[0]
    b = t // rows
    i = window[0] + t - b * rows
    acc = wp.int32(row_start[b * height + i])
    row = (b * height + i) * width
    for j in range(window[2], window[3]):
        p = row + j
        start[p] = acc
        acc = acc + count[p]
        count[p] = 0


@wp.kernel
def _soft_fill(
    boxes: wp.array(dtype=wp.int32),
    faces: int,
    height: int,
    width: int,
    fidx: wp.array(dtype=wp.int32),
    row_free: wp.array(dtype=wp.int32),
    start: wp.array(dtype=wp.int32),
    cap: int,
    count: wp.array(dtype=wp.int32),
    lists: wp.array(dtype=wp.int32),
):
    """Per face: append its index to the lists of the uncovered pixels of its grown box (any thread
    order: ``_soft_forward`` sorts the lists). ``count`` ends as the number of faces that tried (kept:
    ``min(count, cap)``); ``row_free`` holds the running uncovered counts of ``_row_counts``."""
    t = wp.tid()
    top = boxes[t * 4]
    bottom = boxes[t * 4 + 1]
    left = boxes[t * 4 + 2]
    right = boxes[t * 4 + 3]
    b = t // faces
    for i in range(top, bottom):
        row = (b * height + i) * width
        free_row = (b * height + i) * (width + 1)
        todo = row_free[free_row + right] - row_free[free_row + left]  # uncovered pixels to visit
        j = left
        while todo > 0:
            p = row + j
            if fidx[p] < 0:
                todo = todo - 1
                slot = wp.atomic_add(count, p, 1)
                if slot < cap:
                    lists[start[p] + slot] = t - b * faces
            j = j + 1


@wp.func
def _cell(i: int, j: int, kind: int):
    """A soft-mask stream entry: the pixel's row and column and the distance kind (0-5, ``_soft_dist2``)
    in one int32 (rows < 2**13, columns < 2**15)."""
    return ((i << 15) | j) << 3 | kind


@parallel.chunked
@wp.kernel
def _soft_stream(
    vim: wp.array(dtype=Any),
    faces: int,
    corner: wp.array(dtype=wp.int32),
    points: int,
    boxes: wp.array(dtype=wp.int32),
    xs: wp.array(dtype=Any),
    ys: wp.array(dtype=Any),
    row_free: wp.array(dtype=wp.int32),
    cap: int,
    count: wp.array(dtype=wp.int32),
    sigmainv: Any,
    multiplier: Any,
    face_end: wp.array(dtype=wp.int32),
    cells: wp.array(dtype=wp.int32),
    probs: wp.array(dtype=Any),
    soft: wp.array(dtype=Any),
    zeros: wp.array(dtype=Any),
    touched: wp.array(dtype=wp.int32),
    items: int,
    chunk: int,
):
    """The soft forward face by face, for a sequential launch (CPU): faces run in index order, so
    each uncovered pixel gets the first ``cap`` (= knum) faces whose grown box holds it, as in Kaolin.

    Face t visits the open pixels of its box (uncovered, fewer than ``cap`` faces yet) through each row's
    link forest (``_row_counts``; a pixel that reaches ``cap`` links past itself), computes the
    probability, and appends ``_cell(i, j, kind)`` and the probability to the stream: its entries are
    ``[face_end[t - 1], face_end[t])`` (from 0 for t = 0). Each pixel's factor ``1 - prob`` is multiplied
    into ``soft`` in face order, as the twin multiplies them, except exact zeros, which are counted in
    ``zeros`` instead (``_soft_finish`` puts them back). A pixel's first face sets both (no pass over
    the window first) and lists the pixel in ``touched`` (its count in the last element), for
    ``_soft_finish``.
    """
    thread = wp.tid()
    for t in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        top = boxes[t * 4]
        bottom = boxes[t * 4 + 1]
        left = boxes[t * 4 + 2]
        right = boxes[t * 4 + 3]
        b = t // faces
        width = xs.shape[0]
        height = ys.shape[0]
        p0, p1, p2 = _corner_points(corner, points, b, t - b * faces)
        ax, ay, bx, by, cx, cy = _corners_xy(vim, p0, p1, p2)
        one = type(sigmainv)(1.0)
        zero = type(sigmainv)(0.0)
        scale = sigmainv / multiplier / multiplier  # exp(-sigmainv d2) with d2 in multiplied units
        a = wp.int32(0)
        if t > 0:
            a = face_end[t - 1]
        for i in range(top, bottom):
            row = (b * height + i) * width
            free_row = (b * height + i) * (width + 1)
            y0 = ys[i]
            j = _next_open(row_free, free_row, left)
            while j < right:
                p = row + j
                slot = count[p] + 1
                count[p] = slot
                d2, kind = _soft_dist2(xs[j], y0, ax, ay, bx, by, cx, cy)
                cells[a] = _cell(i, j, kind)
                prob = _soft_exp(-(scale * d2))
                probs[a] = prob
                a = a + 1
                q = one - prob
                if slot == 1:  # the pixel's first face
                    touched[wp.atomic_add(touched, touched.shape[0] - 1, 1)] = p
                    zeros[p] = wp.where(q == zero, one, zero)
                    soft[p] = wp.where(q == zero, one, q)
                elif q == zero:
                    zeros[p] = zeros[p] + one
                else:
                    soft[p] = soft[p] * q
                if slot >= cap:
                    row_free[free_row + j] = j + 1
                j = _next_open(row_free, free_row, j + 1)
        face_end[t] = a


# ------------------------------------------------- the soft stream in SIMD lanes (CPU float32)
# ``_soft_stream`` with the per-entry arithmetic (the six distances, the nearest, the exp) 8 entries at a
# time (``warp_kernels.lanes``), and the walk itself in native code: 0.77 of the generic kernel's time in
# the benchmark step. A face walks the open pixels of its box as the generic kernel does (counts, the cap,
# the link forest), recording up to ``BUF`` entries; then their probabilities run in lanes (the remainder
# one by one, in the same operations), and the entries are written and multiplied into the soft mask in
# the walk's order. A face visits a pixel at most once, so computing its probabilities after the walk
# changes nothing; the products per pixel stay in face order, and the values equal the generic kernel's
# bit for bit (same operations, no FMA contraction, the same exp: ``_soft_exp``).
_SOFT_SIMD = (
    r"""
#if !defined(__CUDA_ARCH__)
"""
    + lanes.CPU_LANES
    + r"""
const int width = xs.shape[0];
const int height = ys.shape[0];
const float scale = sigmainv / multiplier / multiplier;  // exp(-sigmainv d2), d2 in multiplied units
const int last = touched.shape[0] - 1;
int* links = row_free.data;
auto next_open = [&](int base, int j) -> int {  // _next_open
    while (links[base + j] != j) {
        const int up = links[base + links[base + j]];
        links[base + j] = up;
        j = up;
    }
    return j;
};
auto edge = [&](auto x0, auto y0, float x1, float y1, float x2, float y2) {  // _edge_dist2, lanes or one
    const float ex = x2 - x1, ey = y2 - y1;
    const auto along = (x0 - x1) * ex + (y0 - y1) * ey;
    const float down = ey * ey + ex * ex + 1e-7f;
    const auto up = ey * x0 - ex * y0 + (x2 * y1 - x1 * y2);
    const auto inside = (along >= 0.0f) & (along <= ex * ex + ey * ey);
    if constexpr (sizeof(x0) == sizeof(float))
        return inside ? up * up * (1.0f / down) : 1e30f;
    else
        return pick(inside, up * up * (1.0f / down), (v8f)(1e30f));
};
constexpr int BUF = 64;
int entry_pixel[BUF], entry_cell[BUF], entry_kind[BUF];
bool entry_first[BUF];
float entry_x[BUF], entry_y[BUF], entry_prob[BUF];
for (int t = start; t < end; ++t) {
    const int b = t / faces;
    const int f = t - b * faces;
    const int p0 = b * points + corner.data[f * 3];
    const int p1 = b * points + corner.data[f * 3 + 1];
    const int p2 = b * points + corner.data[f * 3 + 2];
    const float ax = vim.data[p0 * 2], ay = vim.data[p0 * 2 + 1];
    const float bx = vim.data[p1 * 2], by = vim.data[p1 * 2 + 1];
    const float cx = vim.data[p2 * 2], cy = vim.data[p2 * 2 + 1];
    int a = t > 0 ? face_end.data[t - 1] : 0;
    int n = 0;
    auto nearest = [&](auto x0, auto y0, auto& kind) {  // _soft_dist2 in lanes or one: d2, and its kind
        auto best = (x0 - ax) * (x0 - ax) + (y0 - ay) * (y0 - ay);
        kind = 3;  // vertices 0-2 -> kinds 3-5, edges -> 0-2
        auto closer = [&](auto d, int id) {
            const auto c = d < best;
            if constexpr (sizeof(d) == sizeof(float)) {
                best = c ? d : best;
                kind = c ? id : kind;
            } else {
                best = pick(c, d, best);
                kind = pick_int(c, (v8i)(id), kind);
            }
        };
        closer((x0 - bx) * (x0 - bx) + (y0 - by) * (y0 - by), 4);
        closer((x0 - cx) * (x0 - cx) + (y0 - cy) * (y0 - cy), 5);
        closer(edge(x0, y0, ax, ay, bx, by), 0);
        closer(edge(x0, y0, bx, by, cx, cy), 1);
        closer(edge(x0, y0, cx, cy, ax, ay), 2);
        return best;
    };
    auto flush = [&]() {  // the n recorded entries: probabilities, then stream and soft mask in order
        int k = 0;
        for (; k + 8 <= n; k += 8) {
            v8f x0, y0;
            for (int l = 0; l < 8; ++l) {
                x0[l] = entry_x[k + l];
                y0[l] = entry_y[k + l];
            }
            v8i kind;
            const v8f prob = vexp(-(scale * nearest(x0, y0, kind)));
            for (int l = 0; l < 8; ++l) {
                entry_prob[k + l] = prob[l];
                entry_kind[k + l] = kind[l];
            }
        }
        for (; k < n; ++k) {  // the remainder, in the same operations
            int kind;
            entry_prob[k] = cephes_exp(-(scale * nearest(entry_x[k], entry_y[k], kind)));
            entry_kind[k] = kind;
        }
        for (k = 0; k < n; ++k) {  // as _soft_stream: the entry, then the pixel's factor 1 - prob
            const int p = entry_pixel[k];
            const float prob = entry_prob[k];
            cells.data[a] = entry_cell[k] | entry_kind[k];
            probs.data[a] = prob;
            ++a;
            const float q = 1.0f - prob;
            if (entry_first[k]) {
                touched.data[touched.data[last]++] = p;
                zeros.data[p] = q == 0.0f ? 1.0f : 0.0f;
                soft.data[p] = q == 0.0f ? 1.0f : q;
            } else if (q == 0.0f) {
                zeros.data[p] = zeros.data[p] + 1.0f;
            } else {
                soft.data[p] = soft.data[p] * q;
            }
        }
        n = 0;
    };
    const int top = boxes.data[t * 4], bottom = boxes.data[t * 4 + 1];
    const int left = boxes.data[t * 4 + 2], right = boxes.data[t * 4 + 3];
    for (int i = top; i < bottom; ++i) {
        const int row = (b * height + i) * width;
        const int free_row = (b * height + i) * (width + 1);
        for (int j = next_open(free_row, left); j < right; j = next_open(free_row, j + 1)) {
            const int p = row + j;
            const int slot = count.data[p] + 1;
            count.data[p] = slot;
            if (slot >= cap)
                links[free_row + j] = j + 1;
            entry_pixel[n] = p;
            entry_cell[n] = ((i << 15) | j) << 3;  // _cell without the kind
            entry_first[n] = slot == 1;
            entry_x[n] = xs.data[j];
            entry_y[n] = ys.data[i];
            if (++n == BUF)
                flush();
        }
    }
    flush();
    face_end.data[t] = a;
}
#endif
"""
)


@wp.func_native(_SOFT_SIMD)
def _soft_lanes(
    vim: wp.array(dtype=wp.float32),
    faces: int,
    corner: wp.array(dtype=wp.int32),
    points: int,
    boxes: wp.array(dtype=wp.int32),
    xs: wp.array(dtype=wp.float32),
    ys: wp.array(dtype=wp.float32),
    row_free: wp.array(dtype=wp.int32),
    cap: int,
    count: wp.array(dtype=wp.int32),
    sigmainv: wp.float32,
    multiplier: wp.float32,
    face_end: wp.array(dtype=wp.int32),
    cells: wp.array(dtype=wp.int32),
    probs: wp.array(dtype=wp.float32),
    soft: wp.array(dtype=wp.float32),
    zeros: wp.array(dtype=wp.float32),
    touched: wp.array(dtype=wp.int32),
    start: int,
    end: int,
): ...


@parallel.chunked
@wp.kernel
def _soft_stream_simd(
    vim: wp.array(dtype=wp.float32),
    faces: int,
    corner: wp.array(dtype=wp.int32),
    points: int,
    boxes: wp.array(dtype=wp.int32),
    xs: wp.array(dtype=wp.float32),
    ys: wp.array(dtype=wp.float32),
    row_free: wp.array(dtype=wp.int32),
    cap: int,
    count: wp.array(dtype=wp.int32),
    sigmainv: wp.float32,
    multiplier: wp.float32,
    face_end: wp.array(dtype=wp.int32),
    cells: wp.array(dtype=wp.int32),
    probs: wp.array(dtype=wp.float32),
    soft: wp.array(dtype=wp.float32),
    zeros: wp.array(dtype=wp.float32),
    touched: wp.array(dtype=wp.int32),
    items: int,
    chunk: int,
):
    """``_soft_stream`` for float32 on CPU, each thread's faces through ``_SOFT_SIMD`` (the same
    arguments and results; the CPU only: its CUDA build is empty and never launched)."""
    thread = wp.tid()
    end = wp.min(thread * chunk + chunk, items)
    _soft_lanes(
        vim, faces, corner, points, boxes, xs, ys, row_free, cap, count, sigmainv, multiplier, face_end,
        cells, probs, soft, zeros, touched, thread * chunk, end,
    )  # fmt: skip


@parallel.chunked
@wp.kernel
def _soft_finish(
    touched: wp.array(dtype=wp.int32),
    soft: wp.array(dtype=Any),
    zeros: wp.array(dtype=Any),
    items: int,
    chunk: int,
):
    """Per pixel that ``_soft_stream`` touched: soft = 1 - (the product of all factors 1 - prob), and in
    ``zeros`` what the backward needs of it: the product of the nonzero factors P when no factor is 0,
    -P when one is, 0 when more are (then no factor has a gradient)."""
    thread = wp.tid()
    for item in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        p = touched[item]
        one = type(soft[p])(1.0)
        nonzero = soft[p]
        z = zeros[p]
        product = type(soft[p])(0.0)
        kept = type(soft[p])(0.0)
        if z == type(z)(0.0):
            product = nonzero
            kept = nonzero
        elif z == one:
            kept = -nonzero
        zeros[p] = kept
        soft[p] = one - product


@wp.kernel
def _soft_forward(
    vim: wp.array(dtype=Any),
    corner: wp.array(dtype=wp.int32),
    points: int,
    start: wp.array(dtype=wp.int32),
    count: wp.array(dtype=wp.int32),
    cap: int,
    window: wp.array(dtype=wp.int32),
    lists: wp.array(dtype=wp.int32),
    xs: wp.array(dtype=Any),
    ys: wp.array(dtype=Any),
    sigmainv: Any,
    multiplier: Any,
    knum: int,
    probs: wp.array(dtype=Any),
    soft: wp.array(dtype=Any),
):
    """Per window pixel with candidates: sort them by face index, keep ``knum``, soft mask and per-face
    probabilities; the kept faces become ``_entry(face, kind)``."""
    p, b, i, j = _window_pixel(wp.tid(), window, ys.shape[0], xs.shape[0])
    n = wp.min(count[p], cap)
    if n <= 0:
        return
    first = start[p]
    end = first + n
    # insertion sort: short lists (already in index order when the fill ran in order)
    for a in range(first + 1, end):
        key = lists[a]
        c = a - 1
        while c >= first:
            if lists[c] <= key:
                break
            lists[c + 1] = lists[c]
            c = c - 1
        lists[c + 1] = key
    x0 = xs[j]
    y0 = ys[i]
    one = type(sigmainv)(1.0)
    scale = sigmainv / multiplier / multiplier  # exp(-sigmainv d2) with d2 in multiplied units
    allprob = one
    for a in range(first, first + wp.min(n, knum)):
        p0, p1, p2 = _corner_points(corner, points, b, lists[a])
        ax, ay, bx, by, cx, cy = _corners_xy(vim, p0, p1, p2)
        d2, kind = _soft_dist2(x0, y0, ax, ay, bx, by, cx, cy)
        lists[a] = _entry(lists[a], kind)
        prob = _soft_exp(-(scale * d2))
        probs[a] = prob
        allprob = allprob * (one - prob)
    soft[p] = one - allprob


@wp.kernel
def _soft_backward(
    vim: wp.array(dtype=Any),
    corner: wp.array(dtype=wp.int32),
    points: int,
    start: wp.array(dtype=wp.int32),
    count: wp.array(dtype=wp.int32),
    cap: int,
    window: wp.array(dtype=wp.int32),
    lists: wp.array(dtype=wp.int32),
    probs: wp.array(dtype=Any),
    xs: wp.array(dtype=Any),
    ys: wp.array(dtype=Any),
    sigmainv: Any,
    multiplier: Any,
    knum: int,
    grad_soft: wp.array(dtype=Any),
    grad_vi: wp.array(dtype=Any),
):
    """Per window pixel with candidates: d soft / d face_vertices_image through each kept candidate's
    distance (the lists of ``_soft_forward``)."""
    p, b, i, j = _window_pixel(wp.tid(), window, ys.shape[0], xs.shape[0])
    first = start[p]
    keep = wp.min(wp.min(count[p], cap), knum)
    if keep <= 0:
        return
    g_out = grad_soft[p]
    zero = type(sigmainv)(0.0)
    if g_out == zero:
        return
    one = type(sigmainv)(1.0)
    two = type(sigmainv)(2.0)
    # d soft / d prob_k = prod_{l != k} (1 - prob_l), exact also when one factor is 0
    nonzero_prod = one
    zeros = wp.int32(0)
    for a in range(first, first + keep):
        q = one - probs[a]
        if q == zero:
            zeros = zeros + 1
        else:
            nonzero_prod = nonzero_prod * q
    if zeros > 1:
        return
    x0 = xs[j]
    y0 = ys[i]
    scale = -g_out * (sigmainv / multiplier)  # NDC gradient = multiplier * multiplied units, as the stream
    for a in range(first, first + keep):
        prob = probs[a]
        q = one - prob
        loo = zero
        if zeros == 0:
            loo = nonzero_prod / q
        elif q == zero:
            loo = nonzero_prod
        coef = scale * loo * prob
        if coef == zero:
            continue
        entry = lists[a]
        face = _entry_face(entry) * 3
        kind = _entry_kind(entry)
        if kind >= 3:
            k = (b * points + corner[face + kind - 3]) * 2
            wp.atomic_add(grad_vi, k, coef * two * (vim[k] - x0))
            wp.atomic_add(grad_vi, k + 1, coef * two * (vim[k + 1] - y0))
        else:
            k1 = (b * points + corner[face + kind]) * 2
            k2 = (b * points + corner[face + (kind + 1) % 3]) * 2
            h1x, h1y, h2x, h2y = _edge_dist2_grad(x0, y0, vim[k1], vim[k1 + 1], vim[k2], vim[k2 + 1], coef)
            wp.atomic_add(grad_vi, k1, h1x)
            wp.atomic_add(grad_vi, k1 + 1, h1y)
            wp.atomic_add(grad_vi, k2, h2x)
            wp.atomic_add(grad_vi, k2 + 1, h2y)


@wp.func
def _pick(r: int, a: Any, b: Any, c: Any):
    """a, b or c for r = 0, 1, 2, without a branch."""
    return wp.where(r == 0, a, wp.where(r == 1, b, c))


@parallel.chunked
@wp.kernel
def _soft_stream_backward(
    vim: wp.array(dtype=Any),
    faces: int,
    corner: wp.array(dtype=wp.int32),
    points: int,
    face_end: wp.array(dtype=wp.int32),
    cells: wp.array(dtype=wp.int32),
    probs: wp.array(dtype=Any),
    xs: wp.array(dtype=Any),
    ys: wp.array(dtype=Any),
    sigmainv: Any,
    multiplier: Any,
    products: wp.array(dtype=Any),
    grad_soft: wp.array(dtype=Any),
    grad_vi: wp.array(dtype=Any),
    items: int,
    chunk: int,
):
    """Per face: d soft / d face_vertices_image through the face's stream entries (``_soft_stream``),
    summed in registers and added to the six coordinates of the face's corner points once. ``products``
    is what ``_soft_finish`` left in ``zeros``: d soft / d prob = P / (1 - prob) when P > 0; -P for the
    zero factor and 0 for the others when P < 0; 0 when P = 0.

    One branch on the distance kind (vertex or edge: cheaper than computing both); within each, the
    corners are picked without branches."""
    thread = wp.tid()
    ndc_scale = sigmainv / multiplier  # NDC gradient = multiplier * multiplied units (not per entry)
    for t in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        first = wp.int32(0)
        if t > 0:
            first = face_end[t - 1]
        last = face_end[t]
        if first == last:
            continue
        width = xs.shape[0]
        b = t // faces
        base = b * ys.shape[0] * width
        p0, p1, p2 = _corner_points(corner, points, b, t - b * faces)
        ax, ay, bx, by, cx, cy = _corners_xy(vim, p0, p1, p2)
        zero = type(sigmainv)(0.0)
        one = type(sigmainv)(1.0)
        two = type(sigmainv)(2.0)
        gax = zero
        gay = zero
        gbx = zero
        gby = zero
        gcx = zero
        gcy = zero
        for a in range(first, last):
            cell = cells[a]
            kind = cell & 7
            j = (cell >> 3) & 32767
            i = cell >> 18
            p = base + i * width + j
            product = products[p]
            prob = probs[a]
            q = one - prob
            loo = zero
            if product > zero:
                loo = product / q
            elif q == zero:
                loo = -product
            scale = -grad_soft[p] * ndc_scale
            coef = scale * loo * prob
            if coef == zero:
                continue
            x0 = xs[j]
            y0 = ys[i]
            if kind >= 3:
                r = kind - 3
                x1 = _pick(r, ax, bx, cx)
                y1 = _pick(r, ay, by, cy)
                hx = coef * two * (x1 - x0)
                hy = coef * two * (y1 - y0)
                gax += wp.where(r == 0, hx, zero)
                gay += wp.where(r == 0, hy, zero)
                gbx += wp.where(r == 1, hx, zero)
                gby += wp.where(r == 1, hy, zero)
                gcx += wp.where(r == 2, hx, zero)
                gcy += wp.where(r == 2, hy, zero)
            else:
                r = kind
                x1 = _pick(r, ax, bx, cx)
                y1 = _pick(r, ay, by, cy)
                x2 = _pick(r, bx, cx, ax)
                y2 = _pick(r, by, cy, ay)
                h1x, h1y, h2x, h2y = _edge_dist2_grad(x0, y0, x1, y1, x2, y2, coef)
                gax += _pick(r, h1x, zero, h2x)
                gay += _pick(r, h1y, zero, h2y)
                gbx += _pick(r, h2x, h1x, zero)
                gby += _pick(r, h2y, h1y, zero)
                gcx += _pick(r, zero, h2x, h1x)
                gcy += _pick(r, zero, h2y, h1y)
        grad_vi[p0 * 2] = grad_vi[p0 * 2] + gax
        grad_vi[p0 * 2 + 1] = grad_vi[p0 * 2 + 1] + gay
        grad_vi[p1 * 2] = grad_vi[p1 * 2] + gbx
        grad_vi[p1 * 2 + 1] = grad_vi[p1 * 2 + 1] + gby
        grad_vi[p2 * 2] = grad_vi[p2 * 2] + gcx
        grad_vi[p2 * 2 + 1] = grad_vi[p2 * 2 + 1] + gcy


@parallel.chunked
@wp.kernel
def _hard_backward(
    vi: wp.array(dtype=Any),
    vim: wp.array(dtype=Any),
    feats: wp.array(dtype=Any),
    corner: wp.array(dtype=wp.int32),
    points: int,
    dims: int,
    fstride: int,
    fidx: wp.array(dtype=wp.int32),
    flat: wp.array(dtype=wp.int64),
    xs: wp.array(dtype=Any),
    ys: wp.array(dtype=Any),
    multiplier: Any,
    eps: Any,
    grad_out: wp.array(dtype=Any),
    need_features: int,
    grad_vi: wp.array(dtype=Any),
    grad_feats: wp.array(dtype=Any),
    items: int,
    chunk: int,
):
    """Per covered pixel: Kaolin's analytic gradient of the interpolation (NDC units).

    Dense (``flat`` empty): item p is pixel p and reads row p of ``grad_out``; packed: item k is
    pixel ``flat[k]`` and reads row k.
    """
    thread = wp.tid()
    b = wp.int32(0)
    i = wp.int32(0)
    row_start = wp.int32(-xs.shape[0])
    for k in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        p = k
        if flat.shape[0] > 0:
            p = int(flat[k])
        f = fidx[p]
        if f < 0:
            continue
        zero = type(eps)(0.0)
        nonzero = wp.int32(0)
        for d in range(dims):
            if grad_out[k * dims + d] != zero:
                nonzero = 1
        if nonzero == 0:  # e.g. shadow-map texels that no lookup reads
            continue
        b, i, j, row_start = _carried_pixel(p, b, i, row_start, ys.shape[0], xs.shape[0])
        p0, p1, p2 = _corner_points(corner, points, b, f)
        g1 = zero
        g2 = zero
        if fstride == _BARYCENTRIC:  # identity corners: g1 = g . (f1 - f0) = g[1] - g[0], g2 = g[2] - g[0]
            g1 = grad_out[k * 3 + 1] - grad_out[k * 3]
            g2 = grad_out[k * 3 + 2] - grad_out[k * 3]
        else:
            # need_features only with per-point features (not _SHARED)
            c0, c1, c2 = _feature_offsets(fstride, dims, p0, p1, p2)
            if need_features != 0:
                # the forward barycentrics, recomputed (cheaper than storing B*H*W*3 of them)
                ax, ay, bx, by, cx, cy = _corners_xy(vim, p0, p1, p2)
                w0, w1, w2, norm = _crosses(ax, ay, bx, by, cx, cy, xs[j], ys[i], eps)
                w0 = w0 / norm
                w1 = w1 / norm
                w2 = w2 / norm
                for d in range(dims):
                    g = grad_out[k * dims + d]
                    wp.atomic_add(grad_feats, c0 + d, w0 * g)
                    wp.atomic_add(grad_feats, c1 + d, w1 * g)
                    wp.atomic_add(grad_feats, c2 + d, w2 * g)
            for d in range(dims):
                g = grad_out[k * dims + d]
                f0 = feats[c0 + d]
                g1 = g1 + g * (feats[c1 + d] - f0)
                g2 = g2 + g * (feats[c2 + d] - f0)
        if g1 == zero and g2 == zero:
            continue
        ax = vi[p0 * 2]
        ay = vi[p0 * 2 + 1]
        m = vi[p1 * 2] - ax
        r = vi[p1 * 2 + 1] - ay
        n = vi[p2 * 2] - ax
        q = vi[p2 * 2 + 1] - ay
        s = xs[j] / multiplier - ax
        t = ys[i] / multiplier - ay
        k1 = s * q - n * t
        k2 = m * t - s * r
        k3 = m * q - n * r
        if k3 >= zero:
            k3 = k3 + eps
        else:
            k3 = k3 - eps
        inv = type(eps)(1.0) / (k3 * k3)
        # d(w1, w2)/d(m, n, r, q, s, t) with w1 = k1 / k3, w2 = k2 / k3, weighted by g1, g2
        gm = (g1 * (-q * k1) + g2 * (t * k3 - q * k2)) * inv
        gn = (g1 * (r * k1 - t * k3) + g2 * (r * k2)) * inv
        gr = (g1 * (n * k1) + g2 * (n * k2 - s * k3)) * inv
        gq = (g1 * (s * k3 - m * k1) + g2 * (-m * k2)) * inv
        gs = (g1 * q - g2 * r) * k3 * inv
        gt = (g2 * m - g1 * n) * k3 * inv
        wp.atomic_add(grad_vi, p0 * 2, -(gm + gn + gs))
        wp.atomic_add(grad_vi, p0 * 2 + 1, -(gr + gq + gt))
        wp.atomic_add(grad_vi, p1 * 2, gm)
        wp.atomic_add(grad_vi, p1 * 2 + 1, gr)
        wp.atomic_add(grad_vi, p2 * 2, gn)
        wp.atomic_add(grad_vi, p2 * 2 + 1, gq)


parallel.declare_float_overloads(globals())


def pixel_centres(height: int, width: int, multiplier: float, dtype: torch.dtype, device) -> tuple:
    """Kaolin's multiplied pixel centres, computed in float32 like its kernels.

    Returns:
        xs (W,) increasing with the column, ys (H,) decreasing with the row (y up), in ``dtype``.
    """
    return _compute_centres(height, width, float(multiplier), dtype, device)


@functools.lru_cache(maxsize=16)
def _centres(height: int, width: int, multiplier: float, dtype: torch.dtype, device: torch.device) -> tuple:
    """``pixel_centres`` and ys reversed (increasing), kept between calls for the kernels (read-only)."""
    xs, ys = _compute_centres(height, width, multiplier, dtype, device)
    return xs, ys, ys.flip(0).contiguous()


def _compute_centres(height: int, width: int, multiplier: float, dtype: torch.dtype, device) -> tuple:
    m = torch.tensor(multiplier, dtype=torch.float32, device=device)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    rows = torch.arange(height, device=device, dtype=torch.float32)
    xs = (m / width) * (2 * cols + 1 - width)
    ys = (m / height) * (height - 2 * rows - 1)
    return xs.to(dtype), ys.to(dtype)


def _check_sizes(height, width, knum) -> None:
    """height, width and knum must be positive ints (both rasterizer forms' checks)."""
    for name, value in (("height", height), ("width", width), ("knum", knum)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_dibr_inputs(
    height, width, face_vertices_z, face_vertices_image, face_features, face_normals_z, knum
):
    """Validate ``dibr_rasterization`` arguments; raise ValueError naming the argument."""
    _check_sizes(height, width, knum)
    image = face_vertices_image
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[2:] != (3, 2):
        got = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ValueError(f"face_vertices_image must have shape (B, F, 3, 2), got {got}")
    if image.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"face_vertices_image must be float32 or float64, got {image.dtype}")
    batch, faces = image.shape[:2]
    if faces > MAX_FACES:
        raise ValueError(f"face_vertices_image has {faces} faces; at most {MAX_FACES} are supported")
    features = list(face_features) if isinstance(face_features, (list, tuple)) else [face_features]
    if not features:
        raise ValueError("face_features must be a tensor or a non-empty list of tensors, got an empty list")
    named = [("face_vertices_z", face_vertices_z, "(B, F, 3)"), ("face_normals_z", face_normals_z, "(B, F)")]
    named += [("face_features", t, "(B, F, 3, D)") for t in features]
    for name, tensor, text in named:
        if not torch.is_tensor(tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        lead = (batch, faces) if name == "face_normals_z" else (batch, faces, 3)
        if tensor.ndim != text.count(",") + 1 or tuple(tensor.shape[: len(lead)]) != lead:
            raise ValueError(
                f"{name} must have shape {text} with B={batch}, F={faces}, got {tuple(tensor.shape)}"
            )
        if tensor.dtype != image.dtype:
            raise ValueError(
                f"{name} must have the dtype of face_vertices_image ({image.dtype}), got {tensor.dtype}"
            )
        if tensor.device != image.device:
            raise ValueError(
                f"{name} must be on {image.device} like face_vertices_image, got {tensor.device}"
            )


def _wp(t: torch.Tensor) -> torch.Tensor:
    """A kernel argument: the tensor, contiguous (``_Launcher`` hands it to Warp)."""
    return t.contiguous()


class _Launcher:
    """Launches on the tensors' device and, on CUDA, on torch's current stream."""

    def __init__(self, device: torch.device):
        wp.init()  # no-op once initialized; never done at import
        self.torch_device = device

    def __call__(self, kernel, dim, inputs):
        parallel.launch_tensors(kernel, dim, inputs, self.torch_device)


class _Setup(NamedTuple):
    """Per-call constants shared by the kernels (Warp scalars in the inputs' dtype)."""

    xs: torch.Tensor  # (W,) multiplied pixel-centre x per column, increasing
    ys: torch.Tensor  # (H,) multiplied pixel-centre y per row, decreasing (y up)
    ys_up: torch.Tensor  # ys reversed, increasing
    x_scale: Any  # multiplier / W: xs[j] = x_scale * (2j + 1 - W)
    y_scale: Any  # multiplier / H
    eps: Any
    sigmainv: Any
    multiplier: Any
    knum: int
    margin: float  # boxlen * multiplier
    fstride: int | None = None  # of the features: None from their shape, _BARYCENTRIC for the identity


class _Mesh(NamedTuple):
    """A batch slice's geometry as the kernels read it: per point, and each face's corners through
    ``corner``. The per-face form (Kaolin's arguments) is the case of 3 points per face, ``corner`` the
    identity (``_corner_mesh``)."""

    vz: torch.Tensor  # (B, V) depth of each point (the largest interpolated value wins)
    vim: torch.Tensor  # (B, V, 2) NDC position of each point, times the multiplier
    corner: torch.Tensor  # (F*3,) int32 point of each face corner
    fnz: torch.Tensor  # (B, F) facing of each face (negative: not drawn)

    @property
    def faces(self) -> int:
        return self.fnz.shape[1]

    @property
    def points(self) -> int:
        return self.vim.shape[1]


def _hard_search(launch, mesh: _Mesh, c: _Setup):
    """(B*H*W,) int32 winning face per pixel, ``_NO_FACE`` or -1 for background, and the (B*H*W,)
    z-buffer: the winner's interpolated z (unset where no face won, on the sequential path)."""
    vim, batch, faces = mesh.vim, mesh.vim.shape[0], mesh.faces
    pixels = batch * c.ys.shape[0] * c.xs.shape[0]
    sequential = vim.device.type == "cpu" and SEQUENTIAL_CPU
    if sequential:  # mode 2 needs no -inf fill, and -1 is already the background's index
        zbuf = torch.empty((pixels,), dtype=vim.dtype, device=vim.device)
        fidx = torch.full((pixels,), -1, dtype=torch.int32, device=vim.device)
    else:
        zbuf = torch.full((pixels,), -torch.inf, dtype=vim.dtype, device=vim.device)
        fidx = torch.full((pixels,), _NO_FACE, dtype=torch.int32, device=vim.device)
    args = [_wp(vim.view(-1)), _wp(mesh.vz.view(-1)), _wp(mesh.fnz.view(-1)), faces, mesh.corner, mesh.points]
    grid = [_wp(c.xs), _wp(c.ys_up), c.x_scale, c.y_scale, c.eps]
    for mode in (2,) if sequential else (0, 1):
        launch(_hard_pass, batch * faces, [*args, *grid, mode, _wp(zbuf), _wp(fidx)])
    return fidx, zbuf


class _SoftLists(NamedTuple):
    """Candidate lists of the uncovered pixels in the window (the union of the grown boxes)."""

    window: torch.Tensor  # (4,) int32 top, bottom, left, right (half-open), pixels
    pixels: int  # threads over the window: items x window rows x window columns
    start: torch.Tensor  # (B*H*W,) int32 where each window pixel's list starts
    count: torch.Tensor  # (B*H*W,) int32 faces that tried each window pixel (kept: min(count, cap))
    cap: int  # most faces kept per list
    lists: torch.Tensor  # _entry values (face, distance kind)
    probs: torch.Tensor  # the entries' probabilities


class _SoftStream(NamedTuple):
    """The soft mask's entries in face order (``_soft_stream``)."""

    face_end: torch.Tensor  # (B*F,) int32 end of each face's entries
    cells: torch.Tensor  # _cell values (row, column, distance kind)
    probs: torch.Tensor  # the entries' probabilities
    products: torch.Tensor  # (B*H*W,) per uncovered window pixel, for the gradient (_soft_finish)


def _streams(height: int, width: int) -> bool:
    """Whether the CPU soft mask runs face by face (``_soft_stream``): sequential CPU launches, and
    images small enough for ``_cell``; otherwise the per-pixel lists of the CUDA path."""
    return SEQUENTIAL_CPU and height <= 2**13 and width <= 2**15


class _Window(NamedTuple):
    """The union of the grown boxes of a slice's faces (``_soft_boxes``), which holds every pixel that a
    face covers or whose soft mask is not 0."""

    tensor: torch.Tensor  # (4,) int32 top, bottom, left, right (half-open), pixels
    box: tuple[int, int, int, int]  # the same numbers
    corners: torch.Tensor  # (B*(H+1)*(W+1),) int32 difference array of the faces per pixel
    boxes: torch.Tensor  # (B*F*4,) int32 each face's grown box


def _soft_window(launch, mesh: _Mesh, c: _Setup) -> _Window | None:
    """Each face's box grown by the soft mask's margin, drawn into a difference array (the faces per
    pixel, once summed down and across), and their union; None when no face has a box."""
    vim, batch, faces = mesh.vim, mesh.vim.shape[0], mesh.faces
    height, width, device, dtype = c.ys.shape[0], c.xs.shape[0], vim.device, vim.dtype
    margin = parallel.scalar(dtype, c.margin)
    grid = [_wp(vim.view(-1)), faces, mesh.corner, mesh.points, margin, _wp(c.xs), _wp(c.ys_up)]
    grid += [c.x_scale, c.y_scale]
    corners = torch.zeros(batch * (height + 1) * (width + 1), dtype=torch.int32, device=device)
    window = torch.tensor([height, 0, width, 0], dtype=torch.int32, device=device)
    boxes = torch.empty(batch * faces * 4, dtype=torch.int32, device=device)
    launch(_soft_boxes, batch * faces, [*grid, _wp(corners), _wp(window), _wp(boxes)])
    top, bottom, left, right = window.tolist()
    if top >= bottom or left >= right:
        return None
    return _Window(window, (top, bottom, left, right), corners, boxes)


def _soft_mask(launch, mesh: _Mesh, fidx, soft, c: _Setup, win: _Window):
    """Soft mask of the uncovered pixels (``soft`` holds 0 there); returns what the backward needs
    (``_SoftStream`` or ``_SoftLists``).

    Per uncovered pixel, the faces whose grown box holds it are the candidates; only the window, the
    union of all grown boxes of the slice's faces (``_soft_window``), is visited. On CPU (sequential
    launch) faces run in index order, each pixel keeps the first ``knum``, and ``_soft_stream`` computes
    the probabilities face by face (the face's corners stay in registers), into a stream in face order
    (the backward then also runs face by face). On CUDA each pixel lists all its faces, in any order,
    and ``_soft_forward`` sorts the list and computes them pixel by pixel. Both multiply in face order:
    the same soft mask, bit for bit.
    """
    vim, batch, faces = mesh.vim, mesh.vim.shape[0], mesh.faces
    height, width, device, dtype = c.ys.shape[0], c.xs.shape[0], vim.device, vim.dtype
    stream = device.type == "cpu" and _streams(height, width)
    cap = c.knum if stream else 2**31 - 1
    window, corners, boxes = win.tensor, win.corners, win.boxes
    top, bottom, left, right = win.box
    rows, columns = bottom - top, right - left
    w_window = _wp(window)
    blocks = batch * ((columns + _COLUMN_BLOCK - 1) // _COLUMN_BLOCK)
    launch(_column_prefix, blocks, [_wp(corners), height, width, _COLUMN_BLOCK, w_window])
    count = torch.empty_like(fidx)
    row_free = torch.empty(batch * height * (width + 1), dtype=torch.int32, device=device)
    row_total = torch.zeros(batch * height, dtype=torch.int64, device=device)
    products = torch.empty(fidx.numel() if stream else 0, dtype=dtype, device=device)
    w_soft, w_fidx, w_products = _wp(soft), _wp(fidx), _wp(products)
    out = [_wp(count), int(stream), _wp(row_free), _wp(row_total)]
    launch(_row_counts, batch * rows, [_wp(corners), w_fidx, height, width, cap, w_window, *out])
    if stream:
        total = int(row_total.sum())
    else:
        row_start = row_total.cumsum(0) - row_total
        total = int(row_start[-1] + row_total[-1])
    if total >= 2**31:
        raise RuntimeError(f"too many soft-mask candidates ({total}); lower boxlen or the resolution")
    entries = torch.empty(max(total, 1), dtype=torch.int32, device=device)
    probs = torch.empty(entries.shape, dtype=dtype, device=device)
    if stream:
        face_end = torch.empty(batch * faces, dtype=torch.int32, device=device)
        args = [_wp(vim.view(-1)), faces, mesh.corner, mesh.points, _wp(boxes), _wp(c.xs), _wp(c.ys)]
        args += [_wp(row_free), cap]
        args += [_wp(count), c.sigmainv, c.multiplier, _wp(face_end), _wp(entries), _wp(probs)]
        # the pixels the stream reaches (at most the window's) and, last, their count
        touched = torch.empty(batch * rows * columns + 1, dtype=torch.int32, device=device)
        touched[-1] = 0
        kernel = _soft_stream_simd if SIMD_CPU and dtype == torch.float32 else _soft_stream
        launch(kernel, batch * faces, [*args, w_soft, w_products, _wp(touched)])
        launch(_soft_finish, int(touched[-1]), [_wp(touched), w_soft, w_products])
        return _SoftStream(face_end, entries, probs, products)
    start = torch.empty_like(fidx)
    launch(_row_starts, batch * rows, [_wp(count), _wp(row_start), height, width, w_window, _wp(start)])
    args = [_wp(boxes), faces, height, width, w_fidx, _wp(row_free), _wp(start), cap, _wp(count)]
    launch(_soft_fill, batch * faces, [*args, _wp(entries)])
    cand = _SoftLists(window, batch * rows * columns, start, count, cap, entries, probs)
    args = [_wp(vim.view(-1)), mesh.corner, mesh.points, *_list_args(cand), _wp(c.xs), _wp(c.ys)]
    args += [c.sigmainv, c.multiplier]
    launch(_soft_forward, cand.pixels, [*args, c.knum, _wp(probs), w_soft])
    return cand


def _list_args(cand: _SoftLists) -> list:
    return [_wp(cand.start), _wp(cand.count), cand.cap, _wp(cand.window), _wp(cand.lists)]


class _Options(NamedTuple):
    """What a call computes besides the face index."""

    soft: bool  # the DIB-R soft mask on uncovered pixels (else the hard coverage, without gradient)
    packed: bool  # features only at the covered pixels, (N, D) rows in flat-index order
    out: tuple | None = None  # (soft mask, face index) buffers to write into, as ``_check_out`` checks


def _forward_part(launch, mesh: _Mesh, feats, soft, out, face_idx, c: _Setup, o: _Options):
    """Whole forward on a batch slice; writes the (views of the) dense outputs.

    Returns what backward needs, and for a packed call the slice's covered pixels (flat indices local
    to the slice, int64) and their features.
    """
    vim, batch, dims = mesh.vim, mesh.vim.shape[0], feats.shape[-1]
    height, width = c.ys.shape[0], c.xs.shape[0]
    fstride = _feature_stride(feats, c)
    # the soft mask's window first: no face covers a pixel outside it, so the dense pass visits it alone
    win = _soft_window(launch, mesh, c) if o.soft else None
    fidx, _ = _hard_search(launch, mesh, c)
    sequential = vim.device.type == "cpu" and SEQUENTIAL_CPU
    w_vim, w_xs, w_ys = _wp(vim.view(-1)), _wp(c.xs), _wp(c.ys)
    w_feats, soft = _wp(feats.view(-1)), soft.view(-1)
    if win is not None:
        box, window = win.box, win.tensor
    else:  # the whole image, or nothing when no face has a box (then no face covers a pixel either)
        box = (0, 0, 0, 0) if o.soft else (0, height, 0, width)
        window = torch.tensor(box, dtype=torch.int32, device=vim.device)
    items = batch * (box[1] - box[0]) * (box[3] - box[2])
    if items < fidx.numel():  # the background outside the window: fills, not the kernel
        face_idx.fill_(-1)
        soft.zero_()
        if not sequential:  # the atomic passes' background index, made -1 (the kernel does it inside)
            fidx.masked_fill_(fidx == _NO_FACE, -1)
    dense_dims = 0 if o.packed else dims
    args = [w_vim, w_feats, mesh.corner, mesh.points, dense_dims, fstride, _wp(fidx), w_xs, w_ys, c.eps]
    args.append(_wp(face_idx.view(-1)))
    # a sequential (CPU) launch lists the covered pixels in order itself; elsewhere nonzero() does
    listed = o.packed and sequential
    covered = torch.empty(items if listed else 0, dtype=torch.int64, device=vim.device)
    count = torch.zeros(1, dtype=torch.int32, device=vim.device)
    args += [_wp(soft), _wp(out.view(-1)), _wp(covered), _wp(count), _wp(window)]
    launch(_interpolate, items, args)
    flat = packed = None
    if o.packed:
        flat = covered[: int(count)].clone() if listed else (fidx >= 0).nonzero()[:, 0]
        packed = torch.empty((flat.shape[0], dims), dtype=vim.dtype, device=vim.device)
        if flat.shape[0]:
            args = [w_vim, w_feats, mesh.corner, mesh.points, dims, fstride, _wp(fidx), _wp(flat), w_xs, w_ys]
            launch(_interpolate_packed, flat.shape[0], [*args, c.eps, _wp(packed.view(-1))])
    soft_saved = None
    if win is not None:
        soft_saved = _soft_mask(launch, mesh, fidx, soft, c, win)
    return (fidx, flat, soft_saved), packed


def _interpolation_backward(
    launch, vi, vim, corner, feats, fidx, flat, grad_out, grad_vi, grad_feats, c: _Setup
):
    """Kaolin's interpolation gradient (``_hard_backward``) on a batch slice, into grad_vi and (if not
    None) grad_feats (per point, as ``vi`` and the features). ``flat`` None: ``grad_out`` is dense, one
    item per pixel; else the packed rows' pixels."""
    dims = feats.shape[-1]
    if flat is None:
        flat, threads = torch.empty(0, dtype=torch.int64, device=vi.device), fidx.numel()
    else:
        threads = flat.shape[0]
    fstride = _feature_stride(feats, c)
    args = [_wp(vi.view(-1)), _wp(vim.view(-1)), _wp(feats.view(-1)), corner, vi.shape[1], dims, fstride]
    args += [_wp(fidx), _wp(flat)]
    targets = [_wp(grad_vi.view(-1)), _wp((grad_feats if grad_feats is not None else grad_vi).view(-1))]
    args += [
        _wp(c.xs),
        _wp(c.ys),
        c.multiplier,
        c.eps,
        _wp(grad_out.reshape(-1)),
        int(grad_feats is not None),
    ]
    if threads:
        launch(_hard_backward, threads, [*args, *targets])


def _feature_stride(feats: torch.Tensor, c: _Setup) -> int:
    """How the kernels read the corner features: ``c.fstride`` when the call set it (``_BARYCENTRIC``),
    else ``_SHARED`` for one (1, 1, 3, D) set shared by every face and item, ``_PER_POINT`` for (B, V, D)."""
    if c.fstride is not None:
        return c.fstride
    return _SHARED if feats.dim() == 4 else _PER_POINT


def _backward_part(launch, saved, grad_out, grad_soft, grad_vi, grad_feats, c: _Setup):
    """Whole backward on a batch slice, accumulating into (views of) grad_vi and grad_feats.

    ``grad_out`` holds the slice's rows: (B_s, H, W, D) dense or (N_s, D) packed.
    """
    vi, vim, corner, faces, feats, (fidx, flat, soft_saved) = saved
    w_vim, w_xs, w_ys, w_grad_vi = _wp(vim.view(-1)), _wp(c.xs), _wp(c.ys), _wp(grad_vi.view(-1))
    points = vi.shape[1]
    if grad_out is not None:
        _interpolation_backward(launch, vi, vim, corner, feats, fidx, flat, grad_out, grad_vi, grad_feats, c)
    if grad_soft is None or soft_saved is None:
        return
    w_grad_soft = _wp(grad_soft.view(-1))
    if isinstance(soft_saved, _SoftStream):
        s = soft_saved
        args = [
            w_vim,
            faces,
            corner,
            points,
            _wp(s.face_end),
            _wp(s.cells),
            _wp(s.probs),
            w_xs,
            w_ys,
            c.sigmainv,
        ]
        args += [c.multiplier, _wp(s.products), w_grad_soft, w_grad_vi]
        launch(_soft_stream_backward, s.face_end.shape[0], args)
    else:
        cand = soft_saved
        args = [
            w_vim,
            corner,
            points,
            *_list_args(cand),
            _wp(cand.probs),
            w_xs,
            w_ys,
            c.sigmainv,
            c.multiplier,
        ]
        launch(_soft_backward, cand.pixels, [*args, c.knum, w_grad_soft, w_grad_vi])


def _run_parts(device: torch.device, items: list, job) -> list:
    """``[job(launch, item) for item in items]``, one thread per item on CPU (``warp_kernels.parallel``)."""
    launch = _Launcher(device)
    return parallel.run(device, __name__, items, lambda item: job(launch, item))


class _DibrRasterization(torch.autograd.Function):
    """Forward and backward on contiguous batch slices (one per CPU thread; the whole batch on CUDA).

    Inputs in the indexed form (``_Mesh``): ``vz`` (B, V), ``vi`` (B, V, 2), ``corner`` (F*3,) int32, ``fnz``
    (B, F); ``feats`` (B, V, D) per point, or one (1, 1, 3, D) set shared by every face (no gradient)."""

    @staticmethod
    @parallel.serial
    def forward(
        ctx, height, width, vz, vi, corner, feats, fnz, sigmainv, boxlen, knum, multiplier, eps, options
    ):
        dtype, device = vi.dtype, vi.device
        batch = vi.shape[0]
        shared = feats.dim() == 4
        vi, feats = vi.detach().contiguous(), feats.detach().contiguous()
        vz, fnz = vz.detach().contiguous(), fnz.detach().contiguous()
        xs, ys, ys_up = _centres(height, width, float(multiplier), dtype, device)
        scalars = [
            parallel.scalar(dtype, v)
            for v in (multiplier / width, multiplier / height, eps, sigmainv, multiplier)
        ]
        identity = (
            shared
            and feats.shape[-1] == 3
            and torch.equal(feats[0, 0], torch.eye(3, dtype=dtype, device=device))
        )
        fstride = _BARYCENTRIC if identity else None
        setup = _Setup(xs, ys, ys_up, *scalars, knum, boxlen * multiplier, fstride)
        vim = torch.empty_like(vi)  # vi * multiplier, each part its own slice
        if options.out is None:
            soft = torch.empty((batch, height, width), dtype=dtype, device=device)
            face_idx = torch.empty((batch, height, width), dtype=torch.int64, device=device)
        else:
            soft, face_idx = options.out
        dense = (0,) if options.packed else (batch, height, width, feats.shape[-1])
        out = (torch.empty if options.packed else torch.zeros)(dense, dtype=dtype, device=device)

        def job(launch, sl):
            torch.mul(vi[sl], multiplier, out=vim[sl])
            mesh = _Mesh(vz[sl], vim[sl], corner, fnz[sl])
            views = [
                feats if shared else feats[sl],
                soft[sl],
                out if options.packed else out[sl],
                face_idx[sl],
            ]
            return _forward_part(launch, mesh, *views, setup, options)

        slices = parallel.split(device, batch, min_items=1)
        results = _run_parts(device, slices, job)
        ctx.parts = [(sl, saved) for sl, (saved, _) in zip(slices, results)]
        ctx.setup, ctx.shared, ctx.faces = setup, shared, fnz.shape[1]
        ctx.save_for_backward(vi, vim, corner, feats)
        ctx.mark_non_differentiable(face_idx)
        ctx.set_materialize_grads(False)  # an unused output gets None: its backward is skipped
        if not options.packed:
            return out, soft, face_idx
        pixels = height * width
        flat = torch.cat([saved[1] + sl.start * pixels for sl, (saved, _) in zip(slices, results)])
        ctx.rows = [saved[1].shape[0] for _, (saved, _) in zip(slices, results)]
        packed = torch.cat([values for _, values in results])
        ctx.mark_non_differentiable(flat)
        return packed, soft, face_idx, flat

    @staticmethod
    @parallel.serial
    def backward(ctx, grad_out, grad_soft, *_unused):
        vi, vim, corner, feats = ctx.saved_tensors
        need_vi, need_feats = ctx.needs_input_grad[3], ctx.needs_input_grad[5]
        if grad_out is None:
            need_feats = False
        grad_out = grad_out.contiguous() if grad_out is not None and (need_vi or need_feats) else None
        grad_soft = grad_soft.contiguous() if grad_soft is not None and need_vi else None
        nones = [None] * 7
        if grad_out is None and grad_soft is None:
            grad_vi = torch.zeros_like(vi) if need_vi else None
            grad_feats = torch.zeros_like(feats) if need_feats else None
            return None, None, None, grad_vi, None, grad_feats, *nones
        # zeroed by each part (its slice), then accumulated; the kernels always take a grad_vi target
        grad_vi = torch.empty_like(vi)
        grad_feats = torch.empty_like(feats) if need_feats else None
        rows = getattr(ctx, "rows", None)
        ends = torch.tensor(rows).cumsum(0).tolist() if rows is not None else None

        def job(launch, k):
            sl, saved = ctx.parts[k]
            g_out = None
            if grad_out is not None:
                g_out = grad_out[sl] if ends is None else grad_out[ends[k] - rows[k] : ends[k]]
            grads = [g_out, None if grad_soft is None else grad_soft[sl]]
            grads += [None if g is None else g[sl].zero_() for g in (grad_vi, grad_feats)]
            part = (vi[sl], vim[sl], corner, ctx.faces, feats if ctx.shared else feats[sl], saved)
            _backward_part(launch, part, *grads, ctx.setup)

        _run_parts(vi.device, list(range(len(ctx.parts))), job)
        return None, None, None, grad_vi if need_vi else None, None, grad_feats, *nones


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are the same elements of the same storage (e.g. a view of the other)."""
    return (
        a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
        and a.data_ptr() == b.data_ptr()
    )


class _DepthMap(torch.autograd.Function):
    """The hard DIB-R pass alone, interpolating one value per point into a dense map (no soft mask, no
    face index): forward and backward on contiguous batch slices, as ``_DibrRasterization`` (indexed
    form: ``vz`` and ``values`` (B, V), ``vi`` (B, V, 2), ``corner`` (F*3,), ``fnz`` (B, F))."""

    @staticmethod
    @parallel.serial
    def forward(ctx, height, width, vz, vi, corner, values, fnz, empty, multiplier, eps, scale):
        dtype, device = vi.dtype, vi.device
        batch = vi.shape[0]
        # values that are the depth test's z (the same memory): the map is the scaled z-buffer
        from_z = _same_memory(values, vz)
        vi, values = vi.detach().contiguous(), values.detach().contiguous()
        if scale != 1.0:  # the map interpolates the scaled values (here, on one thread: no torch op after)
            values = values * scale
        vz, fnz, empty = vz.detach().contiguous(), fnz.detach().contiguous(), empty.detach().contiguous()
        xs, ys, ys_up = _centres(height, width, float(multiplier), dtype, device)
        scalars = [
            parallel.scalar(dtype, v) for v in (multiplier / width, multiplier / height, eps, 0.0, multiplier)
        ]
        setup = _Setup(xs, ys, ys_up, *scalars, 1, 0.0)
        vim = torch.empty_like(vi)  # vi * multiplier, each part its own slice
        out = torch.empty((batch, height, width), dtype=dtype, device=device)
        points = vi.shape[1]

        def job(launch, sl):
            torch.mul(vi[sl], multiplier, out=vim[sl])
            fidx, zbuf = _hard_search(launch, _Mesh(vz[sl], vim[sl], corner, fnz[sl]), setup)
            args = [
                _wp(vim[sl].view(-1)),
                _wp(values[sl].view(-1)),
                corner,
                points,
                _wp(fidx),
                _wp(xs),
                _wp(ys),
            ]
            args += [setup.eps, _wp(empty[sl]), _wp(zbuf), parallel.scalar(dtype, scale if from_z else 0.0)]
            launch(_depth_fill, fidx.numel(), [*args, _wp(out[sl].view(-1))])
            return fidx

        slices = parallel.split(device, batch, min_items=1)
        ctx.parts = list(zip(slices, _run_parts(device, slices, job)))
        ctx.setup = setup
        ctx.scale = scale
        ctx.save_for_backward(vi, vim, corner, values)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    @parallel.serial
    def backward(ctx, grad_out):
        vi, vim, corner, values = ctx.saved_tensors
        need_vi, need_values = ctx.needs_input_grad[3], ctx.needs_input_grad[5]
        if grad_out is None or not (need_vi or need_values):
            return (None,) * 11
        grad_out = grad_out.contiguous()
        grad_vi = torch.empty_like(vi)  # each part zeroes its slice
        grad_values = torch.empty_like(values) if need_values else None

        def job(launch, k):
            sl, fidx = ctx.parts[k]
            grad_vi[sl].zero_()
            grad_feats = grad_values[sl, ..., None].zero_() if grad_values is not None else None
            args = [vi[sl], vim[sl], corner, values[sl, ..., None], fidx, None, grad_out[sl], grad_vi[sl]]
            _interpolation_backward(launch, *args, grad_feats, ctx.setup)  # dense: one item per pixel

        _run_parts(vi.device, list(range(len(ctx.parts))), job)
        if grad_values is not None and ctx.scale != 1.0:
            grad_values.mul_(ctx.scale)
        grad_vi = grad_vi if need_vi else None
        return None, None, None, grad_vi, None, grad_values, None, None, None, None, None


@functools.lru_cache(maxsize=8)
def _identity_corner(faces: int, device: torch.device) -> torch.Tensor:
    """(F*3,) int32 0, 1, ..., 3F - 1: corner k of face f is point 3f + k (the per-face form; read-only)."""
    return torch.arange(faces * 3, dtype=torch.int32, device=device)


def _corner_mesh(face_vertices_z, face_vertices_image):
    """Kaolin's per-face arguments in the indexed form: 3 points per face (views when contiguous)."""
    batch, faces = face_vertices_image.shape[:2]
    vz = face_vertices_z.reshape(batch, faces * 3)
    vi = face_vertices_image.reshape(batch, faces * 3, 2)
    return vz, vi, _identity_corner(faces, face_vertices_image.device)


def _corner_features(face_features: torch.Tensor) -> torch.Tensor:
    """(B, F, 3, D) corner features as the kernels read them: one (1, 1, 3, D) set when they are broadcast
    over items and faces and need no gradient (e.g. the identity: barycentrics), else (B, 3F, D)."""
    broadcast = face_features.stride(0) == 0 and face_features.stride(1) == 0
    if broadcast and not (torch.is_grad_enabled() and face_features.requires_grad):
        return face_features[:1, :1]
    batch, faces, _, dims = face_features.shape
    return face_features.reshape(batch, faces * 3, dims)


def _check_empty(empty, like: torch.Tensor) -> torch.Tensor:
    """``empty`` (the depth maps' value where no face covers a pixel) as a (B,) tensor of ``like``'s dtype
    and device, B = ``like.shape[0]``; else a ValueError."""
    batch = like.shape[0]
    if not torch.is_tensor(empty) or empty.shape != (batch,):
        raise ValueError(f"empty must be a tensor of shape ({batch},), got {getattr(empty, 'shape', empty)}")
    return empty.to(dtype=like.dtype, device=like.device)


def depth_map(
    height,
    width,
    face_vertices_z,
    face_vertices_image,
    face_values,
    face_normals_z,
    empty,
    multiplier=1000,
    eps=1e-8,
    scale=1.0,
):
    """A dense map of one interpolated value per pixel from DIB-R's hard pass (e.g. a shadow map's depth).

    The same values and gradients as ``dibr_rasterization_packed`` with ``soft_mask=False`` and
    ``scale * face_values[..., None]`` as the features, scattered into a map filled with ``empty``, in
    one op: no soft mask, face index or packed rows are made.

    Args:
        height, width: map size in pixels.
        face_vertices_z: (B, F, 3) depth of each face vertex; the largest interpolated value wins.
        face_vertices_image: (B, F, 3, 2) NDC positions, y up.
        face_values: (B, F, 3) per-corner values to interpolate.
        face_normals_z: (B, F); faces with a negative value are not drawn.
        empty: (B,) value of the pixels no face covers (not scaled).
        multiplier, eps: as ``dibr_rasterization``.
        scale: factor of the interpolated values (e.g. -1 to map depth from DIB-R's ``-depth`` z, with
            no torch op on the map after it).

    Returns:
        (B, H, W) map, differentiable w.r.t. ``face_vertices_image`` and ``face_values``.
    """
    values = (
        face_values[..., None] if torch.is_tensor(face_values) and face_values.dim() == 3 else face_values
    )
    args = (height, width, face_vertices_z, face_vertices_image, values, face_normals_z)
    check_dibr_inputs(*args, 1)
    if values.shape[-1] != 1:
        raise ValueError(f"face_values must have shape (B, F, 3), got {tuple(face_values.shape)}")
    empty = _check_empty(empty, face_vertices_image)
    vz, vi, corner = _corner_mesh(face_vertices_z, face_vertices_image)
    # views of the same memory when face_values is face_vertices_z (the map is then the scaled z-buffer)
    values = face_values.reshape(vz.shape)
    return _DepthMap.apply(
        height, width, vz, vi, corner, values, face_normals_z, empty, float(multiplier), float(eps),
        float(scale),
    )  # fmt: skip


def dibr_rasterization(
    height,
    width,
    face_vertices_z,
    face_vertices_image,
    face_features,
    face_normals_z,
    sigmainv=7000,
    boxlen=0.02,
    knum=30,
    multiplier=1000,
    eps=1e-8,
    soft_mask=True,
):
    """DIB-R rasterization with Warp kernels (Kaolin v0.18 ``dibr_rasterization`` semantics).

    Args:
        height: image height H in pixels.
        width: image width W in pixels.
        face_vertices_z: (B, F, 3) depth of each face vertex; the largest interpolated value wins.
        face_vertices_image: (B, F, 3, 2) NDC positions in [-1, 1], y up.
        face_features: (B, F, 3, D) per-face-vertex features, or a list of (B, F, 3, D_i).
        face_normals_z: (B, F); faces with a negative value are not drawn (hard pass).
        sigmainv: soft-mask sharpness.
        boxlen: NDC margin around each face's bounding box for the soft mask.
        knum: most faces that influence one uncovered pixel.
        multiplier: coordinate scale used inside the geometric tests.
        eps: barycentric normalization epsilon.
        soft_mask: compute the soft mask (Kaolin always does). False returns the hard coverage (1 on
            covered pixels, 0 elsewhere, no gradient) and skips the soft-mask search: for renders whose
            soft mask is not used, such as shadow maps.

    Returns:
        interpolated_features (B, H, W, D) (a list/tuple of (B, H, W, D_i) for a list/tuple input),
        soft_mask (B, H, W), face_idx (B, H, W) int64 with -1 for background.
    """
    args = (height, width, face_vertices_z, face_vertices_image, face_features, face_normals_z)
    check_dibr_inputs(*args, knum)
    is_seq = isinstance(face_features, (list, tuple))
    feats = torch.cat(list(face_features), dim=-1) if is_seq else face_features
    vz, vi, corner = _corner_mesh(face_vertices_z, face_vertices_image)
    out, soft, face_idx = _DibrRasterization.apply(
        height, width, vz, vi, corner, _corner_features(feats), face_normals_z,
        float(sigmainv), float(boxlen), int(knum), float(multiplier), float(eps),
        _Options(soft=bool(soft_mask), packed=False),
    )  # fmt: skip
    if is_seq:
        out = type(face_features)(out.split([t.shape[-1] for t in face_features], dim=-1))
    return out, soft, face_idx


def dibr_rasterization_packed(
    height,
    width,
    face_vertices_z,
    face_vertices_image,
    face_features,
    face_normals_z,
    sigmainv=7000,
    boxlen=0.02,
    knum=30,
    multiplier=1000,
    eps=1e-8,
    soft_mask=True,
    out=None,
):
    """``dibr_rasterization`` with the features returned at the covered pixels only.

    The same values and gradients as gathering the dense features at ``face_idx >= 0``, without the
    dense (B, H, W, D) feature image and its dense gradient: the interpolation and its backward run
    over the N covered pixels only.

    Args:
        As ``dibr_rasterization``; ``face_features`` is one (B, F, 3, D) tensor.
        out: None, or (soft_mask, face_idx): contiguous (B, H, W) tensors (the features' dtype, int64) on
            the inputs' device that the soft mask and face index are written into and returned as (e.g.
            views of a larger batch's outputs).

    Returns:
        features (N, D) of the covered pixels, soft_mask (B, H, W), face_idx (B, H, W) int64 (-1 for
        background), flat_index (N,) int64: the covered pixels' increasing indices into the flattened
        (B * H * W) image.
    """
    args = (height, width, face_vertices_z, face_vertices_image, face_features, face_normals_z)
    check_dibr_inputs(*args, knum)
    if not torch.is_tensor(face_features):
        raise ValueError("face_features must be one (B, F, 3, D) tensor for the packed rasterization")
    if out is not None:
        out = _check_out(out, face_vertices_image, height, width)
    vz, vi, corner = _corner_mesh(face_vertices_z, face_vertices_image)
    packed, soft, face_idx, flat_index = _DibrRasterization.apply(
        height, width, vz, vi, corner, _corner_features(face_features), face_normals_z,
        float(sigmainv), float(boxlen), int(knum), float(multiplier), float(eps),
        _Options(soft=bool(soft_mask), packed=True, out=out),
    )  # fmt: skip
    return packed, soft, face_idx, flat_index


def check_indexed_inputs(height, width, vertices_z, vertices_image, faces, face_normals_z, knum=30):
    """Validate the arguments of the indexed rasterizer (``dibr_rasterization_indexed``,
    ``depth_map_indexed``); raise ValueError naming the argument."""
    _check_sizes(height, width, knum)
    image = vertices_image
    if not torch.is_tensor(image) or image.ndim != 3 or image.shape[2] != 2:
        got = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ValueError(f"vertices_image must have shape (B, V, 2), got {got}")
    if image.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"vertices_image must be float32 or float64, got {image.dtype}")
    batch, points = image.shape[:2]
    if not torch.is_tensor(faces) or faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype != torch.int32:
        got = f"{tuple(faces.shape)} {faces.dtype}" if torch.is_tensor(faces) else type(faces).__name__
        raise ValueError(f"faces must be an (F, 3) int32 tensor, got {got}")
    if faces.device != image.device or not faces.is_contiguous():
        raise ValueError(f"faces must be contiguous and on {image.device} like vertices_image")
    if faces.shape[0] > MAX_FACES:
        raise ValueError(f"faces has {faces.shape[0]} rows; at most {MAX_FACES} are supported")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= points):
        raise ValueError(
            f"faces must index the {points} vertices, got values in [{int(faces.min())}, {int(faces.max())}]"
        )
    for name, tensor, shape in (
        ("vertices_z", vertices_z, (batch, points)),
        ("face_normals_z", face_normals_z, (batch, faces.shape[0])),
    ):
        if not torch.is_tensor(tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
            raise ValueError(f"{name} must have shape {shape}, got {got}")
        if tensor.dtype != image.dtype or tensor.device != image.device:
            raise ValueError(
                f"{name} must have the dtype and device of vertices_image ({image.dtype} on {image.device}), "
                f"got {tensor.dtype} on {tensor.device}"
            )


def dibr_rasterization_indexed(
    height,
    width,
    vertices_z,
    vertices_image,
    faces,
    face_normals_z,
    sigmainv=7000,
    boxlen=0.02,
    knum=30,
    multiplier=1000,
    eps=1e-8,
    soft_mask=True,
    out=None,
):
    """``dibr_rasterization_packed`` of the barycentrics (identity corner features), with the mesh given
    per vertex: each face's corners are read through ``faces``. The same values as the per-face call on
    the gathered corners, and gradients summed per vertex (within rounding of the per-face call's
    gradients summed at ``faces``), without the (B, F, 3, ...) corner arrays.

    Args:
        height, width: image size in pixels.
        vertices_z: (B, V) depth of each vertex; the largest interpolated value wins.
        vertices_image: (B, V, 2) NDC positions, y up.
        faces: (F, 3) int32 contiguous vertex indices in [0, V), on the inputs' device.
        face_normals_z: (B, F); faces with a negative value are not drawn (hard pass).
        sigmainv, boxlen, knum, multiplier, eps, soft_mask, out: as ``dibr_rasterization_packed``.

    Returns:
        barycentrics (N, 3) of the covered pixels, soft_mask (B, H, W), face_idx (B, H, W) int64 (-1 for
        background), flat_index (N,) int64 increasing; differentiable w.r.t. ``vertices_image``.
    """
    check_indexed_inputs(height, width, vertices_z, vertices_image, faces, face_normals_z, knum)
    if out is not None:
        out = _check_out(out, vertices_image, height, width)
    identity = torch.eye(3, dtype=vertices_image.dtype, device=vertices_image.device)[None, None]
    return _DibrRasterization.apply(
        height, width, vertices_z, vertices_image, faces.view(-1), identity, face_normals_z,
        float(sigmainv), float(boxlen), int(knum), float(multiplier), float(eps),
        _Options(soft=bool(soft_mask), packed=True, out=out),
    )  # fmt: skip


def depth_map_indexed(
    height,
    width,
    vertices_z,
    vertices_image,
    faces,
    face_normals_z,
    empty,
    multiplier=1000,
    eps=1e-8,
    scale=1.0,
):
    """``depth_map`` of the vertices' own depth (``scale`` times the interpolated ``vertices_z``), with the
    mesh given per vertex as ``dibr_rasterization_indexed``: the same map as the per-face call on the
    gathered corners, differentiable w.r.t. ``vertices_z`` and ``vertices_image`` (gradients summed per
    vertex).

    Returns:
        (B, H, W) map, ``empty`` (B,) where no face covers a pixel.
    """
    check_indexed_inputs(height, width, vertices_z, vertices_image, faces, face_normals_z)
    empty = _check_empty(empty, vertices_image)
    return _DepthMap.apply(
        height, width, vertices_z, vertices_image, faces.view(-1), vertices_z, face_normals_z, empty,
        float(multiplier), float(eps), float(scale),
    )  # fmt: skip


def _check_out(out, like: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``out`` as (soft mask, face index): two contiguous (B, H, W) tensors, of ``like``'s float type and
    int64, on its device."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError("out must be a (soft_mask, face_idx) pair of tensors")
    shape = (like.shape[0], height, width)
    soft = parallel.check_buffer("out soft_mask", out[0], shape, like.dtype, like.device)
    return soft, parallel.check_buffer("out face_idx", out[1], shape, torch.int64, like.device)
