"""Pillow against libvips on the photo corpus, each making what Titan is sent (the shrink-on-load
decode and one JPEG encode), CPU ms per picture. Not in `make bench`: libvips is not a dependency,
because Pillow was faster on every JPEG of the corpus (benchmarks/README.md, photo_throughput).

    .venv/bin/pip install pyvips pyvips-binary && .venv/bin/python -m benchmarks.libvips
"""

import time

import pyvips

from benchmarks.pricing import photo_floor_ms
from smartgo_analytics.local.photos import photo_corpus


def libvips_ms(repeats: int = 3) -> dict[str, float]:
    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)  # one thread, as the floor is measured
    costs = {}
    for photo in photo_corpus():
        started = time.process_time()
        for _ in range(repeats):
            image = pyvips.Image.thumbnail_buffer(photo.data, 2048, height=2048, size="down")
            image.jpegsave_buffer(Q=90)
        costs[photo.name] = (time.process_time() - started) * 1000 / repeats
    return costs


if __name__ == "__main__":
    pillow, vips = photo_floor_ms(), libvips_ms()
    for name in pillow:
        print(f"{name:40} Pillow {pillow[name]:6.0f} ms  libvips {vips[name]:6.0f} ms")
