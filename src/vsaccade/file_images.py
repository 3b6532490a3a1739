"""Large images backed by files, read lazily through libvips (pyvips): the proxy by shrink-on-load or the nearest
pyramid level, glimpses by region reads of the window plus a margin. The model code does not change: a
`FileImage` is a `LargeImage` like any other.

Upright frame: EXIF orientation is applied to the proxy and to every region alike, so all coordinates (glimpse
boxes, CSV boxes) are in the frame a viewer shows. Region reads map the upright window to the stored frame,
read only that, and re-orient the small patch, so a rotated tiled TIFF still reads only the tiles it needs.

Pixels: converted to 8-bit sRGB (ICC profiles and CMYK converted, 16-bit scaled, palettes expanded, alpha
composited on black), then to the requested channel count (luminance for 1 channel), then to float in [0, 1].

Formats that allow region reads (tiled TIFF, including pyramidal) are never decoded whole. Formats that do not
(baseline JPEG, PNG, WebP) are decoded once, on the first region read, and kept in memory for that image
(`FileImage.decodes_whole` says which case applies).
"""

from __future__ import annotations

import math
import struct
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import proxy_extent
from .images import ImageError, LargeImage, _block_mean

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".jp2", ".svs", ".ndpi", ".v"}
MAX_PIXELS = 10**10
APPROXIMATE_FROM = 8  # downsampling from which a pyramid level that does not divide it may be used
PROXY_OVERSAMPLE = 2  # the vips thumbnail is made at this multiple of the proxy size, then area-averaged
REGION_LOADERS = ("tiffload", "jp2kload", "openslideload", "vipsload")  # read a region without decoding the rest

# EXIF orientation -> (transpose, flip_x, flip_y), applied in that order to the stored pixels to get the upright
# image (tag 6, "rotate 90 clockwise to display" = transpose then flip x).
ORIENTATIONS = {
    1: (False, False, False), 2: (False, True, False), 3: (False, True, True), 4: (False, False, True),
    5: (True, False, False), 6: (True, True, False), 7: (True, True, True), 8: (True, False, True),
}


def require_pyvips():
    try:
        import pyvips
    except (ImportError, OSError) as error:
        raise ImageError("reading image files needs pyvips and libvips: pip install pyvips pyvips-binary "
                         f"(or vsaccade[files]) ({str(error).splitlines()[0][:120]})") from None
    return pyvips


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]


RANGE_SIDE = 512  # a float file's value range is measured on a level at least this large (FileImage.value_range)
INTEGER_TOPS = {"char": 127, "ushort": 65535, "short": 32767, "uint": 2**32 - 1, "int": 2**31 - 1}


def to_8_bits(image, value_range: tuple[float, float] | None = None):
    """A vips image of any sample format -> uchar, scaled by its value range, never cast (a cast reads a float image
    in [0, 1] as black and wraps 16-bit values): integers by their format's range (65535 -> 255); floats in [0, 1]
    by 255, other floats by `value_range` (the file's: FileImage.value_range, so that every level and the proxy
    agree), else by this image's own min..max. Negative integers are clipped to 0."""
    if image.format == "uchar":
        return image
    if image.format in INTEGER_TOPS:
        scaled = image.cast("double") * (255 / INTEGER_TOPS[image.format])
    else:
        low, high = value_range or (image.min(), image.max())
        scaled = image * 255 if 0 <= low and high <= 1 else (image - low) * (255 / max(high - low, 1e-12))
    scaled = (scaled + 0.5).cast("uchar")  # rounds: a cast to uchar clips to 0..255 and truncates
    return scaled.copy(interpretation="b-w" if scaled.bands < 3 else "srgb")


def float_range(image) -> tuple[float, float]:
    """(min, max) of a vips image's colour bands (alpha left out), in one pass."""
    colour = image.extract_band(0, n=image.bands - 1) if image.hasalpha() else image
    stats = colour.stats()
    return stats(0, 0)[0], stats(1, 0)[0]


def to_channels(image, channels: int, value_range: tuple[float, float] | None = None):
    """A vips image -> 8-bit sRGB (or 8-bit luminance for channels=1), alpha composited on black; floats scaled by
    `value_range` (see to_8_bits)."""
    pyvips = require_pyvips()
    profile = image.get_typeof("icc-profile-data")
    if (not profile and image.format == "uchar" and image.bands == channels and not image.hasalpha()
            and image.interpretation == ("b-w" if channels == 1 else "srgb")):
        return image  # already 8-bit grey or sRGB: the conversions below would each build an operation to copy it
    if profile:
        try:
            image = image.icc_transform("srgb", embedded=True, intent="relative")
        except pyvips.Error:
            pass  # a broken profile: fall back to the colourspace conversion below
    image = to_8_bits(image, value_range)
    if image.hasalpha():
        image = image.flatten(background=[0] * (image.bands - 1))
    image = to_8_bits(image.colourspace("b-w" if channels == 1 else "srgb"))
    if channels == 1 and image.bands > 1:
        image = image.extract_band(0)
    if channels == 3 and image.bands == 1:
        image = image.bandjoin([image, image])
    if image.bands != channels:
        raise ImageError(f"cannot convert a {image.bands}-band image to {channels} channels")
    return image


TIFF_INTEGERS = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8: struct format and size


def tiff_page_sizes(path) -> list[tuple[int, int]] | None:
    """[(width, height)] of every top-level page of a TIFF (classic or BigTIFF), read from its image file directories
    (a few hundred bytes); None where the file cannot be parsed so (then vips opens each page)."""
    try:
        with open(path, "rb") as handle:
            order = {b"II": "<", b"MM": ">"}[handle.read(2)]
            (magic,) = struct.unpack(order + "H", handle.read(2))
            big = magic == 43
            if magic not in (42, 43):
                return None
            if big:
                handle.read(4)  # offset size (8) and a reserved 0
            count_format, entry_size, offset_format = ("Q", 20, "Q") if big else ("H", 12, "I")
            (offset,) = struct.unpack(order + offset_format, handle.read(8 if big else 4))
            sizes, seen = [], set()
            while offset and offset not in seen and len(sizes) < 1000:
                seen.add(offset)
                handle.seek(offset)
                (entries,) = struct.unpack(order + count_format, handle.read(8 if big else 2))
                block = handle.read(entries * entry_size + (8 if big else 4))
                found = {}
                for index in range(entries):
                    entry = block[index * entry_size : (index + 1) * entry_size]
                    tag, kind = struct.unpack(order + "HH", entry[:4])
                    if tag in (256, 257):  # ImageWidth, ImageLength: an integer stored in the entry itself
                        code, size = TIFF_INTEGERS[kind]
                        found[tag] = struct.unpack(order + code, (entry[12:] if big else entry[8:])[:size])[0]
                if len(found) != 2:
                    return None
                sizes.append((found[256], found[257]))
                (offset,) = struct.unpack(order + offset_format, block[entries * entry_size :])
            return sizes
    except (OSError, KeyError, struct.error):
        return None


def to_tensor(image) -> torch.Tensor:
    """A uchar vips image -> (C, H, W) float32 in [0, 1]."""
    return pixels_to_tensor(image.write_to_memory(), image.height, image.width, image.bands)


def pixels_to_tensor(data: bytes, height: int, width: int, bands: int) -> torch.Tensor:
    """Interleaved uchar pixels (vips' memory layout) -> (C, H, W) float32 in [0, 1]."""
    array = np.frombuffer(data, dtype=np.uint8).reshape(height, width, bands)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


class FileImage(LargeImage):
    """An image file read lazily: `FileImage("scan.tif", channels=3)`."""

    parallel_reads = True  # the glimpse sampler may read several FileImages at once from a thread pool

    def __init__(self, path, channels: int | None = None, max_pixels: int = MAX_PIXELS):
        pyvips = require_pyvips()
        self.path = Path(path)
        if not self.path.is_file():
            raise ImageError(f"image not found: {self.path}")
        if self.path.stat().st_size == 0:
            raise ImageError(f"{self.path}: empty file (0 bytes)")
        try:
            stored = pyvips.Image.new_from_file(str(self.path), access="random", fail=True)
        except pyvips.Error as error:
            raise ImageError(f"{self.path}: not a readable image ({_first_line(error)})") from None
        orientation = stored.get("orientation") if stored.get_typeof("orientation") else 1
        self.orientation = orientation if orientation in ORIENTATIONS else 1
        self.transpose, self.flip_x, self.flip_y = ORIENTATIONS[self.orientation]
        self.stored_height, self.stored_width = stored.height, stored.width
        self.height, self.width = (stored.width, stored.height) if self.transpose else (stored.height, stored.width)
        if self.height * self.width > max_pixels:
            raise ImageError(f"{self.path}: {self.width}x{self.height} is more than max_pixels={max_pixels:,} pixels")
        if channels is None:
            channels = 1 if stored.interpretation in ("b-w", "grey16") else 3
        if channels not in (1, 3):
            raise ImageError(f"FileImage reads 1 (grey) or 3 (sRGB) channels, not {channels}")
        self.channels = channels
        self.loader = stored.get("vips-loader") if stored.get_typeof("vips-loader") else "unknown"
        self.decodes_whole = self.loader not in REGION_LOADERS
        self._stored = stored
        self._decoded = None  # the converted source of region reads (see _source)
        self._pages: dict[int, object] = {}  # pyramid pages as stored, opened once
        self.pyramid = self._pyramid_levels(stored)  # [(factor, page)], reduced levels a downsampled read may use
        self.tile = stored.get("tile-width") if stored.get_typeof("tile-width") else None  # tiled TIFF
        self._levels: dict[int, object] = {}
        self._regions: dict[int, object] = {}  # a pyvips.Region per converted level: pixels without building operations
        self._value_range = None  # a float file's (min, max), from its smallest pyramid level: see value_range
        self._lock = threading.Lock()  # one decode per image, even when a thread pool reads its glimpses
        self.proxy_source = None  # how the last proxy was made (shrink-on-load / pyramid level), for run records

    def _pyramid_levels(self, stored) -> list[tuple[int, int]]:
        """Pages of an upright tiled pyramidal TIFF that halve the previous one: [(2^k, page k)], k >= 1. The pages'
        sizes come from the file's directory (tiff_page_sizes; each page is opened only when read), else from
        opening each page's header."""
        if self.loader != "tiffload" or self.orientation != 1 or not stored.get_typeof("n-pages"):
            return []
        pages = stored.get("n-pages")
        sizes = tiff_page_sizes(self.path)
        if sizes is None or len(sizes) < pages:
            sizes = [(stored.width, stored.height)]
            for page in range(1, pages):
                try:
                    header = self._page(page)
                except require_pyvips().Error:  # an unreadable page ends the pyramid
                    break
                sizes.append((header.width, header.height))
        levels = []
        for page, (width, height) in enumerate(sizes[1:pages], 1):
            factor = 2**page
            if abs(width - stored.width / factor) > 1 or abs(height - stored.height / factor) > 1:
                break
            levels.append((factor, page))
        return levels

    def __getstate__(self):
        """Picklable (DataLoader workers send samples across processes): the vips handles are reopened lazily."""
        return {**self.__dict__, "_stored": None, "_decoded": None, "_lock": None, "_levels": {}, "_pages": {},
                "_regions": {}}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def _stored_image(self):
        if self._stored is None:
            pyvips = require_pyvips()
            try:
                self._stored = pyvips.Image.new_from_file(str(self.path), access="random", fail=True)
            except pyvips.Error as error:
                raise ImageError(f"{self.path}: not a readable image ({_first_line(error)})") from None
        return self._stored

    def prefetch(self) -> None:
        """Formats that cannot read regions (JPEG, PNG, ...) are decoded whole at the first read: do it now."""
        if self.decodes_whole:
            self._source()

    def value_range(self) -> tuple[float, float] | None:
        """A float file's (min, max) over its colour bands, measured once, so that every read of it and its proxy
        scale alike: on the smallest pyramid level at least RANGE_SIDE pixels on its shorter side (a cheap pass whose
        extremes are the image's but for isolated pixels, which then saturate), else on the image itself; None for
        integer formats (scaled by their format's range)."""
        stored = self._stored_image()
        if stored.format in INTEGER_TOPS or stored.format == "uchar":
            return None
        if self._value_range is None:
            pyvips = require_pyvips()
            pages = [page for factor, page in self.pyramid if min(self.height, self.width) // factor >= RANGE_SIDE]
            level = pyvips.Image.new_from_file(str(self.path), page=pages[-1], access="random") if pages else stored
            self._value_range = float_range(level)
        return self._value_range

    def _source(self):
        """The converted (sRGB or grey, 8-bit) stored-frame image that regions are cut from. A lazy vips pipeline
        where the format reads regions; decoded once into memory where it does not."""
        pyvips = require_pyvips()
        with self._lock:
            if self._decoded is None:
                try:
                    converted = to_channels(self._stored_image(), self.channels, self.value_range())
                    self._decoded = converted.copy_memory() if self.decodes_whole else converted
                except pyvips.Error as error:
                    raise ImageError(f"{self.path}: cannot decode ({_first_line(error)})") from None
            return self._decoded

    def _page(self, page: int):
        """Pyramid page `page` as stored (opened once, by the TIFF loader: no format sniffing)."""
        if page not in self._pages:
            pyvips = require_pyvips()
            self._pages[page] = pyvips.Image.tiffload(str(self.path), page=page, access="random", fail=True)
        return self._pages[page]

    def _level(self, page: int):
        with self._lock:
            if page not in self._levels:
                self._levels[page] = to_channels(self._page(page), self.channels, self.value_range())
            return self._levels[page]

    def _fetch(self, page: int, left: int, top: int, width: int, height: int) -> torch.Tensor:
        """(C, height, width) pixels of a converted level through a pyvips.Region: the same pixels as a crop written
        to memory, without building two vips operations per read (a quarter of the time)."""
        level = self._level(page)
        with self._lock:
            if page not in self._regions:
                self._regions[page] = require_pyvips().Region.new(level)
            data = self._regions[page].fetch(left, top, width, height)
        return pixels_to_tensor(data, height, width, level.bands)

    def _read_from_level(self, top, left, height, width, downsample, factor, page) -> torch.Tensor:
        """A downsampled read from the pyramid level `factor` (<= downsample): about (W + margin)^2 level pixels
        however large the window, then area-averaged to ceil(height / downsample) x ceil(width / downsample)."""
        pyvips = require_pyvips()
        level = self._level(page)
        rows, cols = math.ceil(height / downsample), math.ceil(width / downsample)
        y0, x0 = math.floor(top / factor), math.floor(left / factor)
        y1 = math.ceil((top + rows * downsample) / factor)
        x1 = math.ceil((left + cols * downsample) / factor)
        ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y1, level.height), min(x1, level.width)
        try:
            if (ya, xa, yb, xb) == (y0, x0, y1, x1):  # inside the level: no padding
                out = self._fetch(page, xa, ya, xb - xa, yb - ya)
            else:
                out = torch.zeros(self.channels, y1 - y0, x1 - x0)
                if yb > ya and xb > xa:
                    out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = self._fetch(page, xa, ya, xb - xa, yb - ya)
        except pyvips.Error as error:
            raise ImageError(f"{self.path}: cannot read pixels ({_first_line(error)})") from None
        if out.shape[1:] == (rows, cols):  # the level is the downsampling asked for: nothing to average
            return out
        return F.interpolate(out[None], size=(rows, cols), mode="area")[0]

    def usable_levels(self, downsample: int) -> list[tuple[int, int]]:
        """A reduced pyramid level, so the read costs about the glimpse's size, not the window's: exact when its
        factor divides d (block means of block means); from d >= APPROXIMATE_FROM, the largest level of at most
        d / 2, area-resampled by the non-integer rest (approximate at sharp edges). The last is used."""
        d = downsample
        return [(f, page) for f, page in self.pyramid if d % f == 0 or (d >= APPROXIMATE_FROM and 2 * f <= d)]

    def level_factor(self, downsample: int) -> int:
        usable = self.usable_levels(downsample)
        return usable[-1][0] if usable else 1

    def tile_side(self, factor: int) -> int | None:
        return self.tile

    def read_region(self, top, left, height, width, downsample=1):
        pyvips = require_pyvips()
        d = downsample
        self.count_read(top, left, height, width, d)
        usable = self.usable_levels(d)
        if usable:
            return self._read_from_level(top, left, height, width, d, *usable[-1])
        rows, cols = math.ceil(height / d) * d, math.ceil(width / d) * d
        # upright window -> stored window: undo the flips, then the transpose
        y0, x0 = top, left
        if self.flip_x:
            x0 = self.width - (left + cols)
        if self.flip_y:
            y0 = self.height - (top + rows)
        sy0, sx0, srows, scols = (x0, y0, cols, rows) if self.transpose else (y0, x0, rows, cols)
        out = torch.zeros(self.channels, srows, scols)
        ya, xa = max(sy0, 0), max(sx0, 0)
        yb, xb = min(sy0 + srows, self.stored_height), min(sx0 + scols, self.stored_width)
        if yb > ya and xb > xa:
            try:
                patch = self._source().crop(xa, ya, xb - xa, yb - ya)
                out[:, ya - sy0 : yb - sy0, xa - sx0 : xb - sx0] = to_tensor(patch)
            except pyvips.Error as error:
                raise ImageError(f"{self.path}: cannot read pixels ({_first_line(error)})") from None
        if self.transpose:
            out = out.transpose(1, 2)
        if self.flip_x:
            out = out.flip(2)
        if self.flip_y:
            out = out.flip(1)
        return _block_mean(out, d)  # rows, cols are multiples of d: exactly ceil(height / d) x ceil(width / d)

    def shrink_on_load(self, rows: int, cols: int) -> int:
        """The factor of the level a thumbnail of rows x cols is shrunk from: the largest pyramid level at least that
        large (tiled TIFF), or JPEG's shrink-on-load (1, 2, 4 or 8, by the same rule); 1 for other formats."""
        if self.pyramid:  # vips takes a level only if it is strictly larger on both sides (tested against it)
            return max([f for f, _ in self.pyramid if self.height // f > rows and self.width // f > cols], default=1)
        factors = [2, 4, 8] if self.loader == "jpegload" else []
        return max([f for f in factors if self.height // f >= rows and self.width // f >= cols], default=1)

    def proxy_oversample(self, size: int) -> int:
        """k: the proxy of `size` is shrunk from a thumbnail k times as large (PROXY_OVERSAMPLE, or less for a small
        image)."""
        rows, cols = proxy_extent(self.height, self.width, size)
        return max(1, min(PROXY_OVERSAMPLE, self.height // rows, self.width // cols))

    def proxy_level(self, size: int) -> int:
        """The factor of the level (shrink-on-load or pyramid page) a proxy of `size` is made from."""
        rows, cols = proxy_extent(self.height, self.width, size)
        k = self.proxy_oversample(size)
        return self.shrink_on_load(rows * k, cols * k)

    def proxy_read_share(self, size: int) -> float:
        """The share of the image's pixels a proxy of `size` reads (the level it is made from), by the project's one
        definition (images.LargeImage), without reading anything."""
        factor = self.proxy_level(size)
        return math.ceil(self.height / factor) * math.ceil(self.width / factor) / (self.height * self.width)

    def proxy(self, size):
        """Shrink-on-load (JPEG, WebP) or the nearest pyramid level (tiled TIFF) via vips thumbnail, upright, to
        PROXY_OVERSAMPLE x the proxy's size, then area-averaged to it (as the in-memory images' proxies are)."""
        pyvips = require_pyvips()
        rows, cols = proxy_extent(self.height, self.width, size)
        k, factor = self.proxy_oversample(size), self.proxy_level(size)
        self.count_read(0, 0, self.height, self.width, factor=factor)
        try:
            page = dict(self.pyramid).get(factor)
            if self.value_range() is None and page is not None:
                # what vips' thumbnail of the file does (it shrinks this same page), without opening the file again
                small = self._page(page).thumbnail_image(cols * k, height=rows * k, size="force")
                pixels = to_tensor(to_channels(small, self.channels))
            elif self.value_range() is None:
                # fail_on: a truncated JPEG shrunk on load otherwise gives a proxy (grey below the cut) and fails
                # only when a glimpse is read, mid-training, past the scan that --skip-bad relies on
                small = pyvips.Image.thumbnail(str(self.path), cols * k, height=rows * k, size="force", no_rotate=False,
                                               fail_on="warning")
                pixels = to_tensor(to_channels(small, self.channels))
            else:  # a float file: vips' thumbnail would cast its samples; shrink the 8-bit level instead
                level = self._level(page) if page else self._source()
                small = level.autorot() if self.orientation != 1 else level
                pixels = to_tensor(small.thumbnail_image(cols * k, height=rows * k, size="force"))
        except pyvips.Error as error:
            raise ImageError(f"{self.path}: cannot make a proxy ({_first_line(error)})") from None
        self.proxy_source = f"vips thumbnail ({self.loader}: shrink-on-load or pyramid level) at {k}x, area-averaged"
        out = torch.zeros(self.channels, size, size)
        out[:, :rows, :cols] = _block_mean(pixels, k)  # what F.interpolate's "area" gives for k <= 2, faster
        return out
