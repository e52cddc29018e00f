"""ZeroGPU support: on a Hugging Face ZeroGPU Space a GPU is attached only inside functions
decorated with ``spaces.GPU``. The ``spaces`` package exists only there, so it is imported
optionally and the decorator is a no-op everywhere else."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def gpu_function(duration: int = 120) -> Callable[[F], F]:
    """Decorate a function that needs the GPU (generation, training steps)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)
