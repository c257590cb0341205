"""Analysis-by-synthesis fitting: Adam over the stages of the config, with checkpoints and resume.

Every stage is a ``StageConfig`` (parameter groups with learning rates, loss weights, epochs); an epoch
is one pass over all frames in minibatches. A checkpoint is written atomically at the end of every epoch
and on Ctrl-C; ``resume=True`` continues from it and ends with the same parameters as an uninterrupted
run (minibatch order and random offsets are derived from (seed, stage, epoch, step), not from global
random state). A non-finite loss or gradient skips the step with a warning; ``max_bad_steps`` in a row
stop the fit with the last good checkpoint kept.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from harp_kaolin.config import FitConfig, StageConfig, to_dict
from harp_kaolin.data import Sequence
from harp_kaolin.fit import losses as L
from harp_kaolin.fit.init import InitResult
from harp_kaolin.fit.params import AvatarParams
from harp_kaolin.io import atomic_torch_save

CHECKPOINT = "last.pt"


class FitError(RuntimeError):
    """The fit cannot go on (e.g. repeated non-finite losses)."""


@dataclass
class FitState:
    """Where the fit is: stage index, epoch within the stage and steps done within the epoch."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def _generator(*key: int) -> torch.Generator:
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def build_renderer(camera: dict, hand, cfg: FitConfig):
    """The renderer of a hand with the backend, shadow switch and shadow bias of a config."""
    from harp_kaolin.render import Renderer

    return Renderer(
        camera,
        hand.faces,
        hand.face_uvs,
        hand.uvs,
        backend=cfg.backend,
        shadows=cfg.shadows,
        shadow_bias=cfg.shadow_bias,
    )


class Fitter:
    """Runs the stages of a FitConfig on a prepared Sequence for a hand model."""

    def __init__(
        self,
        hand,
        data: Sequence,
        cfg: FitConfig,
        init: InitResult,
        out_dir: str | Path,
        params: AvatarParams | None = None,
    ):
        self.hand, self.data, self.cfg, self.init = hand, data, cfg, init
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.device = torch.device(cfg.device)
        t = len(data.names)
        if params is None:
            params = self.initial_params(hand, data, cfg, init)
        self.params = params.to(self.device)
        self.renderer = build_renderer(data.camera, hand, cfg).to(self.device)
        self.images = data.images.to(self.device)
        self.masks = data.masks.to(self.device)
        self.photo_masks = L.erode_mask(self.masks, cfg.erode_px)
        self.init_keypoints = init.keypoints.to(self.device)
        with torch.no_grad():
            rest = hand(torch.zeros(1, hand.num_pose, 3), init.shape).rest_vertices
        self.template = (rest * L.MESH_SCALE).to(self.device)  # ARAP's template edge lengths
        self.energies = None
        self.perceptual = None
        self.perceptual_mode = "none"
        self.state = FitState()
        self.num_frames = t
        self._on_step = None

    @staticmethod
    def initial_params(hand, data: Sequence, cfg: FitConfig, init: InitResult) -> AvatarParams:
        """Parameters at the start: pose from the initialization, albedo = mean colour inside the masks."""
        m = data.masks[..., None]
        mean_colour = (data.images * m).sum((0, 1, 2)) / m.sum().clamp_min(1)
        p = AvatarParams(
            len(data.names),
            hand.num_pose,
            hand.num_shape,
            hand.num_vertices,
            cfg.texture_size,
            albedo_init=mean_colour,
            light_init=torch.tensor(cfg.light_init),
        )
        with torch.no_grad():
            p.pose.copy_(init.pose)
            p.global_orient.copy_(init.global_orient)
            p.transl.copy_(init.transl)
            p.shape.copy_(init.shape)
        return p

    # ------------------------------------------------------------------------------------ one step
    def _needs(self, weights: dict[str, float], *names: str) -> bool:
        return any(weights.get(n, 0.0) > 0 for n in names)

    def losses(self, idx: Tensor, weights: dict[str, float], gen: torch.Generator) -> dict[str, Tensor]:
        """Weighted losses (unweighted values are what is returned; the total is under 'total')."""
        p = self.params
        out = self.hand(p.pose[idx], p.shape, p.global_orient[idx], p.transl[idx], p.displacement)
        terms: dict[str, Tensor] = {}
        image_terms = ("silhouette", "photometric", "perceptual")
        if self._needs(weights, *image_terms):
            r = self.renderer(out.vertices, p.albedo_image(), p.normal_vectors(), p.light, p.ambient)
            if self._needs(weights, "silhouette"):
                terms["silhouette"] = L.silhouette_loss(r.silhouette, self.masks[idx])
            if self._needs(weights, "photometric"):
                terms["photometric"] = L.photometric_loss(r.image, self.images[idx], self.photo_masks[idx])
            if self._needs(weights, "perceptual") and self.perceptual is not None:
                terms["perceptual"] = self.perceptual(
                    r.image.permute(0, 3, 1, 2), self.images[idx].permute(0, 3, 1, 2)
                )
        if self._needs(weights, "keypoints"):
            terms["keypoints"] = L.keypoint_loss(out.keypoints, self.init_keypoints[idx])
        if self._needs(weights, "displacement"):
            terms["displacement"] = L.displacement_loss(p.displacement)
        if self._needs(weights, "laplacian", "normal_consistency", "arap"):
            rest = out.rest_vertices[:1] * L.MESH_SCALE  # shared by every frame
            terms.update(self._geometry_terms(rest, weights))
        if self._needs(weights, "albedo_smoothness"):
            terms["albedo_smoothness"] = L.texture_smoothness_loss(
                p.albedo_image(), self.cfg.smooth_offset_std, gen
            )
        if self._needs(weights, "normal_smoothness"):
            terms["normal_smoothness"] = L.normal_smoothness_loss(
                p.normal_vectors(), self.cfg.smooth_offset_std, gen
            )
        terms["total"] = sum(weights.get(k, 0.0) * v for k, v in terms.items())
        return terms

    def _geometry_terms(self, rest: Tensor, weights: dict[str, float]) -> dict[str, Tensor]:
        from harp_kaolin.fit.regularizers import geometry_terms

        return geometry_terms(self, rest, self.template, weights)

    # ------------------------------------------------------------------------------------ checkpoints
    def _optimizer(self, stage: StageConfig) -> torch.optim.Adam:
        groups = [
            {"params": [self.params.group(g)], "lr": lr, "name": g} for g, lr in stage.lr.items() if lr > 0
        ]
        if not groups:
            raise ValueError(f"stage {stage.name!r} optimizes no parameter group (all learning rates are 0)")
        return torch.optim.Adam(groups)

    def save_checkpoint(self, opt: torch.optim.Optimizer | None) -> Path:
        path = self.ckpt_dir / CHECKPOINT
        atomic_torch_save(
            {
                "params": self.params.state_dict(),
                "optimizer": opt.state_dict() if opt is not None else None,
                "state": vars(self.state),
                "config": to_dict(self.cfg),
                "init": vars(self.init),
                "names": self.data.names,
            },
            path,
        )
        return path

    def load_checkpoint(self) -> dict | None:
        path = self.ckpt_dir / CHECKPOINT
        if not path.is_file():
            return None
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt["names"] != self.data.names:
            raise FitError(f"{path}: checkpoint was written for other frames ({len(ckpt['names'])} frames)")
        old, new = ckpt["config"], to_dict(self.cfg)
        for key in ("hand", "subdivide", "image_size", "texture_size", "stages", "batch_frames", "seed"):
            if old.get(key) != new.get(key):
                raise FitError(
                    f"{path}: cannot resume, '{key}' differs from the checkpoint's "
                    f"({old.get(key)!r} vs {new.get(key)!r}); use another --out or remove it"
                )
        self.params.load_state_dict(ckpt["params"])
        self.state = FitState(**ckpt["state"])
        return ckpt

    # ------------------------------------------------------------------------------------ the loop
    def run(self, resume: bool = False, progress: bool = True, on_step=None) -> FitState:
        """Run (or continue) all stages. Returns the final state.

        Args:
            resume: continue from the avatar folder's checkpoint when there is one.
            progress: show a progress bar per stage.
            on_step: optional callable(FitState) after every step (e.g. to stop a run in tests).
        """
        self._on_step = on_step
        from harp_kaolin.perceptual import perceptual_loss_fn

        ckpt = self.load_checkpoint() if resume else None
        if any(s.weights.get("perceptual", 0) > 0 for s in self.cfg.stages) and self.cfg.perceptual != "none":
            self.perceptual, self.perceptual_mode = perceptual_loss_fn(
                self.cfg.perceptual, self.cfg.vgg_weights
            )
        for si in range(self.state.stage, len(self.cfg.stages)):
            stage = self.cfg.stages[si]
            opt = self._optimizer(stage)
            if ckpt is not None and ckpt["optimizer"] is not None and si == self.state.stage:
                opt.load_state_dict(ckpt["optimizer"])
            ckpt = None
            self._run_stage(si, stage, opt, progress)
            self.state.stage, self.state.epoch, self.state.step = si + 1, 0, 0
            self.save_checkpoint(None)
        return self.state

    def _run_stage(self, si: int, stage: StageConfig, opt: torch.optim.Optimizer, progress: bool) -> None:
        t, bs = self.num_frames, max(1, min(self.cfg.batch_frames, self.num_frames))
        steps_per_epoch = -(-t // bs)
        total = stage.epochs * steps_per_epoch
        done = self.state.epoch * steps_per_epoch + self.state.step
        bar = tqdm(
            total=total,
            initial=done,
            desc=f"{si + 1}/{len(self.cfg.stages)} {stage.name}",
            unit="step",
            disable=None if progress else True,  # None: shown on a terminal, not in logs
            dynamic_ncols=True,
        )
        bad = 0
        start = time.perf_counter()
        try:
            for epoch in range(self.state.epoch, stage.epochs):
                order = torch.randperm(t, generator=_generator(self.cfg.seed, si, epoch))
                for step in range(self.state.step, steps_per_epoch):
                    idx = order[step * bs : (step + 1) * bs].to(self.device)
                    gen = _generator(self.cfg.seed, si, epoch, step, 7)
                    opt.zero_grad(set_to_none=True)
                    terms = self.losses(idx, stage.weights, gen)
                    total_loss = terms["total"]
                    ok = bool(torch.isfinite(total_loss))
                    if ok:
                        total_loss.backward()
                        ok = all(
                            p.grad is None or bool(torch.isfinite(p.grad).all())
                            for g in opt.param_groups
                            for p in g["params"]
                        )
                    if not ok:
                        bad += 1
                        opt.zero_grad(set_to_none=True)
                        warnings.warn(
                            f"stage {stage.name}, epoch {epoch}, step {step}: non-finite loss or "
                            f"gradient, step skipped ({bad} in a row)",
                            stacklevel=2,
                        )
                        if bad >= self.cfg.max_bad_steps:
                            raise FitError(
                                f"stage {stage.name}: {bad} consecutive steps with non-finite loss or "
                                f"gradient; stopped. The last good checkpoint is kept at "
                                f"{self.ckpt_dir / CHECKPOINT}. "
                                "Lower the learning rates or check the input frames."
                            )
                    else:
                        bad = 0
                        opt.step()
                    self.state.step = step + 1
                    if self._on_step is not None:
                        self._on_step(self.state)
                    bar.update(1)
                    bar.set_postfix(
                        {k: f"{v.item():.4g}" for k, v in terms.items() if k != "total"}
                        | {"total": f"{total_loss.item():.4g}"}
                    )
                self.state.history.append(
                    {"stage": stage.name, "epoch": epoch, **{k: v.item() for k, v in terms.items()}}
                )
                self.state.epoch, self.state.step = epoch + 1, 0
                self.state.seconds[stage.name] = self.state.seconds.get(stage.name, 0.0) + (
                    time.perf_counter() - start
                )
                start = time.perf_counter()
                self.save_checkpoint(opt)
        except KeyboardInterrupt:
            self.state.seconds[stage.name] = self.state.seconds.get(stage.name, 0.0) + (
                time.perf_counter() - start
            )
            path = self.save_checkpoint(opt)
            bar.close()
            raise KeyboardInterrupt(
                f"interrupted; checkpoint written to {path}; continue with --resume"
            ) from None
        bar.close()
