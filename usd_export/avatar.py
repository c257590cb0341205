"""What an export needs from an avatar, in one frozen dataclass, and the conventions shared by the writers.

Coordinates. The asset holds the project's own frames: the rest (bind) pose in the hand model's frame and
the animation in camera coordinates (OpenCV: x right, y down, z forward). Writers turn camera coordinates
into USD / glTF space (Y up, right-handed, meters) with ``CAMERA_TO_USD``, a 180 degree rotation about x:
(x, y, z) -> (x, -y, -z). It is a proper rotation (det +1), so face winding and handedness are kept; it is
applied to every camera-space point, normal and transform. The rest (bind) pose is written in the model
frame turned Y up by ``model_to_usd``: anny's frame is Z up (Blender's convention), so
``MODEL_TO_USD["anny"]`` is a -90 degree rotation about x, (x, y, z) -> (x, z, -y); other models get the
identity. UsdSkel's skinning transforms absorb this map, so posed points do not depend on it.

Skinning. ``joint_transforms[t, j]`` maps rest model-frame points to camera coordinates (``HandOutput``):
posed = sum_j w_j * joint_transforms[t, j] @ rest. The joint's world frame at frame t is therefore
``joint_transforms[t, j] @ bind_transforms[j]`` (``joint_world_transforms``).

Dimension names: T frames, V vertices, F faces, U uv vertices, J joints, P posed joints, H W image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

CAMERA_TO_USD = np.diag([1.0, -1.0, -1.0, 1.0])  # (4, 4) OpenCV camera -> Y up: 180 degrees about x
Z_UP_TO_Y_UP = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])  # -90 degrees about x
MODEL_TO_USD = {"anny": Z_UP_TO_Y_UP, "anny_arm": Z_UP_TO_Y_UP}  # hand model name -> (4, 4); default identity


@dataclass(frozen=True, eq=False)
class AvatarAsset:
    """A skinned, textured, animated hand, as the exporters need it (numpy, float64 geometry).

    Attributes:
        rest_points: (V, 3) personalized rest mesh (subdivided, displaced) in the model frame, meters.
        faces: (F, 3) vertex indices, counter-clockwise seen from outside.
        uvs: (U, 2) texture coordinates, v up (row 0 of an image is v = 1).
        face_uvs: (F, 3) indices into ``uvs`` per face corner.
        skin_weights: (V, J) skinning weights, rows summing to 1.
        joint_names: J joint names (any characters; writers make USD-safe joint paths from them).
        joint_parents: J parent indices, -1 for the root; parents come before their children.
        bind_transforms: (J, 4, 4) world frame of each joint in the rest pose (model frame).
        joint_transforms: (T, J, 4, 4) per-frame skinning transforms, rest model frame -> camera.
        normals: (V, 3) unit rest-mesh vertex normals, or None (writers then compute them).
        albedo: (H, W, 3) albedo image, uint8 or float in [0, 1], or None.
        normal_map: (H, W, 3) tangent-space normal map encoded as (n + 1) / 2, uint8 or float, or None.
        fps: frame rate of the animation.
        model_to_usd: (4, 4) rotation from the model frame to USD space (Y up) for the rest pose.
    """

    rest_points: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    face_uvs: np.ndarray
    skin_weights: np.ndarray
    joint_names: tuple[str, ...]
    joint_parents: tuple[int, ...]
    bind_transforms: np.ndarray
    joint_transforms: np.ndarray
    normals: np.ndarray | None = None
    albedo: np.ndarray | None = None
    normal_map: np.ndarray | None = None
    fps: float = 30.0
    model_to_usd: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self) -> None:
        v, f, j = len(self.rest_points), len(self.faces), len(self.joint_names)
        expect = {
            "rest_points": (self.rest_points, (v, 3)),
            "faces": (self.faces, (f, 3)),
            "uvs": (self.uvs, (len(self.uvs), 2)),
            "face_uvs": (self.face_uvs, (f, 3)),
            "skin_weights": (self.skin_weights, (v, j)),
            "bind_transforms": (self.bind_transforms, (j, 4, 4)),
            "joint_transforms": (self.joint_transforms, (len(self.joint_transforms), j, 4, 4)),
            "normals": (self.normals, (v, 3)),
            "model_to_usd": (self.model_to_usd, (4, 4)),
        }
        for name, (value, shape) in expect.items():
            if value is not None and np.shape(value) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {np.shape(value)}")
        if len(self.joint_parents) != j:
            raise ValueError(
                f"joint_parents must have {j} entries (one per joint), got {len(self.joint_parents)}"
            )
        for k, p in enumerate(self.joint_parents):
            if not (p == -1 if k == 0 else 0 <= p < k):
                raise ValueError(
                    f"joint_parents must list parents before children with -1 at 0, got {p} at {k}"
                )
        if len(self.joint_transforms) == 0:
            raise ValueError("joint_transforms must hold at least one frame")
        for name in ("albedo", "normal_map"):
            image = getattr(self, name)
            if image is not None and (image.ndim != 3 or image.shape[2] != 3):
                raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    @property
    def num_frames(self) -> int:
        return len(self.joint_transforms)

    @property
    def joint_world_transforms(self) -> np.ndarray:
        """(T, J, 4, 4) world frame of each joint per frame, camera coordinates."""
        return self.joint_transforms @ self.bind_transforms

    def rest_points_usd(self) -> np.ndarray:
        """(V, 3) rest mesh in USD space (``model_to_usd`` applied)."""
        return self.rest_points @ self.model_to_usd[:3, :3].T + self.model_to_usd[:3, 3]

    def rest_normals(self) -> np.ndarray:
        """(V, 3) unit vertex normals of the rest mesh (area-weighted face normals when not given)."""
        return vertex_normals(self.rest_points, self.faces) if self.normals is None else self.normals

    def posed_points(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(T, V, 3) linear blend skinning in camera coordinates, with ``weights`` (V, J) or the asset's."""
        w = self.skin_weights if weights is None else weights
        blended = np.einsum("vj,tjkl->tvkl", w, self.joint_transforms[:, :, :3, :])  # (T, V, 3, 4)
        return np.einsum("tvkl,vl->tvk", blended[..., :3], self.rest_points) + blended[..., 3]


def vertex_normals(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit vertex normals: sums of the area-weighted normals of the faces around each vertex."""
    tri = points[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(points)
    for k in range(3):
        np.add.at(n, faces[:, k], face_n)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def truncate_weights(weights: np.ndarray, max_influences: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Keep the largest ``max_influences`` weights per vertex and renormalize them.

    Args:
        weights: (V, J) skinning weights.
        max_influences: influences kept per vertex; None keeps every joint with a non-zero weight
            (the largest count over vertices), which reproduces the weights exactly.

    Returns:
        indices (V, K) int32 and weights (V, K) float32 rows summing to 1, sorted by decreasing weight;
        padding entries have weight 0 and index 0.
    """
    if weights.ndim != 2:
        raise ValueError(f"weights must have shape (V, J), got {weights.shape}")
    k = int((weights > 0).sum(1).max()) if max_influences is None else int(max_influences)
    if k < 1:
        raise ValueError(f"max_influences must be at least 1, got {max_influences}")
    k = min(k, weights.shape[1])
    order = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(weights, order, axis=1).astype(np.float64)
    kept = np.where(kept > 0, kept, 0.0)
    kept /= np.maximum(kept.sum(1, keepdims=True), 1e-12)
    order = np.where(kept > 0, order, 0)
    return order.astype(np.int32), kept.astype(np.float32)


def dense_weights(indices: np.ndarray, weights: np.ndarray, num_joints: int) -> np.ndarray:
    """(V, J) dense weights from per-vertex (V, K) joint indices and weights."""
    dense = np.zeros((len(indices), num_joints))
    np.add.at(dense, (np.arange(len(indices))[:, None], indices), weights)
    return dense


def image_hwc(image, name: str) -> np.ndarray | None:
    """(H, W, 3) numpy image from (H, W, 3) arrays / tensors or (3, H, W) / (1, 3, H, W) tensors."""
    if image is None:
        return None
    channel_first = hasattr(image, "detach")
    if channel_first:
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if channel_first and image.ndim == 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) image or a (1, 3, H, W) / (3, H, W) tensor")
    return image if image.dtype == np.uint8 else image.astype(np.float32)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


def asset_from_hand(
    hand,
    pose,
    shape=None,
    global_orient=None,
    transl=None,
    displacement=None,
    albedo=None,
    normal_map=None,
    fps: float = 30.0,
) -> AvatarAsset:
    """Run a hand model over a sequence and collect what export needs.

    Args:
        hand: a ``HandModel`` (e.g. ``load_hand("anny", subdivide=1)``).
        pose: (T, P, 3) per-frame rotation vectors of the posed joints.
        shape: (1, S) shape parameters shared by all frames, or None for the mean shape.
        global_orient: (T, 3) rotation vectors, model frame -> camera; None for identity.
        transl: (T, 3) translations to camera coordinates, meters; None for zero.
        displacement: (V,) offsets along the rest normals, meters, shared by all frames.
        albedo: (H, W, 3) image or (1, 3, H, W) tensor, float in [0, 1] or uint8; None for none.
        normal_map: encoded tangent-space normal map ((n + 1) / 2), same layouts as ``albedo``.
        fps: frame rate of the sequence.

    Returns:
        The AvatarAsset.
    """
    import torch

    ref = hand.skin_weights

    def as_t(x):
        return None if x is None else torch.as_tensor(x, dtype=ref.dtype, device=ref.device)

    pose, shape, global_orient, transl, displacement = map(
        as_t, (pose, shape, global_orient, transl, displacement)
    )
    if shape is not None and shape.shape[0] != 1:
        raise ValueError(
            f"shape must have shape (1, S): one shape for the whole avatar, got {tuple(shape.shape)}"
        )
    if displacement is not None and displacement.dim() != 1:
        raise ValueError(f"displacement must have shape (V,), got {tuple(displacement.shape)}")
    with torch.no_grad():
        out = hand(pose, shape, global_orient, transl, displacement)
    rest = _numpy(out.rest_vertices[0])
    faces = hand.faces.cpu().numpy().astype(np.int64)
    return AvatarAsset(
        rest_points=rest,
        faces=faces,
        uvs=_numpy(hand.uvs),
        face_uvs=hand.face_uvs.cpu().numpy().astype(np.int64),
        skin_weights=_numpy(hand.skin_weights),
        joint_names=tuple(hand.joint_names),
        joint_parents=tuple(int(p) for p in hand.joint_parents),
        bind_transforms=_numpy(out.rest_joint_frames[0]),
        joint_transforms=_numpy(out.joint_transforms),
        normals=vertex_normals(rest, faces),
        albedo=image_hwc(albedo, "albedo"),
        normal_map=image_hwc(normal_map, "normal_map"),
        fps=float(fps),
        model_to_usd=MODEL_TO_USD.get(hand.name, np.eye(4)),
    )


def asset_from_params(arrays: Mapping[str, np.ndarray], hand=None) -> AvatarAsset:
    """AvatarAsset from the arrays of an avatar folder's ``params.npz`` (``AvatarParams`` groups).

    Args:
        arrays: pose (T, P, 3), global_orient (T, 3), transl (T, 3), shape (1, S), displacement (V,),
            albedo (1, 3, H, W) in [0, 1], normal_map (1, 3, H, W) tangent-space vectors; optional
            model, subdivide and fps scalars.
        hand: the hand model; None loads ``arrays["model"]`` with ``arrays["subdivide"]`` levels.
    """
    import torch

    if hand is None:
        from harp_kaolin.hand import load_hand

        hand = load_hand(str(arrays["model"]), subdivide=int(arrays["subdivide"]))
    albedo = np.clip(arrays["albedo"][0].transpose(1, 2, 0), 0.0, 1.0)
    normals = torch.nn.functional.normalize(torch.as_tensor(arrays["normal_map"]).float(), dim=1, eps=1e-6)
    normal_map = ((normals[0].permute(1, 2, 0).numpy() + 1.0) * 0.5).astype(np.float32)
    return asset_from_hand(
        hand,
        arrays["pose"],
        arrays["shape"],
        arrays["global_orient"],
        arrays["transl"],
        arrays["displacement"],
        albedo=albedo,
        normal_map=normal_map,
        fps=float(arrays["fps"]) if "fps" in arrays else 30.0,
    )
