"""The interface every hand model implements, and the shared forward pass.

A hand model owns only fixed model data (template, rig, skinning weights, UVs); everything learnable is
passed to ``forward`` (smplx style). The forward pass is the same for every model:

    rest mesh(shape) -> subdivision (S @ rest) -> displacement along the rest normals
    -> linear blend skinning with the subdivided weights -> global rotation and translation (camera)

Displacement is applied to the rest mesh and then skinned, so the personalized rest mesh with its
subdivided skinning weights *is* the avatar: a USD exporter that writes that mesh and those weights
reproduces the fitted posed meshes exactly (UsdSkel skins linearly, as here).

Dimension names: B batch, V vertices, F faces, J joints, P posed joints, S shape parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harp_kaolin.geometry import axis_angle_to_matrix, rigid_transform, vertex_normals
from harp_kaolin.hand.subdivision import Subdivision, apply_operator

HARP21_NAMES = (
    "wrist",
    *(
        f"{finger}_{part}"
        for finger in ("thumb", "index", "middle", "ring", "little")
        for part in ("base", "middle", "distal", "tip")
    ),
)


@dataclass(frozen=True)
class HandOutput:
    """Posed hand.

    Attributes:
        vertices: (B, V, 3) posed vertices in camera coordinates, meters.
        keypoints: (B, 21, 3) keypoints in "harp21" order, camera coordinates.
        joint_transforms: (B, J, 4, 4) skinning transforms mapping rest (model frame) points to camera
            coordinates: posed = sum_j w_j * joint_transforms[j] @ rest.
        rest_vertices: (B, V, 3) personalized rest mesh in the model frame (subdivided, displaced).
        rest_joint_frames: (B, J, 4, 4) world frame of each joint in the rest pose (the bind pose).
    """

    vertices: Tensor
    keypoints: Tensor
    joint_transforms: Tensor
    rest_vertices: Tensor
    rest_joint_frames: Tensor


def normalize_uv_layout(uvs: Tensor, margin: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """Rescale UVs uniformly to fill the unit square, keeping the affine map to the original layout.

    Args:
        uvs: (U, 2) original UV coordinates.
        margin: border left free on each side, in UV units.

    Returns:
        new_uvs (U, 2), scale (scalar tensor) and offset (2,) with new = original * scale + offset.
    """
    lo, hi = uvs.min(0).values, uvs.max(0).values
    scale = (1 - 2 * margin) / (hi - lo).max()
    offset = 0.5 - (lo + hi) / 2 * scale
    return uvs * scale + offset, scale, offset


def linear_blend_skinning(rest_vertices: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """Linear blend skinning.

    Args:
        rest_vertices: (B, V, 3).
        weights: (V, J) skinning weights, rows summing to 1.
        transforms: (B, J, 4, 4) per-joint transforms.

    Returns:
        (B, V, 3) skinned vertices.
    """
    blended = torch.einsum("vj,bjkl->bvkl", weights, transforms[:, :, :3, :])  # (B, V, 3, 4)
    return (blended[..., :3] @ rest_vertices[..., None])[..., 0] + blended[..., 3]


class HandModel(torch.nn.Module):
    """Base class of the hand models. Subclasses call ``_set_mesh`` and implement the three hooks.

    Attributes (fixed model data):
        name: model name, as given to ``load_hand``.
        joint_names, joint_parents: the rig (parents[0] == -1).
        pose_joints: indices of the joints driven by the pose parameters, one rotation vector each.
        shape_names: names of the shape parameters.
        faces, face_uvs, uvs, skin_weights: the mesh that ``forward`` returns (subdivided when asked);
            base_faces, base_face_uvs, base_uvs, base_skin_weights: the model's own mesh.
        uv_scale, uv_offset: new UV = original UV * uv_scale + uv_offset (see ``normalize_uv_layout``).
    """

    name: str = "hand"
    joint_names: list[str]
    joint_parents: list[int]
    pose_joints: list[int]
    shape_names: list[str]

    def _set_mesh(
        self,
        faces: Tensor,
        uvs: Tensor,
        face_uvs: Tensor,
        skin_weights: Tensor,
        subdivide: int,
        uv_scale: Tensor,
        uv_offset: Tensor,
    ) -> None:
        num_vertices = skin_weights.shape[0]
        self.register_buffer("base_faces", faces.long(), persistent=False)
        self.register_buffer("base_face_uvs", face_uvs.long(), persistent=False)
        self.register_buffer("base_uvs", uvs.float(), persistent=False)
        self.register_buffer("base_skin_weights", skin_weights.float(), persistent=False)
        self.register_buffer("uv_scale", torch.as_tensor(uv_scale, dtype=torch.float32), persistent=False)
        self.register_buffer("uv_offset", torch.as_tensor(uv_offset, dtype=torch.float32), persistent=False)
        self.subdivision = Subdivision.build(faces, num_vertices, face_uvs, uvs.shape[0], subdivide)
        sub = self.subdivision
        self.register_buffer("faces", sub.faces, persistent=False)
        self.register_buffer("face_uvs", sub.face_uvs, persistent=False)
        self.register_buffer("uvs", apply_operator(sub.uv_op, uvs.double()).float(), persistent=False)
        weights = apply_operator(sub.vertex_op, skin_weights.double()).float()
        self.register_buffer("skin_weights", weights, persistent=False)
        self.register_buffer("vertex_op", sub.vertex_op.float(), persistent=False)

    # ----------------------------------------------------------------------------------------- hooks
    def rest_model(self, shape: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        """Rest mesh and bind frames for a shape (and pose, for models with pose correctives).

        Returns:
            rest_vertices (B, V0, 3) of the model's own mesh and rest_joint_frames (B, J, 4, 4).
        """
        raise NotImplementedError

    def skinning_transforms(self, pose: Tensor, rest_joint_frames: Tensor) -> Tensor:
        """(B, J, 4, 4) model-frame skinning transforms for pose (B, P, 3)."""
        raise NotImplementedError

    def model_keypoints(
        self, transforms: Tensor, rest_joint_frames: Tensor, rest_vertices: Tensor, shape: Tensor
    ) -> Tensor:
        """(B, 21, 3) harp21 keypoints in the model frame (before the global transform)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ public API
    @property
    def num_pose(self) -> int:
        return len(self.pose_joints)

    @property
    def num_shape(self) -> int:
        return len(self.shape_names)

    @property
    def num_vertices(self) -> int:
        return self.skin_weights.shape[0]

    @property
    def num_base_vertices(self) -> int:
        return self.base_skin_weights.shape[0]

    def default_shape(self, batch: int = 1) -> Tensor:
        return torch.zeros(batch, self.num_shape, device=self.base_uvs.device)

    def subdivide(self, values: Tensor) -> Tensor:
        """Apply the vertex subdivision operator to (V0, C) or (B, V0, C) per-vertex values."""
        return apply_operator(self.vertex_op, values)

    def forward(
        self,
        pose: Tensor,
        shape: Tensor | None = None,
        global_orient: Tensor | None = None,
        transl: Tensor | None = None,
        displacement: Tensor | None = None,
    ) -> HandOutput:
        """Pose the hand.

        Args:
            pose: (B, P, 3) rotation vectors (axis * angle, radians) of ``pose_joints``, local frames.
            shape: (B, S) or (1, S) shape parameters; defaults to the model's mean shape.
            global_orient: (B, 3) rotation vector from the model frame to camera coordinates.
            transl: (B, 3) translation to camera coordinates, meters.
            displacement: (V,) or (B, V) offsets along the rest-mesh vertex normals, meters.

        Returns:
            HandOutput with vertices and keypoints in camera coordinates.
        """
        b, shape = self._check(pose, shape)
        rest_base, rest_frames = self.rest_model(shape, pose)
        transforms = self.skinning_transforms(pose, rest_frames)
        rest = self.subdivide(rest_base) if self.subdivision.levels else rest_base
        if displacement is not None:
            if displacement.shape[-1] != rest.shape[1]:
                got = tuple(displacement.shape)
                raise ValueError(f"displacement must have {rest.shape[1]} values per frame, got {got}")
            rest = rest + displacement.reshape(-1, rest.shape[1], 1) * vertex_normals(rest, self.faces)
        keypoints = self.model_keypoints(transforms, rest_frames, rest_base, shape)
        world = self._world(pose, global_orient, transl)
        if world is not None:
            transforms = world[:, None] @ transforms
            keypoints = keypoints @ world[:, :3, :3].transpose(1, 2) + world[:, None, :3, 3]
        vertices = linear_blend_skinning(rest, self.skin_weights, transforms)
        return HandOutput(vertices, keypoints, transforms, rest, rest_frames)

    def keypoints(
        self,
        pose: Tensor,
        shape: Tensor | None = None,
        global_orient: Tensor | None = None,
        transl: Tensor | None = None,
    ) -> Tensor:
        """(B, 21, 3) keypoints only (no skinned mesh); arguments as in ``forward``."""
        _, shape = self._check(pose, shape)
        rest_base, rest_frames = self.rest_model(shape, pose)
        transforms = self.skinning_transforms(pose, rest_frames)
        keypoints = self.model_keypoints(transforms, rest_frames, rest_base, shape)
        world = self._world(pose, global_orient, transl)
        if world is not None:
            keypoints = keypoints @ world[:, :3, :3].transpose(1, 2) + world[:, None, :3, 3]
        return keypoints

    def _check(self, pose: Tensor, shape: Tensor | None) -> tuple[int, Tensor]:
        if pose.dim() != 3 or pose.shape[1:] != (self.num_pose, 3):
            raise ValueError(f"pose must have shape (B, {self.num_pose}, 3), got {tuple(pose.shape)}")
        b = pose.shape[0]
        if shape is None:
            shape = self.default_shape(1).to(pose)
        if shape.dim() != 2 or shape.shape[1] != self.num_shape or shape.shape[0] not in (1, b):
            raise ValueError(f"shape must have shape ({b} or 1, {self.num_shape}), got {tuple(shape.shape)}")
        return b, shape.expand(b, -1)

    @staticmethod
    def _world(pose: Tensor, global_orient: Tensor | None, transl: Tensor | None) -> Tensor | None:
        """(B, 4, 4) model frame -> camera, or None when neither part is given."""
        if global_orient is None and transl is None:
            return None
        b = pose.shape[0]
        if global_orient is None:
            rotation = torch.eye(3, dtype=pose.dtype, device=pose.device).expand(b, 3, 3)
        else:
            rotation = axis_angle_to_matrix(global_orient)
        if transl is None:
            transl = torch.zeros(b, 3, dtype=pose.dtype, device=pose.device)
        return rigid_transform(rotation, transl)

    def facts(self) -> dict:
        """Counts for ``harp info``."""
        from harp_kaolin.geometry import unique_edges

        return {
            "model": self.name,
            "vertices": self.num_base_vertices,
            "faces": int(self.base_faces.shape[0]),
            "edges": int(unique_edges(self.base_faces.cpu())[0].shape[0]),
            "subdivide": self.subdivision.levels,
            "subdivided_vertices": self.num_vertices,
            "subdivided_faces": int(self.faces.shape[0]),
            "joints": len(self.joint_names),
            "joint_names": list(self.joint_names),
            "pose_joints": [self.joint_names[j] for j in self.pose_joints],
            "shape_parameters": list(self.shape_names),
            "uv_vertices": int(self.base_uvs.shape[0]),
            "subdivided_uv_vertices": int(self.uvs.shape[0]),
            "keypoints": list(HARP21_NAMES),
        }
