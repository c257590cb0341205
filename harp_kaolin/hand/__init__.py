"""Hand models behind one interface (``HandModel``) and ``load_hand(name, **options)``."""

from __future__ import annotations

from harp_kaolin.hand.base import HARP21_NAMES, HandModel, HandOutput, linear_blend_skinning

HAND_MODELS = ("anny", "anny_arm", "mano")


def load_hand(name: str = "anny", subdivide: int = 0, **options) -> HandModel:
    """Load a hand model by name.

    Args:
        name: "anny" (default, open), "anny_arm" (hand + forearm cut from the full anny body) or
            "mano" (needs ``model_path=`` to the user's own MANO_RIGHT.pkl or .npz).
        subdivide: levels of linear midpoint subdivision of the returned mesh.
        **options: model-specific options (e.g. ``model_path``, ``uv_obj`` for MANO).

    Returns:
        The hand model (a torch module holding only fixed model data).
    """
    if name == "anny":
        from harp_kaolin.hand.anny_hand import AnnyHand

        return AnnyHand(subdivide=subdivide, **options)
    if name == "anny_arm":
        from harp_kaolin.hand.anny_arm import AnnyArm

        return AnnyArm(subdivide=subdivide, **options)
    if name == "mano":
        from harp_kaolin.hand.mano import ManoHand

        return ManoHand(subdivide=subdivide, **options)
    raise ValueError(f"unknown hand model {name!r}; choose one of {', '.join(HAND_MODELS)}")


__all__ = ["HARP21_NAMES", "HAND_MODELS", "HandModel", "HandOutput", "linear_blend_skinning", "load_hand"]
