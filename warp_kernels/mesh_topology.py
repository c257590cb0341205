"""Index sets of a triangle mesh, built once and reused by every call of the geometry energies.

``MeshTopology.build(faces)`` does all the per-mesh bookkeeping (edges, faces sharing an edge, vertex
neighbourhoods) up front, so the energies in ``arap``, ``laplacian`` and ``normal_consistency`` do no
Python loops over the mesh per step. The module also holds the small helpers those energies share:
input checks and the bridge from torch tensors to Warp arrays.

Dimension names: B batch, V vertices, F faces, E undirected edges, P pairs of faces sharing an edge.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from itertools import combinations
from types import SimpleNamespace

import torch
from torch import Tensor

BACKENDS = ("warp", "torch")
REDUCTIONS = ("mean", "none")
_INDEX_FIELDS = (
    "faces",
    "edges",
    "face_edges",
    "face_pairs",
    "neighbor_offsets",
    "neighbors",
    "neighbor_edges",
)


@dataclass(frozen=True)
class MeshTopology:
    """Connectivity of a triangle mesh (all index tensors are long, on one device).

    Attributes:
        num_vertices: V.
        faces: (F, 3) vertex indices.
        edges: (E, 2) undirected edges, ``edges[:, 0] < edges[:, 1]``, sorted lexicographically.
        face_edges: (F, 3) id of the edges (v0, v1), (v1, v2), (v2, v0) of each face.
        face_pairs: (P, 4) ``(v0, v1, a, b)`` for each pair of faces sharing the edge (v0, v1), v0 < v1,
            where a and b are the faces' vertices opposite that edge. An edge shared by k faces gives
            k (k - 1) / 2 pairs; a boundary edge gives none.
        neighbor_offsets: (V + 1,) CSR row pointers: the neighbours of vertex i are the entries
            ``neighbor_offsets[i]:neighbor_offsets[i + 1]`` of the two arrays below.
        neighbors: (2E,) neighbour vertex of each entry (ascending within a row).
        neighbor_edges: (2E,) edge id of each entry.
    """

    num_vertices: int
    faces: Tensor
    edges: Tensor
    face_edges: Tensor
    face_pairs: Tensor
    neighbor_offsets: Tensor
    neighbors: Tensor
    neighbor_edges: Tensor
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def build(cls, faces: Tensor, num_vertices: int | None = None) -> MeshTopology:
        """Topology of the mesh ``faces`` (F, 3), on the faces' device.

        Args:
            faces: (F, 3) integer vertex indices.
            num_vertices: V; defaults to ``faces.max() + 1``.
        """
        if not isinstance(faces, Tensor) or faces.dim() != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
            got = tuple(faces.shape) if isinstance(faces, Tensor) else type(faces).__name__
            raise ValueError(f"faces must have shape (F, 3) with F > 0, got {got}")
        if faces.dtype.is_floating_point or faces.dtype.is_complex or faces.dtype == torch.bool:
            raise ValueError(f"faces must hold integer indices, got {faces.dtype}")
        f = faces.detach().to("cpu", torch.int64)
        top = int(f.max()) + 1
        num_vertices = top if num_vertices is None else int(num_vertices)
        if int(f.min()) < 0 or top > num_vertices:
            raise ValueError(
                f"faces must index vertices in [0, {num_vertices}), got [{int(f.min())}, {top - 1}]"
            )

        directed = f[:, [[0, 1], [1, 2], [2, 0]]]  # (F, 3, 2)
        edges, inverse = torch.unique(directed.sort(dim=-1).values.reshape(-1, 2), dim=0, return_inverse=True)
        face_edges = inverse.reshape(-1, 3)
        num_edges = edges.shape[0]

        # Faces around each edge: incidences sorted by edge id, then every pair within a group.
        incidence_edge = face_edges.reshape(-1)
        incidence_opposite = f[:, [2, 0, 1]].reshape(-1)  # vertex opposite edge k of a face
        order = torch.argsort(incidence_edge, stable=True)
        opposite = incidence_opposite[order]
        counts = torch.bincount(incidence_edge, minlength=num_edges)
        starts = torch.cumsum(counts, 0) - counts
        pairs = []
        for k in sorted(set(counts.tolist()) - {0, 1}):
            group = torch.nonzero(counts == k).squeeze(1)
            for i, j in combinations(range(k), 2):
                a, b = opposite[starts[group] + i], opposite[starts[group] + j]
                pairs.append(torch.stack([group, a, b], dim=1))
        pairs = torch.cat(pairs) if pairs else torch.zeros(0, 3, dtype=torch.int64)
        pairs = pairs[torch.argsort(pairs[:, 0], stable=True)]
        face_pairs = torch.cat([edges[pairs[:, 0]], pairs[:, 1:]], dim=1)

        src = torch.cat([edges[:, 0], edges[:, 1]])
        dst = torch.cat([edges[:, 1], edges[:, 0]])
        ids = torch.arange(num_edges).repeat(2)
        order = torch.argsort(src * num_vertices + dst)
        offsets = torch.zeros(num_vertices + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.bincount(src, minlength=num_vertices), 0)

        device = faces.device
        return cls(
            num_vertices=num_vertices,
            faces=f.to(device),
            edges=edges.to(device),
            face_edges=face_edges.to(device),
            face_pairs=face_pairs.to(device),
            neighbor_offsets=offsets.to(device),
            neighbors=dst[order].to(device),
            neighbor_edges=ids[order].to(device),
        )

    @property
    def device(self) -> torch.device:
        return self.faces.device

    def to(self, device: torch.device | str) -> MeshTopology:
        """This topology on ``device`` (cached: repeated calls return the same object)."""
        device = torch.device(device)
        if device == self.device:
            return self
        key = ("to", str(device))
        if key not in self._cache:
            moved = {name: getattr(self, name).to(device) for name in _INDEX_FIELDS}
            self._cache[key] = MeshTopology(num_vertices=self.num_vertices, **moved)
        return self._cache[key]

    def uniform_weights(self, dtype: torch.dtype) -> Tensor:
        """(1, E) edge weights of one, cached per dtype."""
        key = ("ones", dtype)
        if key not in self._cache:
            self._cache[key] = torch.ones(1, self.edges.shape[0], dtype=dtype, device=self.device)
        return self._cache[key]

    def warp(self) -> SimpleNamespace:
        """The index tensors as int32 Warp arrays on this topology's device (cached)."""
        if "warp" not in self._cache:
            wp = warp_runtime()
            # The int32 tensors stay in the cache: the Warp arrays only borrow their memory.
            tensors = {name: getattr(self, name).int().contiguous() for name in _INDEX_FIELDS}
            arrays = SimpleNamespace(**{name: wp.from_torch(t) for name, t in tensors.items()})
            self._cache["warp"] = arrays
            self._cache["warp_int32"] = tensors
        return self._cache["warp"]


# ---------------------------------------------------------------------------------------- shared helpers
def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_vertices(vertices: Tensor, topology: MeshTopology, name: str = "vertices") -> None:
    """Raise when ``vertices`` is not a float32/float64 (B, V, 3) tensor matching ``topology``."""
    if not isinstance(topology, MeshTopology):
        raise TypeError(f"topology must be a MeshTopology (MeshTopology.build(faces)), got {type(topology)}")
    if not isinstance(vertices, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(vertices).__name__}")
    v = topology.num_vertices
    if vertices.dim() != 3 or vertices.shape[1:] != (v, 3) or vertices.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, {v}, 3), got {tuple(vertices.shape)}")
    if vertices.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64, got {vertices.dtype}")


def check_template(template: Tensor, vertices: Tensor, topology: MeshTopology) -> Tensor:
    """The template as (1 or B, V, 3), after checking it against ``vertices``."""
    if isinstance(template, Tensor) and template.dim() == 2:
        template = template[None]
    check_vertices(template, topology, "template")
    b = vertices.shape[0]
    if template.shape[0] not in (1, b):
        raise ValueError(
            f"template must have shape (V, 3), (1, V, 3) or ({b}, V, 3), got {tuple(template.shape)}"
        )
    if template.dtype != vertices.dtype:
        raise ValueError(f"template must have the dtype of vertices ({vertices.dtype}), got {template.dtype}")
    if template.device != vertices.device:
        raise ValueError(
            f"template must be on the device of vertices ({vertices.device}), got {template.device}"
        )
    return template


def warp_runtime():
    """The ``warp`` module, initialized on first use (never at import, so importing stays cheap)."""
    import warp as wp

    wp.init()
    return wp


def warp_vec3(x: Tensor):
    """(B, V, 3) float tensor -> 2-D Warp array of vec3 (float32) or vec3d (float64), sharing memory."""
    wp = warp_runtime()
    dtype = wp.vec3d if x.dtype == torch.float64 else wp.vec3
    return wp.from_torch(x.detach().contiguous(), dtype=dtype, requires_grad=False)


def warp_array(x: Tensor, dtype=None):
    """Any tensor -> Warp array sharing its memory (no gradient tracking on the Warp side)."""
    return warp_runtime().from_torch(x.detach().contiguous(), dtype=dtype, requires_grad=False)


def torch_stream(x: Tensor):
    """Context that makes Warp launch on the current torch CUDA stream of ``x`` (no-op on CPU)."""
    if not x.is_cuda:
        return contextlib.nullcontext()
    wp = warp_runtime()
    return wp.ScopedStream(wp.stream_from_torch(x.device))
