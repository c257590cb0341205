"""anny's right hand with the forearm up to the elbow, cut from the full anny body.

The full body is ``anny.Anny()`` (rig "anny", topology "anny": 13718 vertices, 104 bones). The arm keeps
the faces whose dominant skinning bone (largest summed weight over the face's three vertices) lies in the
subtree of ``lowerarm01.R``: 22 bones (``lowerarm01.R``, the twist bone ``lowerarm02.R``, ``wrist.R``,
4 metacarpals, 15 finger bones), 1856 vertices and 3685 triangles in one connected piece. Skinning
weights are restricted to the subtree; weight on bones outside it (``upperarm02.R`` near the elbow cut)
is moved to the subtree root ``lowerarm01.R`` and the rows renormalized.

Model frame: origin at the head of ``lowerarm01.R`` (the elbow), axes = the rest orientation of
``lowerarm01.R`` at the mean phenotype (a fixed rotation of anny's body axes): the forearm runs along +y
from the elbow.

Parameterization (documented for users of ``AvatarParams``):
    pose: (B, 21, 3) rotation vectors of the subtree bones below ``lowerarm01.R`` (``lowerarm02.R``,
        ``wrist.R``, then anny's metacarpal and finger bones), in anny's ``local-ref`` sense (each bone's
        rotation relative to its parent's reference orientation) with the axes of the model frame.
        ``lowerarm02.R`` is anny's forearm twist bone: rotations about the forearm (+y) turn the wrist.
        ``lowerarm01.R`` has no pose: the global rotation already turns the whole arm about the elbow.
    shape: (B, 6) logits of anny's phenotypes, phenotype = sigmoid(shape) (as ``AnnyHand``).
    global_orient / transl: the rigid map from the model frame to camera coordinates.

Keypoints ("harp21") as ``AnnyHand``: wrist = head of ``wrist.R``; per finger the heads of
``fingerN-1/2/3.R`` and the tail of ``fingerN-3.R``. The default rig has no tails, so the rest tails come
from the Blender-oriented body rig (``anny-blender``: identical rest vertices and heads of these bones).

UVs: the arm's part of anny's whole-body layout, rescaled to the unit square (``normalize_uv_layout``).
The forearm and hand islands lie far apart in that layout, so the hand gets about a fifth of the
map's width (the anny hand model: nearly all of it).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from harp_kaolin.geometry import axis_angle_to_matrix, rigid_transform
from harp_kaolin.hand.anny_hand import FINGER_BONES, AnnyHand, dense_skin_weights
from harp_kaolin.hand.base import HandModel, normalize_uv_layout

ROOT_BONE = "lowerarm01.R"


@functools.lru_cache(maxsize=2)
def _load_anny_body(rig: str):
    """Full-body anny model (float32). The first call builds ~/.cache/anny (3-4 minutes per rig)."""
    try:
        import anny
    except ImportError as exc:  # pragma: no cover - anny is a hard dependency
        raise ImportError("the anny arm model needs the 'anny' package: pip install anny") from exc
    return anny.Anny(rig=rig, topology="anny").float().eval()


def subtree(parents: list[int], root: int) -> list[int]:
    """Indices of ``root`` and all its descendants, in increasing order (parents come first in anny)."""
    inside = {root}
    for bone in range(root + 1, len(parents)):
        if parents[bone] in inside:
            inside.add(bone)
    return sorted(inside)


class AnnyArm(HandModel):
    """Hand and forearm of the full anny body behind the ``HandModel`` interface."""

    name = "anny_arm"

    def __init__(self, subdivide: int = 0, uv_margin: float = 0.01) -> None:
        super().__init__()
        model = _load_anny_body("anny")
        tails_model = _load_anny_body("anny-blender")
        # Not registered as submodules: they are shared, cached, and hold no learnable state.
        self._anny = [model, tails_model]
        labels = list(model.bone_labels)
        parents = [int(p) for p in model.bone_parents]
        bones = subtree(parents, labels.index(ROOT_BONE))
        position = {bone: i for i, bone in enumerate(bones)}
        self.joint_names = [labels[b] for b in bones]
        self.joint_parents = [-1] + [position[parents[b]] for b in bones[1:]]
        self.pose_joints = list(range(1, len(bones)))
        self.shape_names = list(model.phenotype_labels)
        self.register_buffer("bone_index", torch.tensor(bones), persistent=False)

        full_weights = dense_skin_weights(
            model.vertex_bone_weights.cpu().double(), model.vertex_bone_indices.cpu(), len(labels)
        )
        full_faces = model.get_triangular_faces().cpu().long()
        dominant = full_weights[full_faces].sum(1).argmax(1)
        keep = torch.isin(dominant, torch.tensor(bones))
        used, faces = torch.unique(full_faces[keep], return_inverse=True)
        self.register_buffer("vertex_index", used, persistent=False)
        weights = full_weights[used][:, bones]
        weights[:, 0] += 1 - weights.sum(1)  # weight outside the subtree goes to its root
        weights = weights / weights.sum(1, keepdim=True)

        face_uvs_full = model.face_texture_coordinate_indices.cpu().long()[keep]
        used_uvs, face_uvs = torch.unique(face_uvs_full, return_inverse=True)
        self.register_buffer("original_uv_index", used_uvs, persistent=False)
        uvs, scale, offset = normalize_uv_layout(model.texture_coordinates.cpu()[used_uvs].float(), uv_margin)
        self._set_mesh(faces.reshape(-1, 3), uvs, face_uvs.reshape(-1, 3), weights, subdivide, scale, offset)

        self._coeff_args = (
            torch.zeros(1, len(model.local_change_labels)),
            torch.zeros(1, len(model.facial_action_labels)),
        )
        with torch.no_grad():
            rest = model.get_rest_model(self._coefficients(model, self.default_shape(1)))
        frame_rotation = rest["rest_bone_poses"][0, bones[0], :3, :3].cpu()
        self.register_buffer("frame_rotation", frame_rotation, persistent=False)
        # anny's reference orientations (its rest orientations when absent), in the model frame.
        reference = model.reference_bone_orientations
        reference = rest["rest_bone_poses"][0, :, :3, :3] if reference is None else reference
        self.register_buffer(
            "reference_orientations", frame_rotation.T @ reference.cpu()[bones], persistent=False
        )

        heads = [position[labels.index("wrist.R")]]
        for finger in FINGER_BONES:
            heads += [position[labels.index(b)] for b in finger]
        self.head_joints = heads  # the 16 joints whose heads are keypoints
        self.tip_joints = [position[labels.index(finger[2])] for finger in FINGER_BONES]

    # Same device handling and keypoint rule as the anny hand (heads of head_joints, tails of tip_joints).
    _models_on = AnnyHand._models_on
    model_keypoints = AnnyHand.model_keypoints

    def _coefficients(self, model, shape: Tensor) -> Tensor:
        lc, fa = (t.to(shape.device).expand(shape.shape[0], -1) for t in self._coeff_args)
        return model._get_phenotype_blendshape_coefficients(torch.sigmoid(shape.float()), lc, fa)

    def rest_model(self, shape: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        model, _ = self._models_on(shape)
        rest = model.get_rest_model(self._coefficients(model, shape))
        frames = rest["rest_bone_poses"][:, self.bone_index]
        origin = frames[:, :1, :3, 3]  # (B, 1, 3) the elbow
        vertices = (rest["rest_vertices"][:, self.vertex_index] - origin) @ self.frame_rotation
        rotation = self.frame_rotation.T @ frames[..., :3, :3]
        return vertices, rigid_transform(rotation, (frames[..., :3, 3] - origin) @ self.frame_rotation)

    def skinning_transforms(self, pose: Tensor, rest_joint_frames: Tensor) -> Tensor:
        # anny's local-ref chain on the subtree, rooted at the rest pose of lowerarm01.R:
        # posed W_c = W_p [U_p^T D_c U_c | R_p^T (h_c - h_p)], skinning T_c = W_c P_c^-1, P_c = [R_c | h_c].
        parents = self.joint_parents
        rotations, heads = rest_joint_frames[..., :3, :3], rest_joint_frames[..., :3, 3]
        reference = self.reference_orientations.to(pose)
        child = reference[1:]
        parent = reference[parents[1:]].transpose(-1, -2)
        local_rotation = parent @ axis_angle_to_matrix(pose) @ child
        offset = heads[:, 1:] - heads[:, parents[1:]]
        local_offset = (rotations[:, parents[1:]].transpose(-1, -2) @ offset[..., None])[..., 0]
        local = rigid_transform(local_rotation, local_offset)
        world = [rest_joint_frames[:, 0]]
        for j in range(1, len(parents)):
            world.append(world[parents[j]] @ local[:, j - 1])
        inverse_rotation = rotations.transpose(-1, -2)
        inverse_rest = rigid_transform(inverse_rotation, -(inverse_rotation @ heads[..., None])[..., 0])
        return torch.stack(world, dim=1) @ inverse_rest

    def rest_tails(self, shape: Tensor) -> Tensor:
        """(B, J, 3) rest bone tails for a shape, model frame, from the Blender-oriented rig."""
        from anny.skinning import skinning

        _, tails_model = self._models_on(shape)
        coeffs = self._coefficients(tails_model, shape)
        bones, root = self.bone_index, self.bone_index[:1]
        tails = skinning.apply_linear_blendshape(
            tails_model.template_bone_tails[bones], tails_model.bone_tails_blendshapes[:, bones], coeffs
        )
        origin = skinning.apply_linear_blendshape(
            tails_model.template_bone_heads[root], tails_model.bone_heads_blendshapes[:, root], coeffs
        )
        return (tails - origin) @ self.frame_rotation
