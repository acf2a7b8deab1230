"""What a clean table's profile costs per image (``imgflow.data.profile``): counted in 8 MB slices
(what the writer does) against the whole batch at once, side by side, with each one's peak memory.

    python benchmarks/profile_speed.py
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pyarrow as pa

from imgflow.data import profile as profiling
from imgflow.data.cleantable import pixel_array


def _measure(images: np.ndarray, slice_bytes: int) -> tuple[float, float]:
    """Images per second, and peak traced MiB (a second pass: tracing slows NumPy down)."""
    profiling._SLICE_BYTES = slice_bytes
    profiling.Profile().add_pixels(images[:64])  # warm
    started = time.perf_counter()
    profiling.Profile().add_pixels(images)
    speed = len(images) / (time.perf_counter() - started)
    tracemalloc.start()
    profiling.Profile().add_pixels(images)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return speed, peak


def main() -> None:
    rng = np.random.default_rng(0)
    sliced = profiling._SLICE_BYTES
    for side, count in ((28, 4096), (64, 4096), (224, 1024)):
        pixels = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
        images = pixel_array(pa.array([p.tobytes() for p in pixels], pa.binary()), (-1, 3))
        (fast, small), (slow, large) = _measure(images, sliced), _measure(images, images.nbytes)
        print(
            f"{side}x{side}x3, {count} records ({images.nbytes / 2**20:.0f} MiB): sliced {fast:,.0f} images/s, peak {small:.0f} MiB; "
            f"whole batch {slow:,.0f} images/s, peak {large:.0f} MiB; speed x{fast / slow:.1f}, memory /{large / small:.1f}"
        )


if __name__ == "__main__":
    main()
