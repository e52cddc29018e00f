"""What loading or running a FaceID model fails with, for every family alike."""
from __future__ import annotations


class MissingWeightsError(RuntimeError):
    """Weights are not on this machine; the message lists them and how to get them."""


class CheckpointError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model."""


class OutOfMemory(ValueError):
    """The accelerator ran out of memory; the message says what to lower or turn on."""
