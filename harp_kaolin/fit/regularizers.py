"""The geometry regularizers of the geometry and joint stages, on the personalized rest mesh.

The rest mesh (subdivided, displaced) is shared by every frame, so these terms are evaluated once per
step on it (in decimeters, see ``losses.MESH_SCALE``): Laplacian smoothing (uniform, PyTorch3D
semantics), normal consistency, and HARP's ARAP term (edge lengths against the initial template),
the latter in units of the template's mean edge length so that it measures relative length change.
"""

from __future__ import annotations

from torch import Tensor


def geometry_terms(fitter, rest: Tensor, template: Tensor, weights: dict[str, float]) -> dict[str, Tensor]:
    """Laplacian, normal consistency and ARAP of ``rest`` (1, V, 3) against ``template`` (1, V, 3)."""
    from warp_kernels.arap import arap_energy
    from warp_kernels.laplacian import laplacian_smoothing
    from warp_kernels.mesh_topology import MeshTopology
    from warp_kernels.normal_consistency import normal_consistency

    if fitter.energies is None:
        fitter.energies = MeshTopology.build(fitter.hand.faces.cpu(), fitter.hand.num_vertices).to(
            rest.device
        )
    topo = fitter.energies
    backend = "torch" if fitter.cfg.backend == "torch" else "warp"
    terms = {}
    if weights.get("laplacian", 0) > 0:
        terms["laplacian"] = laplacian_smoothing(rest, topo, "uniform", backend=backend)
    if weights.get("normal_consistency", 0) > 0:
        terms["normal_consistency"] = normal_consistency(rest, topo, backend=backend)
    if weights.get("arap", 0) > 0:
        e = topo.edges
        unit = (template[0, e[:, 0]] - template[0, e[:, 1]]).norm(dim=-1).mean()
        terms["arap"] = arap_energy(rest / unit, template / unit, topo, "edge", backend=backend)
    return terms
