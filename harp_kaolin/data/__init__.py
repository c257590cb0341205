"""Input sequences: loading, checking, and conversion from video files."""

from harp_kaolin.data.sequence import (
    KEYPOINT_ORDER,
    Sequence,
    SequenceError,
    check_sequence,
    load_sequence,
    read_camera,
    read_keypoints,
)

__all__ = [
    "KEYPOINT_ORDER",
    "Sequence",
    "SequenceError",
    "check_sequence",
    "load_sequence",
    "read_camera",
    "read_keypoints",
]
