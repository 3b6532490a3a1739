"""Digit sources: MNIST (IDX files, local or downloaded into the cache) and a font-rendered fallback."""
