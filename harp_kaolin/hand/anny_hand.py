"""The default hand model: anny's right hand (Apache-2.0 code, CC0 MakeHuman assets).

``anny.Anny(rig="anny-hand.R", topology="hand.R")``: 1609 vertices, 3196 triangles, 21 bones.

Parameterization (documented for users of ``AvatarParams``):
    pose: (B, 19, 3) rotation vectors, anny's ``local-ref`` parameterization (each bone's rotation
        relative to its parent, expressed in the bone's reference orientation), for every bone below
        ``wrist.R``: the 15 finger bones and the 4 metacarpals. ``root`` and ``wrist.R`` stay at the
        identity because the global rotation already moves the whole hand about the wrist.
    shape: (B, 6) logits of anny's phenotypes (gender, age, muscle, weight, height, proportions):
        phenotype = sigmoid(shape), so 0 is anny's mean 0.5 and every value stays in anny's range.
    global_orient / transl: the rigid map from anny's identity-pose output frame (the posed hand at zero
        pose: wrist at the origin, fingers along +y, palm towards -x) to camera coordinates. The bind
        frames (``rest_joint_frames``) stay in anny's own Z-up body frame, where the rest hand hangs down.

Keypoints ("harp21"): wrist = head of ``wrist.R``; per finger the heads of ``fingerN-1/2/3.R`` and the
tail of ``fingerN-3.R``. The default rig has no tails, so the rest tails come from the same rig with
Blender orientation (``anny-hand.R-blender``: identical rest vertices and heads) and are moved by each
bone's skinning transform.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from harp_kaolin.hand.base import HandModel, normalize_uv_layout

FINGER_BONES = [[f"finger{n}-{k}.R" for k in (1, 2, 3)] for n in range(1, 6)]


@functools.lru_cache(maxsize=2)
def _load_anny(rig: str):
    """anny model (float32). The first call builds ~/.cache/anny (about 2 minutes)."""
    try:
        import anny
    except ImportError as exc:  # pragma: no cover - anny is a hard dependency
        raise ImportError("the anny hand model needs the 'anny' package: pip install anny") from exc
    return anny.Anny(rig=rig, topology="hand.R").float().eval()


def dense_skin_weights(bone_weights: Tensor, bone_indices: Tensor, num_joints: int) -> Tensor:
    """(V, J) dense skinning weights from per-vertex (V, K) weights and bone indices."""
    dense = torch.zeros(bone_weights.shape[0], num_joints, dtype=bone_weights.dtype)
    dense.scatter_add_(1, bone_indices.long(), bone_weights)
    return dense / dense.sum(1, keepdim=True).clamp_min(1e-12)


class AnnyHand(HandModel):
    """anny's right hand behind the ``HandModel`` interface."""

    name = "anny"

    def __init__(self, subdivide: int = 0, uv_margin: float = 0.01) -> None:
        super().__init__()
        model = _load_anny("anny-hand.R")
        tails_model = _load_anny("anny-hand.R-blender")
        # Not registered as submodules: they are shared, cached, and hold no learnable state.
        self._anny = [model, tails_model]
        self.joint_names = list(model.bone_labels)
        self.joint_parents = [int(p) for p in model.bone_parents]
        self.pose_joints = list(range(2, len(self.joint_names)))
        self.shape_names = list(model.phenotype_labels)

        faces = model.get_triangular_faces().cpu().long()
        face_uvs_full = model.face_texture_coordinate_indices.cpu().long()
        used, face_uvs = torch.unique(face_uvs_full, return_inverse=True)
        original_uvs = model.texture_coordinates.cpu()[used].float()
        self.register_buffer("original_uv_index", used, persistent=False)
        uvs, scale, offset = normalize_uv_layout(original_uvs, uv_margin)
        weights = dense_skin_weights(
            model.vertex_bone_weights.cpu().double(), model.vertex_bone_indices.cpu(), len(self.joint_names)
        )
        self._set_mesh(faces, uvs, face_uvs.reshape(-1, 3), weights, subdivide, scale, offset)

        index = {name: i for i, name in enumerate(self.joint_names)}
        heads = [index["wrist.R"]]
        for bones in FINGER_BONES:
            heads += [index[b] for b in bones]
        self.head_joints = heads  # the 16 joints whose heads are keypoints
        self.tip_joints = [index[bones[2]] for bones in FINGER_BONES]
        self._coeff_args = (
            torch.zeros(1, len(model.local_change_labels)),
            torch.zeros(1, len(model.facial_action_labels)),
        )

    def _models_on(self, ref: Tensor):
        for m in self._anny:
            if m.template_vertices.device != ref.device:
                m.to(ref.device)
        return self._anny

    def rest_model(self, shape: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        model, _ = self._models_on(shape)
        phenotype = torch.sigmoid(shape.float())
        lc, fa = (t.to(shape.device).expand(shape.shape[0], -1) for t in self._coeff_args)
        coeffs = model._get_phenotype_blendshape_coefficients(phenotype, lc, fa)
        rest = model.get_rest_model(coeffs)
        return rest["rest_vertices"], rest["rest_bone_poses"]

    def skinning_transforms(self, pose: Tensor, rest_joint_frames: Tensor) -> Tensor:
        from harp_kaolin.geometry import axis_angle_to_matrix

        model, _ = self._models_on(pose)
        b, j = pose.shape[0], len(self.joint_names)
        local = torch.eye(4, dtype=pose.dtype, device=pose.device).repeat(b, j, 1, 1)
        local[:, 2:, :3, :3] = axis_angle_to_matrix(pose)  # root and wrist.R stay at the identity
        transforms, _ = model.get_bone_transforms(local, rest_joint_frames)
        return transforms

    def rest_tails(self, shape: Tensor) -> Tensor:
        """(B, J, 3) rest bone tails for a shape, from the Blender-oriented rig."""
        from anny.skinning import skinning

        _, tails_model = self._models_on(shape)
        phenotype = torch.sigmoid(shape.float())
        lc, fa = (t.to(shape.device).expand(shape.shape[0], -1) for t in self._coeff_args)
        coeffs = tails_model._get_phenotype_blendshape_coefficients(phenotype, lc, fa)
        return skinning.apply_linear_blendshape(
            tails_model.template_bone_tails, tails_model.bone_tails_blendshapes, coeffs
        )

    def model_keypoints(
        self, transforms: Tensor, rest_joint_frames: Tensor, rest_vertices: Tensor, shape: Tensor
    ) -> Tensor:
        heads = rest_joint_frames[:, self.head_joints, :3, 3]
        t_heads = transforms[:, self.head_joints]
        posed_heads = (t_heads[..., :3, :3] @ heads[..., None])[..., 0] + t_heads[..., :3, 3]
        tails = self.rest_tails(shape)[:, self.tip_joints]
        t_tips = transforms[:, self.tip_joints]
        posed_tips = (t_tips[..., :3, :3] @ tails[..., None])[..., 0] + t_tips[..., :3, 3]
        # harp21: wrist, then per finger base, middle, distal heads and the tip.
        order = [posed_heads[:, :1]]
        for f in range(5):
            order += [posed_heads[:, 1 + 3 * f : 4 + 3 * f], posed_tips[:, f : f + 1]]
        return torch.cat(order, dim=1)
