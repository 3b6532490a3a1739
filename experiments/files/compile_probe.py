"""Does torch.compile pay on this CPU? The bundled Megapixel model's glimpse encoder (batch 1, 32x32) and proxy encoder
(180x180), eager against compiled, 1 thread, medians of 300 calls after 30 warm-ups; the compilation time apart.

Usage: python experiments/files/compile_probe.py
"""

from __future__ import annotations

import statistics
import time

import torch

import vsaccade


def median_ms(fn, calls: int = 300) -> float:
    for _ in range(30):
        fn()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


def main() -> None:
    torch.set_num_threads(1)
    model = vsaccade.load("megapixel").eval()
    glimpse, proxy = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 180, 180)
    cells = torch.ones(1, 45, 45, dtype=torch.bool)
    with torch.inference_mode():
        eager = {"glimpse encoder": median_ms(lambda: model.reader.encoder(glimpse)),
                 "proxy encoder": median_ms(lambda: model.proxy_encoder(proxy, cells))}
        start = time.perf_counter()
        encoder, proxy_encoder = torch.compile(model.reader.encoder), torch.compile(model.proxy_encoder)
        encoder(glimpse), proxy_encoder(proxy, cells)
        compile_seconds = time.perf_counter() - start
        compiled = {"glimpse encoder": median_ms(lambda: encoder(glimpse)),
                    "proxy encoder": median_ms(lambda: proxy_encoder(proxy, cells))}
    for part in eager:
        print(f"{part}: eager {eager[part]:.3f} ms, compiled {compiled[part]:.3f} ms")
    print(f"compilation: {compile_seconds:.1f} s")


if __name__ == "__main__":
    main()
