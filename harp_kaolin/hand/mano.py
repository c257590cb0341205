"""MANO (right hand) behind the ``HandModel`` interface, from the user's own model file.

MANO's files need registration with their owners, so the user passes the path of their own
``MANO_RIGHT.pkl`` (or a converted ``.npz``). Official pickles contain chumpy arrays; they are read
without chumpy (which does not install on current Python/numpy) by ``load_mano_data``.

Parameterization (documented for users of ``AvatarParams``):
    pose: (B, 15, 3) rotation vectors of the 15 finger joints, each relative to its parent, in MANO's
        joint order (index1-3, middle1-3, little1-3, ring1-3, thumb1-3). smplx's ``use_pca=False`` and
        ``flat_hand_mean=True``: no PCA basis and zero pose = the flat template hand, not MANO's mean pose.
    shape: (B, 10) betas (fewer when the file has fewer shape directions); 0 is the mean shape.
    global_orient / transl: the rigid map from MANO's model frame to camera coordinates. The rotation
        is about the model origin, whereas smplx rotates about the wrist joint ``J0``: smplx's
        ``(global_orient=R, transl=t)`` equals ours with ``transl = t + J0 - R @ J0``.

MANO has pose-corrective blendshapes, so ``rest_model`` returns the shaped template plus the pose
correctives of the given pose: the "rest" mesh that is subdivided, displaced and skinned depends on pose.

Keypoints ("harp21"): MANO's 16 joints (posed by the kinematic chain) and the skinned fingertip vertices
745 (thumb), 317 (index), 444 (middle), 556 (ring), 673 (little). These are the tips HARP and most MANO
code use; smplx's own ``VERTEX_IDS["mano"]`` picks neighbours (744, 320, 443, 554, 671).

UVs: MANO files carry none. They come from an OBJ with MANO's topology (``uv_obj=``) or are generated
once with xatlas and cached in ``uv_cache_dir`` (default ``~/.cache/harp_kaolin``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harp_kaolin.geometry import axis_angle_to_matrix, rigid_transform
from harp_kaolin.hand.base import HandModel, linear_blend_skinning, normalize_uv_layout

NUM_VERTICES = 778
NUM_JOINTS = 16
JOINT_NAMES = (
    "wrist",
    *(f"{finger}{k}" for finger in ("index", "middle", "little", "ring", "thumb") for k in (1, 2, 3)),
)
FINGERTIP_VERTICES = (745, 317, 444, 556, 673)  # thumb, index, middle, ring, little
# Rows of cat([16 MANO joints, 5 tips]) in harp21 order.
HARP21_FROM_MANO = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
REQUIRED_KEYS = ("v_template", "f", "weights", "J_regressor", "kintree_table", "shapedirs", "posedirs")
DEFAULT_UV_CACHE = Path("~/.cache/harp_kaolin")

_NUMPY_NAMES = {"_reconstruct", "scalar", "dtype", "ndarray", "_frombuffer"}
_BUILTIN_NAMES = {"object", "set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool"}
_BUILTIN_NAMES |= {"str", "bytes", "bytearray", "slice"}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _ChumpyStandIn:
    """Takes the place of a chumpy class while unpickling and keeps the pickled state.

    A chumpy ``Ch`` pickles its ``__dict__`` (minus weak references); a plain array's value is in 'x'.
    """

    chumpy_class = "chumpy.ch.Ch"

    def __setstate__(self, state) -> None:
        self.state = state


class _ManoUnpickler(pickle.Unpickler):
    """Unpickler that maps chumpy classes to stand-ins and refuses anything but array data."""

    _stand_ins: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)  # protocol <= 2 pickles name Python 2 modules
        if module == "chumpy" or module.startswith("chumpy."):
            key = f"{module}.{name}"
            if key not in self._stand_ins:
                self._stand_ins[key] = type(name, (_ChumpyStandIn,), {"chumpy_class": key})
            return self._stand_ins[key]
        if module.startswith("scipy.sparse") and name.endswith(("_matrix", "_array")):
            import scipy.sparse

            return getattr(scipy.sparse, name)  # old pickles name modules that newer scipy deprecates
        if module.split(".")[0] == "numpy" and name in _NUMPY_NAMES:
            with contextlib.suppress(ImportError, AttributeError):
                return super().find_class(module.replace("numpy.core", "numpy._core", 1), name)
            return super().find_class(module, name)
        if (module, name) in {("copyreg", "_reconstructor"), ("_codecs", "encode")}:
            return super().find_class(module, name)
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        if module == "builtins" and name in _BUILTIN_NAMES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"unexpected object {module}.{name}: a MANO file holds only numpy arrays, scipy sparse "
            "matrices and chumpy arrays"
        )


def _plain(value, path: Path, key: str):
    """A pickled value with chumpy stand-ins replaced by numpy arrays and sparse matrices made dense."""
    if isinstance(value, _ChumpyStandIn):
        state = getattr(value, "state", None)
        if not isinstance(state, dict) or "x" not in state:
            raise ValueError(
                f"{path}: key {key!r} is a chumpy {value.chumpy_class} expression without a stored value "
                "('x'); only plain chumpy arrays can be read without chumpy"
            )
        return _plain(state["x"], path, key)
    if hasattr(value, "toarray"):  # scipy sparse
        return np.asarray(value.toarray())
    if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 0:
        return _plain(value.item(), path, key)  # a sparse matrix or chumpy array saved in an .npz
    return value


def load_mano_data(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a MANO model file (.pkl, official or chumpy-free, or .npz) without chumpy.

    Args:
        path: the user's MANO_RIGHT.pkl or an .npz with the same keys.

    Returns:
        dict of numpy arrays: v_template (778, 3), f (1538, 3), weights (778, 16), J_regressor (16, 778)
        dense, kintree_table (2, 16), shapedirs (778, 3, S), posedirs (778, 3, 135), and hands_components
        (45, 45) / hands_mean (45,) (zeros when the file lacks them; unused with a flat, non-PCA pose).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read, or its keys or shapes are not MANO's.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"MANO model file not found: {path} (pass model_path= to your own MANO_RIGHT.pkl or .npz; "
            "MANO files need registration at https://mano.is.tue.mpg.de)"
        )
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=True) as npz:
                raw = {k: npz[k] for k in npz.files}
        else:
            with open(path, "rb") as f:
                raw = _ManoUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise ValueError(f"cannot read MANO model file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"MANO model file {path} holds a {type(raw).__name__}, expected a dict of arrays")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"MANO model file {path} lacks the keys {missing}; it has {sorted(raw)}")
    data = {k: np.asarray(_plain(raw[k], path, k)) for k in REQUIRED_KEYS}
    for key, default in (("hands_components", np.zeros((45, 45))), ("hands_mean", np.zeros(45))):
        data[key] = np.asarray(_plain(raw[key], path, key)) if key in raw else default
    _check_shapes(data, path)
    return data


def _check_shapes(data: dict[str, np.ndarray], path: Path) -> None:
    v, j = NUM_VERTICES, NUM_JOINTS
    expected = {
        "v_template": (v, 3),
        "f": (None, 3),
        "weights": (v, j),
        "J_regressor": (j, v),
        "kintree_table": (2, j),
        "shapedirs": (v, 3, None),
        "posedirs": (v, 3, 9 * (j - 1)),
    }
    for key, shape in expected.items():
        got = data[key].shape
        if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
            want = "(" + ", ".join("N" if e is None else str(e) for e in shape) + ")"
            raise ValueError(f"MANO model file {path}: {key} must have shape {want}, got {got}")
    faces = data["f"]
    if faces.min() < 0 or faces.max() >= v:
        raise ValueError(f"MANO model file {path}: f indexes vertices outside [0, {v})")
    parents = data["kintree_table"][0].astype(np.int64)
    if any(not 0 <= parents[k] < k for k in range(1, j)):
        raise ValueError(f"MANO model file {path}: kintree_table parents must precede their children")


def _read_obj_uvs(path: Path, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, 2) UVs and (F, 3) UV indices of an OBJ whose faces must be MANO's."""
    if not path.is_file():
        raise FileNotFoundError(f"uv_obj not found: {path}")
    uvs, face_v, face_vt = [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "vt":
            uvs.append([float(parts[1]), float(parts[2])])
        elif parts[0] == "f":
            corners = [p.split("/") for p in parts[1:]]
            if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                raise ValueError(f"uv_obj {path}: faces must be triangles written as v/vt, got {line!r}")
            face_v.append([int(c[0]) - 1 for c in corners])
            face_vt.append([int(c[1]) - 1 for c in corners])
    face_v, face_vt = (
        np.asarray(face_v, np.int64).reshape(-1, 3),
        np.asarray(face_vt, np.int64).reshape(-1, 3),
    )
    if face_v.shape != faces.shape or not np.array_equal(face_v, faces):
        if face_v.shape != faces.shape:
            detail = f"{face_v.shape[0]} faces, MANO has {faces.shape[0]}"
        else:
            i = int(np.flatnonzero((face_v != faces).any(1))[0])
            detail = f"face {i} is {face_v[i].tolist()} (0-based), MANO's is {faces[i].tolist()}"
        raise ValueError(f"uv_obj {path} does not have MANO's faces: {detail}")
    if not uvs or face_vt.min() < 0 or face_vt.max() >= len(uvs):
        raise ValueError(f"uv_obj {path}: face texture indices outside its {len(uvs)} vt lines")
    return np.asarray(uvs, np.float32), face_vt


def _xatlas_uvs(vertices: np.ndarray, faces: np.ndarray, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(U, 2) UVs and (F, 3) UV indices from xatlas, cached by a hash of the mesh."""
    vertices, faces = vertices.astype(np.float32), faces.astype(np.uint32)
    digest = hashlib.sha1(vertices.tobytes() + faces.tobytes()).hexdigest()[:16]
    cache = cache_dir.expanduser() / f"mano_uv_{digest}.npz"
    if cache.is_file():
        with np.load(cache) as npz:
            return npz["uvs"], npz["face_uvs"]
    import xatlas

    vmapping, face_uvs, uvs = xatlas.parametrize(vertices, faces)
    if not np.array_equal(vmapping[face_uvs], faces):
        raise RuntimeError("xatlas reordered MANO's faces; cannot use its UVs")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, uvs=uvs.astype(np.float32), face_uvs=face_uvs.astype(np.int64))
    os.replace(tmp, cache)
    return uvs, face_uvs.astype(np.int64)


class ManoHand(HandModel):
    """smplx MANO (right hand) behind the ``HandModel`` interface.

    Args:
        model_path: the user's MANO_RIGHT.pkl (official, with chumpy objects, or plain) or .npz.
        subdivide: levels of midpoint subdivision of the returned mesh.
        uv_obj: optional OBJ with MANO's faces whose ``vt`` give the UV layout.
        uv_cache_dir: where generated UVs are cached when ``uv_obj`` is not given.
        uv_margin: border left free in the normalized UV layout.
    """

    name = "mano"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        subdivide: int = 0,
        uv_obj: str | os.PathLike | None = None,
        uv_cache_dir: str | os.PathLike | None = None,
        uv_margin: float = 0.01,
    ) -> None:
        super().__init__()
        if model_path is None:
            raise ValueError("the MANO hand model needs model_path= to your own MANO_RIGHT.pkl or .npz")
        data = load_mano_data(model_path)
        import smplx
        from smplx.utils import Struct

        # smplx converts the arrays (posedirs to (135, 3V), parents from kintree_table); no learnable
        # members are created, and its "only 10 shape coefficients" notice is silenced.
        with contextlib.redirect_stdout(io.StringIO()):
            mano = smplx.MANO(
                str(model_path),
                is_rhand=True,
                data_struct=Struct(**data),
                use_pca=False,
                flat_hand_mean=True,
                create_global_orient=False,
                create_hand_pose=False,
                create_betas=False,
                create_transl=False,
                create_body_pose=False,
            )
        for key in ("v_template", "shapedirs", "posedirs", "J_regressor"):
            self.register_buffer(key, getattr(mano, key).float(), persistent=False)
        self.joint_names = list(JOINT_NAMES)
        self.joint_parents = [int(p) for p in mano.parents]
        self.pose_joints = list(range(1, NUM_JOINTS))
        self.shape_names = [f"beta{i}" for i in range(mano.num_betas)]

        faces = data["f"].astype(np.int64)
        if uv_obj is not None:
            uvs, face_uvs = _read_obj_uvs(Path(uv_obj).expanduser(), faces)
        else:
            cache_dir = Path(uv_cache_dir) if uv_cache_dir is not None else DEFAULT_UV_CACHE
            uvs, face_uvs = _xatlas_uvs(data["v_template"], faces, cache_dir)
        uvs, scale, offset = normalize_uv_layout(torch.from_numpy(np.asarray(uvs, np.float32)), uv_margin)
        self._set_mesh(
            torch.from_numpy(faces),
            uvs,
            torch.from_numpy(np.asarray(face_uvs, np.int64)),
            mano.lbs_weights.double(),
            subdivide,
            scale,
            offset,
        )

    def rest_model(self, shape: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        shaped = self.v_template + torch.einsum("bl,vkl->bvk", shape, self.shapedirs)
        joints = torch.einsum("jv,bvk->bjk", self.J_regressor, shaped)
        eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
        pose_feature = (axis_angle_to_matrix(pose) - eye).reshape(pose.shape[0], -1)  # (B, 135)
        rest = shaped + (pose_feature @ self.posedirs).reshape(pose.shape[0], -1, 3)
        frames = rigid_transform(eye.expand(*joints.shape[:2], 3, 3), joints)
        return rest, frames

    def skinning_transforms(self, pose: Tensor, rest_joint_frames: Tensor) -> Tensor:
        joints = rest_joint_frames[:, :, :3, 3]
        parents = self.joint_parents
        eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
        rotations = torch.cat([eye.expand(pose.shape[0], 1, 3, 3), axis_angle_to_matrix(pose)], dim=1)
        offsets = torch.cat([joints[:, :1], joints[:, 1:] - joints[:, parents[1:]]], dim=1)
        local = rigid_transform(rotations, offsets)
        world = [local[:, 0]]
        for j in range(1, len(parents)):
            world.append(world[parents[j]] @ local[:, j])
        world = torch.stack(world, dim=1)
        return world @ rigid_transform(eye.expand_as(world[..., :3, :3]), -joints)

    def model_keypoints(
        self, transforms: Tensor, rest_joint_frames: Tensor, rest_vertices: Tensor, shape: Tensor
    ) -> Tensor:
        joints = transforms[..., :3, 3] + (transforms[..., :3, :3] @ rest_joint_frames[..., :3, 3:])[..., 0]
        tips = list(FINGERTIP_VERTICES)
        posed_tips = linear_blend_skinning(
            rest_vertices[:, tips], self.base_skin_weights[tips].to(rest_vertices), transforms
        )
        return torch.cat([joints, posed_tips], dim=1)[:, list(HARP21_FROM_MANO)]
