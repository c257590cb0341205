"""Pure-torch twins of the Warp kernels in this package.

Each twin has the same signature and semantics as its Warp op and is differentiated by torch autograd.
Tests compare the Warp ops against these; the renderer can run on them with ``backend="torch"``.
"""

from __future__ import annotations

import torch

from warp_kernels.mesh_topology import MeshTopology

# --- shadow-map visibility ---


def pcf_visibility(
    depth_map: torch.Tensor,
    coords: torch.Tensor,
    depth: torch.Tensor,
    batch_index: torch.Tensor,
    sharpness: float = 1000.0,
    bias: float = 0.005,
) -> torch.Tensor:
    """Torch twin of ``warp_kernels.shadow.pcf_visibility`` (same arguments, (N,) visibility)."""
    _, height, width = depth_map.shape
    flat = depth_map.reshape(-1)
    base = batch_index.long() * (height * width)
    total = depth.new_zeros(depth.shape)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            fx, fy = coords[:, 0] + (dx - 0.5), coords[:, 1] + (dy - 0.5)
            x0, y0 = fx.floor(), fy.floor()
            wx, wy = fx - x0, fy - y0
            x0, y0 = x0.long(), y0.long()
            xa, xb = x0.clamp(0, width - 1), (x0 + 1).clamp(0, width - 1)
            ya, yb = (base + y0.clamp(0, height - 1) * width), (base + (y0 + 1).clamp(0, height - 1) * width)
            top = (1 - wx) * flat[ya + xa] + wx * flat[ya + xb]
            bottom = (1 - wx) * flat[yb + xa] + wx * flat[yb + xb]
            z = (1 - wy) * top + wy * bottom
            total = total + torch.sigmoid(sharpness * (z - depth + bias))
    return total / 9


# --- geometry energies ---

COT_AREA_EPS = 1e-12  # clamp of the squared Heron area, as PyTorch3D's cot_laplacian
NORMAL_EPS = 1e-8  # clamp of the normal lengths, as torch.cosine_similarity


def cotangent_weights(vertices: torch.Tensor, topology: MeshTopology) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of ``warp_kernels.laplacian.cotangent_weights`` (no gradient).

    Returns:
        (B, E) cot a + cot b of the angles opposite each edge (PyTorch3D's ``cot_laplacian`` entries) and
        (B, V) the summed area of the faces around each vertex.
    """
    with torch.no_grad():
        b, faces = vertices.shape[0], topology.faces
        p0, p1, p2 = (vertices[:, faces[:, k]] for k in range(3))
        la, lb, lc = (p1 - p2).norm(dim=-1), (p0 - p2).norm(dim=-1), (p0 - p1).norm(dim=-1)
        s = 0.5 * (la + lb + lc)
        area = (s * (s - la) * (s - lb) * (s - lc)).clamp_min(COT_AREA_EPS).sqrt()
        a2, b2, c2 = la * la, lb * lb, lc * lc
        cot = torch.stack([b2 + c2 - a2, a2 + c2 - b2, a2 + b2 - c2], dim=-1) / (4 * area[..., None])
        # The angle at corner k faces the edge (k+1, k+2), i.e. face edge (k + 1) % 3.
        opposite_edge = topology.face_edges[:, [1, 2, 0]].reshape(-1)
        weights = vertices.new_zeros(b, topology.edges.shape[0])
        weights.index_add_(1, opposite_edge, cot.reshape(b, -1))
        areas = vertices.new_zeros(b, topology.num_vertices)
        areas.index_add_(1, faces.reshape(-1), area[..., None].expand(-1, -1, 3).reshape(b, -1))
    return weights, areas


def laplacian_smoothing(
    vertices: torch.Tensor, topology: MeshTopology, method: str = "uniform", reduction: str = "mean"
) -> torch.Tensor:
    """Torch twin of ``warp_kernels.laplacian.laplacian_smoothing``."""
    e0, e1 = topology.edges.unbind(1)
    if method == "uniform":
        weights, areas = topology.uniform_weights(vertices.dtype), None
    else:
        weights, areas = cotangent_weights(vertices, topology)
    acc = torch.zeros_like(vertices).index_add(1, e0, weights[..., None] * vertices[:, e1])
    acc = acc.index_add(1, e1, weights[..., None] * vertices[:, e0])
    wsum = weights.new_zeros(weights.shape[0], topology.num_vertices).index_add(1, e0, weights)
    wsum = wsum.index_add(1, e1, weights)
    if method == "cotcurv":
        scale = 0.25 * torch.where(areas > 0, 1 / areas, torch.zeros_like(areas))
        center = scale * wsum
    else:
        scale = torch.where(wsum > 0, 1 / wsum, torch.zeros_like(wsum))
        center = torch.ones_like(wsum)
    lv = scale[..., None] * acc - center[..., None] * vertices
    values = lv.norm(dim=-1)
    return values.mean() if reduction == "mean" else values


def normal_consistency(
    vertices: torch.Tensor, topology: MeshTopology, reduction: str = "mean"
) -> torch.Tensor:
    """Torch twin of ``warp_kernels.normal_consistency.normal_consistency``."""
    pairs = topology.face_pairs
    p0, p1, a, b = (vertices[:, pairs[:, k]] for k in range(4))
    edge = p1 - p0
    n0 = torch.cross(edge, a - p0, dim=-1)
    n1 = torch.cross(b - p0, edge, dim=-1)
    values = 1 - torch.cosine_similarity(n0, n1, dim=-1, eps=NORMAL_EPS)
    if reduction == "none":
        return values
    return values.mean() if values.numel() else values.sum()


def arap_energy(
    vertices: torch.Tensor,
    template: torch.Tensor,
    topology: MeshTopology,
    method: str = "edge",
    weights: str = "uniform",
    reduction: str = "mean",
) -> torch.Tensor:
    """Torch twin of ``warp_kernels.arap.arap_energy``."""
    template = template if template.dim() == 3 else template[None]
    e0, e1 = topology.edges.unbind(1)
    if method == "edge":
        length = (vertices[:, e0] - vertices[:, e1]).norm(dim=-1)
        rest = (template[:, e0] - template[:, e1]).norm(dim=-1)
        values = (length - rest).square()
        return values.mean() if reduction == "mean" else values
    template = template.detach()
    w = topology.uniform_weights(vertices.dtype)
    if weights == "cot":
        w = cotangent_weights(template, topology)[0].clamp_min(0)
    i, j, w = torch.cat([e0, e1]), torch.cat([e1, e0]), torch.cat([w, w], dim=1)  # directed edges
    rest = template[:, i] - template[:, j]
    posed = vertices[:, i] - vertices[:, j]
    with torch.no_grad():
        # Best-fit rotations; by optimality of R no gradient flows through them (envelope theorem).
        b = vertices.shape[0]
        cov = (w[..., None, None] * rest[..., :, None] * posed[..., None, :]).expand(b, -1, 3, 3)
        cov = vertices.new_zeros(b, topology.num_vertices, 3, 3).index_add_(1, i, cov)
        u, _, vh = torch.linalg.svd(cov)
        flip = torch.ones_like(u[..., 0, :])
        flip[..., 2] = torch.where(torch.linalg.det(vh.mT @ u.mT) < 0, -1.0, 1.0)
        rotation = vh.mT @ (u * flip[..., None, :]).mT
    residual = posed - (rotation[:, i] @ rest[..., None])[..., 0]
    fans = torch.zeros_like(vertices[..., 0]).index_add(1, i, w * residual.square().sum(-1))
    values = fans * (topology.num_vertices / w.sum(-1, keepdim=True))
    return values.mean() if reduction == "mean" else values


# --- DIB-R rasterization ---

DIBR_EDGE_EPS = 1e-7  # Kaolin's EPS added to squared edge lengths in the soft mask (multiplied units)
DIBR_PAIR_CHUNK = 1 << 22  # most (pixel, face) pairs handled at once by the twin


def _dibr_pixel_centres(height, width, multiplier, dtype, device):
    m = torch.tensor(multiplier, dtype=torch.float32, device=device)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    rows = torch.arange(height, device=device, dtype=torch.float32)
    xs = (m / width) * (2 * cols + 1 - width)
    ys = (m / height) * (height - 2 * rows - 1)
    return xs.to(dtype), ys.to(dtype)


def _dibr_pairs(lo, hi, xs, ys_up, height):
    """Yield (face, row, col) index triples of pixels whose centre is in each half-open box, in chunks."""
    j0, j1 = (torch.searchsorted(xs, t[:, 0].contiguous()) for t in (lo, hi))
    k0, k1 = (torch.searchsorted(ys_up, t[:, 1].contiguous()) for t in (lo, hi))
    nw, nh = (j1 - j0).clamp_min(0), (k1 - k0).clamp_min(0)
    count = nw * nh
    ends = torch.cumsum(count, 0)
    first = 0
    while first < lo.shape[0]:
        last = int(torch.searchsorted(ends, ends[first] - count[first] + DIBR_PAIR_CHUNK, right=True))
        last = max(last, first + 1)
        sel = torch.arange(first, min(last, lo.shape[0]), device=lo.device)
        face = torch.repeat_interleave(sel, count[sel])
        starts = torch.cumsum(count[sel], 0) - count[sel]
        local = torch.arange(face.shape[0], device=lo.device) - starts[face - first]
        row = height - 1 - (k0[face] + local // nw[face])
        col = j0[face] + local % nw[face]
        yield face, row, col
        first = last


def _dibr_bary(v, px, py, eps):
    """Kaolin's forward barycentrics (N, 3) of pixels (px, py) in faces v (N, 3, 2), multiplied units."""
    ex, ey = v[..., 0] - px[:, None], v[..., 1] - py[:, None]
    w0 = ex[:, 1] * ey[:, 2] - ey[:, 1] * ex[:, 2]
    w1 = ex[:, 2] * ey[:, 0] - ey[:, 2] * ex[:, 0]
    w2 = ex[:, 0] * ey[:, 1] - ey[:, 0] * ex[:, 1]
    norm = w0 + w1 + w2
    norm = norm + torch.where(norm >= 0, eps, -eps)
    return torch.stack([w0 / norm, w1 / norm, w2 / norm], dim=-1)


def _dibr_soft_dist2(v, px, py, multiplier):
    """Kaolin's squared distance (N,) from pixels to faces v (N, 3, 2), multiplied units."""
    x0, y0 = px[:, None], py[:, None]
    x1, y1 = v[..., 0], v[..., 1]
    x2, y2 = v[:, [1, 2, 0], 0], v[:, [1, 2, 0], 1]
    a, b = y2 - y1, x1 - x2
    c = x2 * y1 - x1 * y2
    up = a * x0 + b * y0 + c
    down = a * a + b * b
    x3 = (b * b * x0 - a * b * y0 - a * c) / (down + DIBR_EDGE_EPS)
    y3 = (a * a * y0 - a * b * x0 - b * c) / (down + DIBR_EDGE_EPS)
    direct = (x3 - x1) * (x3 - x2) + (y3 - y1) * (y3 - y2)
    perp = torch.where(direct > 0, 4.0 * multiplier * multiplier, up * up / (down + DIBR_EDGE_EPS))
    point = (x0 - x1) * (x0 - x1) + (y0 - y1) * (y0 - y1)
    return torch.cat([perp, point], dim=-1).min(dim=-1).values


@torch.no_grad()
def _dibr_hard_search(vim, fvz, fnz, xs, ys, eps):
    """(B, H*W) winning face per pixel (largest z, lowest index on ties), -1 for background."""
    batch, height, width = vim.shape[0], ys.shape[0], xs.shape[0]
    ys_up = ys.flip(0).contiguous()
    result = torch.full((batch, height * width), -1, dtype=torch.long, device=vim.device)
    for b in range(batch):
        faces = torch.nonzero(fnz[b] >= 0)[:, 0]
        zbuf = torch.full((height * width,), -torch.inf, dtype=vim.dtype, device=vim.device)
        for face, row, col in _dibr_pairs(vim[b, faces].amin(1), vim[b, faces].amax(1), xs, ys_up, height):
            f = faces[face]
            w = _dibr_bary(vim[b, f], xs[col], ys[row], eps)
            inside = (w >= 0).all(dim=-1)
            f, pix, w = f[inside], (row * width + col)[inside], w[inside]
            z = fvz[b, f]
            z = w[:, 0] * z[:, 0] + w[:, 1] * z[:, 1] + w[:, 2] * z[:, 2]
            cz = torch.full_like(zbuf, -torch.inf).scatter_reduce(0, pix, z, "amax")
            top = z == cz[pix]
            cf = torch.full_like(result[b], vim.shape[1]).scatter_reduce(0, pix[top], f[top], "amin")
            better = cz > zbuf
            zbuf = torch.where(better, cz, zbuf)
            result[b] = torch.where(better, cf, result[b])
    return result


@torch.no_grad()
def _dibr_soft_search(vim, uncovered, xs, ys, boxlen, knum, multiplier):
    """Soft-mask candidates: (batch, pixel, face, rank) of the knum lowest-index faces per uncovered pixel."""
    batch, height, width = vim.shape[0], ys.shape[0], xs.shape[0]
    ys_up = ys.flip(0).contiguous()
    lo, hi = vim.amin(2) - boxlen * multiplier, vim.amax(2) + boxlen * multiplier
    found = []
    for b in range(batch):
        taken = torch.zeros(height * width, dtype=torch.long, device=vim.device)
        for face, row, col in _dibr_pairs(lo[b], hi[b], xs, ys_up, height):
            pix = row * width + col
            keep = uncovered[b, pix]
            face, pix = face[keep], pix[keep]
            pix, order = torch.sort(pix, stable=True)  # faces stay in index order within a pixel
            face = face[order]
            _, counts = torch.unique_consecutive(pix, return_counts=True)
            starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            rank = torch.arange(pix.shape[0], device=pix.device) - starts + taken[pix]
            keep = rank < knum
            found.append((torch.full_like(pix[keep], b), pix[keep], face[keep], rank[keep]))
            taken += torch.bincount(pix, minlength=height * width)
    if not found:
        empty = torch.zeros(0, dtype=torch.long, device=vim.device)
        return empty, empty, empty, empty
    return [torch.cat(parts) for parts in zip(*found)]


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
    """Torch twin of ``warp_kernels.raster.dibr_rasterization`` (same arguments, outputs and Kaolin
    semantics, listed in that module's docstring; ``soft_mask=False`` returns the hard coverage).

    The searches (winning face, soft-mask candidates) run on (pixel, face) pairs of each face's bounding
    box; features and soft mask are then computed from gathered vertices and differentiated by autograd.
    The interpolation takes its value from Kaolin's forward barycentrics (multiplied units) and its
    derivative from Kaolin's backward formula (eps in NDC units), as Kaolin does.
    """
    is_seq = isinstance(face_features, (list, tuple))
    feats = torch.cat(list(face_features), dim=-1) if is_seq else face_features
    batch, dtype, device = face_vertices_image.shape[0], face_vertices_image.dtype, face_vertices_image.device
    xs, ys = _dibr_pixel_centres(height, width, multiplier, dtype, device)
    vim = face_vertices_image * multiplier
    face_idx = _dibr_hard_search(vim.detach(), face_vertices_z.detach(), face_normals_z, xs, ys, eps)

    # interpolated features at covered pixels
    cb, cp = torch.nonzero(face_idx >= 0, as_tuple=True)
    cf = face_idx[cb, cp]
    px, py = xs[cp % width], ys[cp // width]
    with torch.no_grad():
        w = _dibr_bary(vim[cb, cf], px, py, eps)
    v = face_vertices_image[cb, cf]
    a = v[:, 0]
    e1, e2, st = v[:, 1] - a, v[:, 2] - a, torch.stack([px, py], -1) / multiplier - a
    k3 = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    k3 = k3 + torch.where(k3.detach() >= 0, eps, -eps)
    w1 = (st[:, 0] * e2[:, 1] - e2[:, 0] * st[:, 1]) / k3
    w2 = (e1[:, 0] * st[:, 1] - st[:, 0] * e1[:, 1]) / k3
    c = feats[cb, cf]
    value = (w[:, :, None] * c).sum(1)
    value = value + (c[:, 1] - c[:, 0]).detach() * (w1 - w1.detach())[:, None]
    value = value + (c[:, 2] - c[:, 0]).detach() * (w2 - w2.detach())[:, None]
    out = feats.new_zeros(batch, height * width, feats.shape[-1]).index_put((cb, cp), value)
    out = out.reshape(batch, height, width, feats.shape[-1])

    if is_seq:
        out = type(face_features)(out.split([t.shape[-1] for t in face_features], dim=-1))
    if not soft_mask:
        return (
            out,
            (face_idx >= 0).to(dtype).reshape(batch, height, width),
            face_idx.reshape(batch, height, width),
        )

    # soft mask at uncovered pixels
    uncovered = face_idx < 0
    sb, sp, sf, rank = _dibr_soft_search(vim.detach(), uncovered, xs, ys, boxlen, knum, multiplier)
    d2 = _dibr_soft_dist2(vim[sb, sf], xs[sp % width], ys[sp // width], multiplier)
    prob = torch.exp(-(sigmainv * d2 / multiplier / multiplier))
    flat = sb * (height * width) + sp
    pixels, slot = torch.unique(flat, return_inverse=True)
    table = vim.new_ones(pixels.shape[0], knum).index_put((slot, rank), 1 - prob)
    soft = vim.new_zeros(batch * height * width).index_put((pixels,), 1 - table.prod(dim=1))
    soft = torch.where(uncovered.reshape(-1), soft, torch.ones_like(soft)).reshape(batch, height, width)
    return out, soft, face_idx.reshape(batch, height, width)
