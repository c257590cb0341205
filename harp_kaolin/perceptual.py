"""Perceptual backbones without torchvision: AlexNet / VGG16 features, LPIPS and a VGG16 perceptual loss.

torchvision is not importable here and the ImageNet backbone weights cannot be downloaded offline, so:

- ``AlexNetFeatures`` and ``VGG16Features`` rebuild torchvision's ``alexnet().features`` and
  ``vgg16().features`` layer for layer, with the same state-dict keys (``features.0.weight``, ...), and load
  torchvision's official checkpoints (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) when a user has
  put them in a configured path or in torch's hub cache (``$TORCH_HOME/hub/checkpoints``, by default
  ``~/.cache/torch/hub/checkpoints``). Nothing is ever downloaded and random backbone weights are never used
  for a reported number: when the file is missing the loaders return ``None`` and the reason.
- ``LPIPS`` reproduces lpips 0.1.4 (``lpips.LPIPS(net="alex", version="0.1")``, eval mode) exactly; its 1x1
  linear weights are read from the lpips package's own ``weights/v0.1/alex.pth`` file, located with
  ``importlib.util.find_spec`` so that lpips (which imports torchvision) is never imported.
- ``perceptual_loss_fn`` gives fitting the VGG16 loss when its weights exist, else ``1 - MS-SSIM``, and says
  which one (``"vgg16"`` or ``"ms-ssim"``) for metrics.json's ``perceptual_loss``.

Images are (B, 3, H, W) everywhere in this module.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
VGG16_CHECKPOINT = "vgg16-397923af.pth"
CHECKPOINT_URL = "https://download.pytorch.org/models/{}"
LPIPS_VERSION = "0.1"

# lpips' ScalingLayer: inputs in [-1, 1] -> roughly ImageNet-normalized
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10  # lpips.normalize_tensor
LPIPS_CHANNELS = (64, 192, 384, 256, 256)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision.models.vgg16().features: indices of the ReLUs tapped by the perceptual loss
VGG16_TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
VGG16_LOSS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

_ANNOUNCED: set[str] = set()  # fallback messages already shown in this process


class PerceptualFallbackWarning(UserWarning):
    """A perceptual backbone is unavailable and a substitute is used."""


# ---------------------------------------------------------------------------------------------- backbones
class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` (13 layers, same state-dict keys); forward gives lpips' 5 taps."""

    taps = (1, 4, 7, 9, 11)  # relu1 .. relu5, the outputs of lpips' slices 1-5

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """Args: x (B, 3, H, W), already normalized. Returns the 5 ReLU outputs (B, C_k, H_k, W_k)."""
        return _run_taps(self.features, x, self.taps)


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` (31 layers, same state-dict keys)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor, layers: Sequence[str] = VGG16_LOSS_LAYERS) -> list[Tensor]:
        """Args: x (B, 3, H, W), ImageNet-normalized; layers: names in ``VGG16_TAPS``.

        Returns:
            the named ReLU outputs (B, C_k, H_k, W_k), in the order of ``layers``.
        """
        unknown = [n for n in layers if n not in VGG16_TAPS]
        if unknown:
            raise ValueError(f"layers: unknown VGG16 taps {unknown}, expected some of {list(VGG16_TAPS)}")
        return _run_taps(self.features, x, tuple(VGG16_TAPS[n] for n in layers))


def _run_taps(features: nn.Sequential, x: Tensor, taps: tuple[int, ...]) -> list[Tensor]:
    """Outputs of ``features`` after the layers at ``taps``, running only as far as the last one."""
    out = {}
    h = x
    for i in range(max(taps) + 1):
        h = features[i](h)
        if i in taps:
            out[i] = h
    return [out[i] for i in taps]


def find_checkpoint(
    filename: str, weights_path: str | os.PathLike | None = None
) -> tuple[Path | None, list[Path]]:
    """Locate a torchvision checkpoint without downloading it.

    Looks at ``weights_path`` (the file itself, or a folder holding ``filename``), then in
    ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, by default
    ``~/.cache/torch/hub/checkpoints``).

    Returns:
        (the file or None, the places looked at, in order).
    """
    candidates = []
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        candidates.append(p / filename if p.is_dir() else p)
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    found = next((c for c in candidates if c.is_file()), None)
    return found, candidates


def load_torchvision_features(module: nn.Module, path: str | os.PathLike) -> None:
    """Load the ``features.*`` entries of a torchvision checkpoint into ``module.features`` (strict).

    Raises:
        ValueError: when keys or shapes do not match (not a checkpoint of this architecture).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    feats = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    try:
        module.features.load_state_dict(feats, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: not a torchvision {type(module).__name__} checkpoint: {e}") from e


def _load_backbone(
    cls: type[nn.Module], filename: str, weights_path: str | os.PathLike | None
) -> tuple[nn.Module | None, str]:
    path, looked = find_checkpoint(filename, weights_path)
    if path is None:
        return None, (
            f"torchvision checkpoint '{filename}' not found (looked for {', '.join(map(str, looked))}); "
            f"to enable it, download {CHECKPOINT_URL.format(filename)} to {looked[-1]}"
        )
    module = cls()
    try:
        load_torchvision_features(module, path)
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as e:
        return None, f"could not load {path}: {e}"
    module.eval().requires_grad_(False)
    return module, f"loaded {path}"


# ---------------------------------------------------------------------------------------------- LPIPS
def lpips_weights_file(net: str = "alex", version: str = LPIPS_VERSION) -> Path | None:
    """Path of the lpips package's linear-layer weights (``lpips/weights/v0.1/alex.pth``), or None.

    ``find_spec`` of a top-level package reads its location without executing it, so lpips (whose
    ``__init__`` imports torchvision) is never imported.
    """
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / f"v{version}" / f"{net}.pth"
    return path if path.is_file() else None


def load_lpips_linear_weights(net: str = "alex", version: str = LPIPS_VERSION) -> list[Tensor]:
    """The 1x1 linear weights of LPIPS, each (1, C_k, 1, 1), from the lpips package file.

    Raises:
        FileNotFoundError: when the lpips package (or its weight file) is not installed.
    """
    path = lpips_weights_file(net, version)
    if path is None:
        raise FileNotFoundError(
            f"lpips weights 'weights/v{version}/{net}.pth' not found: install the lpips package "
            "(pip install lpips --no-deps; its torchvision dependency is not needed here)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return [state[f"lin{k}.model.1.weight"] for k in range(len(state))]


def _normalize_channels(x: Tensor) -> Tensor:
    """lpips.normalize_tensor: unit L2 norm over channels, (B, C, H, W)."""
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet trunk, as ``lpips.LPIPS(net="alex")`` in eval mode (HARP's evaluation).

    Args:
        backbone: AlexNet features with ImageNet weights.
        linear: the 5 linear weights (1, C_k, 1, 1) from the lpips package.
    """

    def __init__(self, backbone: AlexNetFeatures, linear: Sequence[Tensor]) -> None:
        super().__init__()
        chans = tuple(w.shape[1] for w in linear)
        if chans != LPIPS_CHANNELS or any(w.shape != (1, c, 1, 1) for w, c in zip(linear, chans)):
            raise ValueError(f"linear: expected shapes (1, C, 1, 1) for C in {LPIPS_CHANNELS}, got {chans}")
        self.net = backbone
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE)[None, :, None, None])
        for k, w in enumerate(linear):
            self.register_buffer(f"lin{k}", w.detach().clone())
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor, y: Tensor, normalize: bool = False) -> Tensor:
        """LPIPS distance per image.

        Args:
            x, y: (B, 3, H, W) images in [-1, 1] (in [0, 1] with ``normalize=True``).
            normalize: map [0, 1] inputs to [-1, 1] first, as lpips' flag of the same name.

        Returns:
            (B,) distances.
        """
        _check_pair(x, y)
        _follow_input(self, x)
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        val = 0
        for k, (a, b) in enumerate(zip(fx, fy)):
            diff = (_normalize_channels(a) - _normalize_channels(b)).square()
            val = val + F.conv2d(diff, getattr(self, f"lin{k}")).mean(dim=(2, 3))
        return val[:, 0]


def load_lpips(weights_path: str | os.PathLike | None = None) -> tuple[LPIPS | None, str]:
    """LPIPS (AlexNet) when both its backbone checkpoint and the lpips package's weights are present.

    Args:
        weights_path: torchvision's ``alexnet-owt-7be5be79.pth`` or its folder; else the torch hub cache.

    Returns:
        (module or None, note): the note says where the weights came from, or why LPIPS is unavailable.
    """
    try:
        linear = load_lpips_linear_weights("alex")
    except FileNotFoundError as e:
        return None, str(e)
    backbone, note = _load_backbone(AlexNetFeatures, ALEXNET_CHECKPOINT, weights_path)
    if backbone is None:
        return None, f"LPIPS needs ImageNet AlexNet weights: {note}"
    return LPIPS(backbone, linear), note


# ---------------------------------------------------------------------------------------------- VGG loss
class VGGPerceptualLoss(nn.Module):
    """Sum over VGG16 layers of the mean L1 distance between feature maps (differentiable in the images).

    ``loss = sum_k w_k * mean |phi_k(x) - phi_k(y)|`` with phi_k the ReLU outputs relu1_2, relu2_2, relu3_3,
    relu4_3 of ImageNet-normalized images (L1, as the widely used VGG perceptual loss of the HARP era).

    Args:
        backbone: VGG16 features with ImageNet weights (frozen).
        layers: tapped layers, names in ``VGG16_TAPS``.
        layer_weights: w_k per layer (default 1 each).
    """

    def __init__(
        self,
        backbone: VGG16Features,
        layers: Sequence[str] = VGG16_LOSS_LAYERS,
        layer_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if layer_weights is not None and len(layer_weights) != len(layers):
            raise ValueError(f"layer_weights: {len(layer_weights)} values for {len(layers)} layers")
        self.net = backbone
        self.layers = tuple(layers)
        self.layer_weights = tuple(layer_weights) if layer_weights is not None else (1.0,) * len(layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[None, :, None, None])
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[None, :, None, None])
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Args: x, y (B, 3, H, W) in [0, 1]. Returns the scalar loss."""
        _check_pair(x, y)
        _follow_input(self, x)
        fx = self.net((x - self.mean) / self.std, self.layers)
        fy = self.net((y - self.mean) / self.std, self.layers)
        return sum(w * (a - b).abs().mean() for w, a, b in zip(self.layer_weights, fx, fy))


def load_vgg(weights_path: str | os.PathLike | None = None) -> tuple[VGGPerceptualLoss | None, str]:
    """The VGG16 perceptual loss when torchvision's ``vgg16-397923af.pth`` is present.

    Args:
        weights_path: the checkpoint file or its folder; else the torch hub cache.

    Returns:
        (module or None, note): where the weights came from, or why the loss is unavailable.
    """
    backbone, note = _load_backbone(VGG16Features, VGG16_CHECKPOINT, weights_path)
    if backbone is None:
        return None, note
    return VGGPerceptualLoss(backbone), note


def ms_ssim_loss(x: Tensor, y: Tensor) -> Tensor:
    """``1 - MS-SSIM`` averaged over the batch; x, y (B, 3, H, W) in [0, 1] -> scalar.

    Fewer scales (down to single-scale SSIM) on images under 161 px: see ``harp_kaolin.metrics.ms_ssim``.
    """
    from harp_kaolin.metrics import ms_ssim

    return 1.0 - ms_ssim(x, y).mean()


def perceptual_loss_fn(
    mode: str = "auto", weights_path: str | os.PathLike | None = None
) -> tuple[Callable[[Tensor, Tensor], Tensor], str]:
    """The perceptual term for fitting and the name of what it is.

    Args:
        mode: ``"auto"`` (VGG16 when its weights exist, else MS-SSIM, announced once with a
            ``PerceptualFallbackWarning`` saying why and how to enable VGG16), ``"vgg16"`` (error when
            unavailable) or ``"ms-ssim"``.
        weights_path: torchvision's ``vgg16-397923af.pth`` or its folder; else the torch hub cache.

    Returns:
        (loss(x, y) -> scalar for images (B, 3, H, W) in [0, 1], ``"vgg16"`` or ``"ms-ssim"``).
    """
    if mode not in ("auto", "vgg16", "ms-ssim"):
        raise ValueError(f"mode must be 'auto', 'vgg16' or 'ms-ssim', got {mode!r}")
    if mode == "ms-ssim":
        return ms_ssim_loss, "ms-ssim"
    vgg, note = load_vgg(weights_path)
    if vgg is not None:
        return vgg, "vgg16"
    if mode == "vgg16":
        raise FileNotFoundError(f"VGG16 perceptual loss unavailable: {note}")
    message = (
        f"VGG16 perceptual loss unavailable ({note}); using the structural loss 1 - MS-SSIM instead "
        "(perceptual_loss = 'ms-ssim' in metrics.json); the checkpoint may also be given as vgg_weights."
    )
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        warnings.warn(message, PerceptualFallbackWarning, stacklevel=2)
    return ms_ssim_loss, "ms-ssim"


# ---------------------------------------------------------------------------------------------- helpers
def _check_pair(x: Tensor, y: Tensor) -> None:
    from harp_kaolin.metrics import check_image_pair

    check_image_pair(x, y, ("x", "y"))


def _follow_input(module: nn.Module, x: Tensor) -> None:
    """Move a frozen module to the device and floating dtype of its input (fitting may run on CUDA)."""
    ref = next(module.buffers())
    if ref.device != x.device or ref.dtype != x.dtype:
        module.to(device=x.device, dtype=x.dtype)
