"""USD / glb export of a skinned, textured, animated anny hand: validation, UsdSkel round trip, textures.

Measured on this suite's sequence (6 frames, finger poses ~ N(0, 0.35 rad) per axis, random global motion,
+-3 mm displacement, anny subdivided once: at most 7 influences per vertex); ``pytest -s`` prints them:
- UsdSkel vs the project's LBS with the same (exported, 4-influence) weights: max 1.2e-7 m, in all formats;
- exact weights (max_influences=None) vs ``hand(...).vertices``: max 1.6e-7 m;
- 4 influences vs the untruncated mesh: max 6.7 mm, mean 0.054 mm, 6.9 % of vertex-frames over 0.1 mm
  (530 of 6413 vertices have more than 4 non-zero weights; up to 22 % of a vertex's weight is dropped).
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch

from usd_export import (
    CAMERA_TO_USD,
    AvatarAsset,
    asset_from_hand,
    cli_export,
    dense_weights,
    export_avatar,
    export_glb,
    truncate_weights,
    validate_usd,
)
from usd_export.avatar import Z_UP_TO_Y_UP
from usd_export.usd import DEFAULT_INFLUENCES

pxr = pytest.importorskip("pxr", reason="usd-core is not installed")

ROUND_TRIP_TOL = 1e-4  # meters: UsdSkel skinned points vs the project's posed mesh
FRAMES = 6
TEX = 64
R_USD = CAMERA_TO_USD[:3, :3]


@pytest.fixture(scope="module")
def sequence(anny_hand_sub):
    hand = anny_hand_sub
    g = torch.Generator().manual_seed(0)
    pose = torch.randn(FRAMES, hand.num_pose, 3, generator=g) * 0.35
    global_orient = torch.randn(FRAMES, 3, generator=g) * 0.8
    transl = torch.randn(FRAMES, 3, generator=g) * 0.05 + torch.tensor([0.0, 0.0, 0.5])
    displacement = (torch.rand(hand.num_vertices, generator=g) * 2 - 1) * 0.003
    rng = np.random.default_rng(0)
    albedo = rng.integers(0, 256, (TEX, TEX, 3), dtype=np.uint8)
    n = rng.normal(size=(TEX, TEX, 3)) * [0.3, 0.3, 1.0]
    n[..., 2] = np.abs(n[..., 2])
    normal_map = ((n / np.linalg.norm(n, axis=-1, keepdims=True) + 1) * 127.5).round().astype(np.uint8)
    asset = asset_from_hand(hand, pose, None, global_orient, transl, displacement, albedo, normal_map)
    with torch.no_grad():
        posed = hand(pose, None, global_orient, transl, displacement).vertices.double().numpy()
    return {"hand": hand, "asset": asset, "posed_usd": posed @ R_USD.T}


@pytest.fixture(scope="module")
def exported(sequence, tmp_path_factory):
    out = tmp_path_factory.mktemp("usd")
    asset = sequence["asset"]
    files = {fmt: export_avatar(asset, out / fmt / f"avatar.{fmt}") for fmt in ("usda", "usdc", "usdz")}
    files["exact"] = export_avatar(asset, out / "exact" / "avatar.usdc", max_influences=None)
    return files


def skinned_points(path, times) -> np.ndarray:
    """(len(times), V, 3) points skinned by UsdSkel from the file alone."""
    from pxr import Usd, UsdGeom, UsdSkel

    stage = Usd.Stage.Open(str(path))
    cache = UsdSkel.Cache()
    root = UsdSkel.Root(stage.GetDefaultPrim())
    assert cache.Populate(root, Usd.TraverseInstanceProxies())
    skel = cache.GetSkelQuery(UsdSkel.Skeleton(stage.GetPrimAtPath(root.GetPath().AppendChild("Skeleton"))))
    mesh_prim = stage.GetPrimAtPath(root.GetPath().AppendChild("Mesh"))
    query = cache.GetSkinningQuery(mesh_prim)
    rest = UsdGeom.Mesh(mesh_prim).GetPointsAttr().Get()
    out = []
    for t in times:
        points = type(rest)(rest)  # ComputeSkinnedPoints works in place
        assert query.ComputeSkinnedPoints(skel.ComputeSkinningTransforms(t), points, t)
        out.append(np.asarray(points, dtype=np.float64))
    return np.stack(out)


@pytest.mark.parametrize("fmt", ["usda", "usdc", "usdz"])
def test_usd_validation_has_no_errors(exported, fmt):
    report = validate_usd(exported[fmt])
    print(
        f"\n{fmt}: {len(report.validators)} validators, {len(report.errors)} errors, "
        f"warnings {report.warnings}"
    )
    assert "usdShadeValidators:NormalMapTextureValidator" in report.validators
    assert "usdUtilsValidators:UsdzPackageValidator" in report.validators
    assert report.errors == []


def test_validation_is_not_vacuous(exported, tmp_path):
    from pxr import Sdf

    layer = Sdf.Layer.OpenAsAnonymous(str(exported["usda"]))
    layer.pseudoRoot.ClearInfo("metersPerUnit")
    layer.GetAttributeAtPath("/Hand/Materials/Skin/NormalTexture.inputs:sourceColorSpace").default = "sRGB"
    reader = layer.GetPrimAtPath("/Hand/Materials/Skin/StReader")
    reader.RemoveProperty(reader.properties["inputs:varname"])
    Sdf.AttributeSpec(reader, "inputs:varname", Sdf.ValueTypeNames.Token).default = "st"
    broken = exported["usda"].parent / "broken.usda"
    layer.Export(str(broken))
    errors = "\n".join(validate_usd(broken).errors)
    assert "metersPerUnit" in errors and "sourceColorSpace" in errors
    assert "inputs:varname. Expected 'string'; got 'token'" in errors


def test_stage_layout_and_metadata(exported, sequence):
    from pxr import Sdf, Usd, UsdGeom, UsdShade, UsdSkel

    asset = sequence["asset"]
    stage = Usd.Stage.Open(str(exported["usda"]))
    assert stage.GetDefaultPrim().GetPath() == Sdf.Path("/Hand")
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode()) == (0, FRAMES - 1)
    assert stage.GetTimeCodesPerSecond() == stage.GetFramesPerSecond() == 30
    anim = UsdSkel.Animation(stage.GetPrimAtPath("/Hand/Animation"))
    assert anim.GetRotationsAttr().GetTimeSamples() == list(range(FRAMES))
    skel = UsdSkel.Skeleton(stage.GetPrimAtPath("/Hand/Skeleton"))
    assert list(skel.GetJointNamesAttr().Get()) == list(asset.joint_names)
    assert str(skel.GetJointsAttr().Get()[2]) == "root/wrist_R/finger1_1_R"
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Hand/Mesh"))
    assert mesh.GetSubdivisionSchemeAttr().Get() == UsdGeom.Tokens.none
    assert mesh.GetNormalsInterpolation() == UsdGeom.Tokens.vertex
    rest = np.asarray(mesh.GetPointsAttr().Get())
    np.testing.assert_allclose(rest, asset.rest_points @ Z_UP_TO_Y_UP[:3, :3].T, atol=1e-6)
    # anny's rest hand in Y-up USD hangs beside the body: fingers down (-y) from the wrist.
    wrist_y = np.asarray(skel.GetBindTransformsAttr().Get())[1][3, 1]
    assert rest[:, 1].max() - wrist_y < 0.03 and wrist_y - rest[:, 1].min() > 0.1
    st = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st")
    assert st.GetInterpolation() == UsdGeom.Tokens.faceVarying
    varname = UsdShade.Shader(stage.GetPrimAtPath("/Hand/Materials/Skin/StReader")).GetInput("varname")
    assert varname.GetTypeName() == Sdf.ValueTypeNames.String and varname.Get() == "st"
    normal_tex = UsdShade.Shader(stage.GetPrimAtPath("/Hand/Materials/Skin/NormalTexture"))
    assert normal_tex.GetInput("sourceColorSpace").Get() == "raw"
    assert tuple(normal_tex.GetInput("scale").Get()) == (2, 2, 2, 1)
    assert tuple(normal_tex.GetInput("bias").Get()) == (-1, -1, -1, 0)
    assert normal_tex.GetInput("file").Get().path == "./textures/normal.png"
    assert (exported["usda"].parent / "textures" / "albedo.png").is_file()


def test_round_trip_exact_weights_matches_hand(exported, sequence):
    times = [0, 2, 3, FRAMES - 1]
    usd = skinned_points(exported["exact"], times)
    err = np.linalg.norm(usd - sequence["posed_usd"][times], axis=-1)
    print(f"\nexact weights: UsdSkel vs hand(...).vertices max {err.max():.2e} m, mean {err.mean():.2e} m")
    assert err.max() < ROUND_TRIP_TOL


@pytest.mark.parametrize("fmt", ["usda", "usdc", "usdz"])
def test_round_trip_default_influences(exported, sequence, fmt):
    """The default influence count keeps every weight of anny's subdivided hand: the export is exact."""
    asset = sequence["asset"]
    indices, weights = truncate_weights(asset.skin_weights, DEFAULT_INFLUENCES)
    reference = asset.posed_points(dense_weights(indices, weights, len(asset.joint_names))) @ R_USD.T
    times = [0, 1, 4, FRAMES - 1]
    usd = skinned_points(exported[fmt], times)
    err = np.linalg.norm(usd - reference[times], axis=-1)
    full = np.linalg.norm(reference - sequence["posed_usd"], axis=-1)
    print(
        f"\n{fmt}: UsdSkel vs LBS with the exported weights max {err.max():.2e} m; exported weights vs "
        f"full weights max {full.max() * 1e3:.6f} mm"
    )
    assert err.max() < ROUND_TRIP_TOL
    assert full.max() < ROUND_TRIP_TOL


def test_truncate_weights():
    w = np.array([[0.1, 0.2, 0.3, 0.4, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    idx, kept = truncate_weights(w, 2)
    np.testing.assert_array_equal(idx, [[3, 2], [2, 0]])
    np.testing.assert_allclose(kept, [[4 / 7, 3 / 7], [1.0, 0.0]], rtol=1e-6)
    idx, kept = truncate_weights(w, None)
    assert idx.shape == (2, 4)
    np.testing.assert_allclose(dense_weights(idx, kept, 5), w, atol=1e-7)


def test_usdz_textures_resolve_and_uv_round_trip(exported, sequence):
    from PIL import Image
    from pxr import Ar, Usd, UsdGeom, UsdShade

    asset, hand = sequence["asset"], sequence["hand"]
    stage = Usd.Stage.Open(str(exported["usdz"]))
    images = {}
    for name in ("AlbedoTexture", "NormalTexture"):
        file = UsdShade.Shader(stage.GetPrimAtPath(f"/Hand/Materials/Skin/{name}")).GetInput("file").Get()
        assert file.resolvedPath.startswith(str(exported["usdz"]) + "[textures/")
        data = Ar.GetResolver().OpenAsset(Ar.ResolvedPath(file.resolvedPath)).GetBuffer()
        images[name] = np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))
    np.testing.assert_array_equal(images["AlbedoTexture"], asset.albedo)
    np.testing.assert_array_equal(images["NormalTexture"], asset.normal_map)

    # The texel under each vertex's exported st (faceVarying corners, in the usdz) is the texel under the
    # vertex's UV in the project's layout (v up: row 0 of the image is v = 1).
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Hand/Mesh"))
    st = np.asarray(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st").ComputeFlattened(), dtype=np.float64)
    corners = np.asarray(mesh.GetFaceVertexIndicesAttr().Get())
    ours = hand.uvs.double().numpy()[hand.face_uvs.numpy().ravel()]
    np.testing.assert_array_equal(corners, hand.faces.numpy().ravel())
    np.testing.assert_allclose(st, ours, atol=1e-7)

    def nearest(image, uv):
        rows = np.clip(((1 - uv[:, 1]) * TEX).astype(int), 0, TEX - 1)
        cols = np.clip((uv[:, 0] * TEX).astype(int), 0, TEX - 1)
        return image[rows, cols]

    np.testing.assert_array_equal(nearest(images["AlbedoTexture"], st), nearest(asset.albedo, ours))
    texture = pytest.importorskip("harp_kaolin.render.texture", reason="project sampler not available")

    def bilinear(image, uv):
        t = torch.from_numpy(image.astype(np.float64) / 255).permute(2, 0, 1)[None]
        return texture.sample_texture(t, torch.from_numpy(uv)[None])[0].numpy()

    np.testing.assert_allclose(bilinear(images["AlbedoTexture"], st), bilinear(asset.albedo, ours), atol=1e-6)


def test_glb_first_frame_and_rest(sequence, tmp_path):
    import trimesh

    asset = sequence["asset"]
    for frame, expected in ((0, sequence["posed_usd"][0]), (None, asset.rest_points_usd())):
        path = export_glb(asset, tmp_path / f"hand_{frame}.glb", frame=frame)
        mesh = trimesh.load(path, force="mesh", process=False)
        assert len(mesh.faces) == len(asset.faces)
        # Every glb vertex sits at one of the mesh's vertices, with that vertex's uv.
        corner_vertex = asset.faces.ravel()
        glb_corner = mesh.faces.ravel()
        np.testing.assert_allclose(mesh.vertices[glb_corner], expected[corner_vertex], atol=1e-5)
        uv = asset.uvs[asset.face_uvs.ravel()]
        np.testing.assert_allclose(mesh.visual.uv[glb_corner], uv, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(mesh.visual.material.baseColorTexture), asset.albedo)


def test_cli_export_avatar_folder(sequence, tmp_path):
    """`harp export AVATAR --format usdz` on an avatar folder built here (params.npz as `harp fit` has it)."""
    from pxr import Usd

    hand = sequence["hand"]
    g = torch.Generator().manual_seed(1)
    arrays = {
        "pose": (torch.randn(3, hand.num_pose, 3, generator=g) * 0.2).numpy(),
        "global_orient": (torch.randn(3, 3, generator=g) * 0.3).numpy(),
        "transl": np.tile([0.0, 0.0, 0.5], (3, 1)).astype(np.float32),
        "shape": np.zeros((1, hand.num_shape), np.float32),
        "displacement": np.zeros(hand.num_vertices, np.float32),
        "albedo": np.full((1, 3, 16, 16), 0.6, np.float32),
        "normal_map": np.tile(np.array([0.0, 0.0, 1.0], np.float32)[None, :, None, None], (1, 1, 16, 16)),
        "light": np.zeros(3, np.float32),
        "ambient": np.zeros(1, np.float32),
        "model": np.array("anny"),
        "subdivide": np.array(1),
        "fps": np.array(24.0),
    }
    np.savez(tmp_path / "params.npz", **arrays)
    path = cli_export(tmp_path, "usdz")
    assert path == tmp_path / "avatar.usdz"
    assert validate_usd(path).errors == []
    stage = Usd.Stage.Open(str(path))
    assert stage.GetEndTimeCode() == 2 and stage.GetTimeCodesPerSecond() == 24
    assert cli_export(sequence["asset"], out=tmp_path / "x.glb").is_file()
    with pytest.raises(ValueError, match="format"):
        cli_export(tmp_path, "obj")
    with pytest.raises(ValueError, match=r"\.usdc"):
        cli_export(tmp_path, "usdc", tmp_path / "x.usda")
    with pytest.raises(FileNotFoundError, match="params.npz"):
        cli_export(tmp_path / "missing", "usda")


def test_missing_pxr_gives_install_hint(sequence, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pxr", None)
    with pytest.raises(ImportError, match="pip install usd-core"):
        export_avatar(sequence["asset"], tmp_path / "a.usda")


def test_asset_checks_name_the_argument(sequence):
    asset = sequence["asset"]
    fields = {k: getattr(asset, k) for k in AvatarAsset.__dataclass_fields__}
    with pytest.raises(ValueError, match="skin_weights"):
        AvatarAsset(**{**fields, "skin_weights": asset.skin_weights[:, :3]})
    with pytest.raises(ValueError, match="joint_parents"):
        AvatarAsset(**{**fields, "joint_parents": (-1, 2, *asset.joint_parents[2:])})
    with pytest.raises(ValueError, match="albedo"):
        AvatarAsset(**{**fields, "albedo": asset.albedo[..., :2]})
