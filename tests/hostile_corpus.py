"""A corpus of hostile inputs the tests make themselves, and what each must get.

Image files go through `vsaccade predict` (one process, all files at once): a convertible file gets a CSV row, any
other a one-line "vsaccade: skipped PATH: REASON" on stderr, the rest finish and the exit status is 1.
`python tests/hostile_corpus.py` prints the table of docs/reliability.md from a real run.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (how it is made, expected: "converted" or a regular expression the one-line error must match)
IMAGE_CASES = {
    "grey.png": ("8-bit greyscale PNG", "converted"),
    "grey16.png": ("16-bit greyscale PNG", "converted"),
    "palette.png": ("palette (indexed colour) PNG", "converted"),
    "alpha.png": ("RGBA PNG (alpha composited on black)", "converted"),
    "cmyk.jpg": ("CMYK JPEG", "converted"),
    "rotated.jpg": ("JPEG with EXIF orientation 6", "converted"),
    "zero.jpg": ("zero-byte file", "empty file"),
    "truncated.jpg": ("JPEG cut to a third of its bytes", "truncated|premature|not a readable|cannot"),
    "wrong-magic.png": ("PNG whose magic bytes are a JPEG's", "not a readable image"),
    "text.png": ("a text file named .png", "not a readable image"),
    "huge-header.png": ("PNG whose header declares 200,000 x 100,000 pixels (> max_pixels 10^10)", "max_pixels"),
    "one-pixel.png": ("1 x 1 PNG", "smaller than one"),
    "smaller-than-glimpse.png": ("12 x 12 PNG, glimpse 16 x 16", "smaller than one"),
    "missing.png": ("a path that does not exist", "image not found"),
}


def png_with_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (valid CRC) followed by a tiny, wrong IDAT: the header lies."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def make_images(folder: Path) -> dict[str, Path]:
    """Write every IMAGE_CASES file (but the missing one) into `folder`; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    grey = rgb[..., 0]
    Image.fromarray(grey).save(folder / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(np.dstack([rgb, np.full(grey.shape, 128, np.uint8)])).save(folder / "alpha.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif)
    (folder / "zero.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    png = io.BytesIO()
    Image.fromarray(grey).save(png, format="PNG")
    (folder / "wrong-magic.png").write_bytes(b"\xff\xd8\xff\xe0" + png.getvalue()[4:])
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "huge-header.png").write_bytes(png_with_header_only(200_000, 100_000))
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(folder / "one-pixel.png")
    Image.fromarray(grey[:12, :12]).save(folder / "smaller-than-glimpse.png")
    return {name: folder / name for name in IMAGE_CASES}


def predict_outcomes(checkpoint: Path, folder: Path) -> tuple[int, dict[str, str], str]:
    """Run `vsaccade predict` over the corpus in-process: (exit status, name -> "converted" or the one-line
    message, everything written to stderr)."""
    import contextlib
    import csv

    from vsaccade.cli import main

    paths = make_images(folder)
    out = folder.parent / "predictions.csv"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(["predict", str(checkpoint), *map(str, paths.values()), "--out", str(out), "--no-progress"])
    outcomes = {Path(row["path"]).name: "converted" for row in csv.DictReader(open(out))}
    for line in stderr.getvalue().splitlines():
        for name, path in paths.items():
            if line.startswith(f"vsaccade: skipped {path}:"):
                outcomes[name] = line
    return status, outcomes, stderr.getvalue()


def tiny_checkpoint(path: Path, channels: int = 3) -> Path:
    import torch

    import vsaccade
    from vsaccade.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = vsaccade.create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32, glimpses=2,
                                  image_channels=channels, proxy_channels=channels,
                                  heads=[{"name": "label", "num_classes": 3, "kind": "class"}])
    save_checkpoint({"model_name": "saccader", "model_config": model.config.to_dict(), "state_dict": model.state_dict()},
                    path)
    return path


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        status, outcomes, _ = predict_outcomes(tiny_checkpoint(Path(tmp) / "model.pt"), Path(tmp) / "corpus")
        print(f"`vsaccade predict` exit status over the corpus: {status}\n")
        print("| input | what it gets |\n|---|---|")
        for name, (how, _) in IMAGE_CASES.items():
            got = outcomes.get(name, "(no row, no message)")
            got = got.replace(f"vsaccade: skipped {Path(tmp) / 'corpus' / name}: ", "error: ")
            print(f"| {how} | {'converted (a CSV row)' if got == 'converted' else '`' + got + '`'} |")
