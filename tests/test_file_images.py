"""File-backed large images (pyvips): the same glimpses as from the decoded upright array, gradients to the
coordinates, pixel conversions, one-line errors for unusable files."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from vsaccade.file_images import FileImage
from vsaccade.images import ArrayImage, ImageError
from vsaccade.model.glimpse_sampler import sample_glimpses

pyvips = pytest.importorskip("pyvips")

HEIGHT, WIDTH = 240, 360


def smooth_rgb(seed=0):
    """Smooth content (JPEG-friendly), with a bright asymmetric mark so orientation errors cannot hide."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((3, 12, 18)).astype(np.float32)
    pixels = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], (HEIGHT, WIDTH), mode="bicubic")[0]
    array = (pixels.clamp(0, 1).permute(1, 2, 0).numpy() * 200).astype(np.uint8)
    array[20:60, 30:50] = 255
    return array


def upright_array(path, mode="RGB"):
    with Image.open(path) as handle:
        return np.asarray(ImageOps.exif_transpose(handle).convert(mode))


def write(path, array, orientation=None, **options):
    image = Image.fromarray(array)
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    image.save(path, **options)
    return path


def tiled_tiff(path, array):
    pyvips.Image.new_from_array(array).copy(interpretation="srgb").tiffsave(
        str(path), tile=True, tile_width=64, tile_height=64, pyramid=True, compression="deflate")
    return path


@pytest.fixture
def files(tmp_path):
    array = smooth_rgb()
    return array, {
        "png": write(tmp_path / "a.png", array),
        "jpeg": write(tmp_path / "a.jpg", array, quality=95),
        "tiff": tiled_tiff(tmp_path / "a.tif", array),
        "jpeg-rot6": write(tmp_path / "r6.jpg", array, orientation=6, quality=95),
        "jpeg-rot3": write(tmp_path / "r3.jpg", array, orientation=3, quality=95),
        "jpeg-rot5": write(tmp_path / "r5.jpg", array, orientation=5, quality=95),
    }


@pytest.mark.parametrize("kind", ["png", "jpeg", "tiff", "jpeg-rot6", "jpeg-rot3", "jpeg-rot5"])
def test_glimpses_from_files_equal_glimpses_from_the_upright_array(files, kind):
    _, paths = files
    path = paths[kind]
    reference = ArrayImage(upright_array(path))
    image = FileImage(path, channels=3)
    assert (image.height, image.width) == (reference.height, reference.width)
    assert image.decodes_whole == (kind != "tiff")
    # regions: inside, across the border, downsampled
    for top, left, h, w, d in [(10, 20, 50, 70, 1), (-8, -5, 30, 40, 1), (100, 150, 64, 64, 2), (0, 0, HEIGHT, WIDTH, 4)]:
        ours, theirs = image.read_region(top, left, h, w, d), reference.read_region(top, left, h, w, d)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() < 0.04, (kind, top, left, d)  # JPEG decoders differ slightly
    z = torch.tensor([[0.3, -0.2, 0.1], [0.15, 0.6, -0.7], [0.5, 0.0, 0.0]])
    ours, theirs = sample_glimpses([image] * 3, z, 24), sample_glimpses([reference] * 3, z, 24)
    assert (ours - theirs).abs().max() < 0.04


def test_proxy_from_file_matches_the_array_proxy(files):
    _, paths = files
    for kind in ("tiff", "jpeg-rot6"):
        image, reference = FileImage(paths[kind], channels=3), ArrayImage(upright_array(paths[kind]))
        ours, theirs = image.proxy(32), reference.proxy(32)
        assert ours.shape == theirs.shape == (3, 32, 32)
        # vips resamples with a Lanczos kernel, the array proxy averages areas: the same picture, not the same values
        correlation = torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]
        assert correlation > 0.95 and (ours - theirs).abs().mean() < 0.06, (kind, correlation)
        assert "thumbnail" in image.proxy_source


def test_gradients_reach_the_coordinates_through_a_file(files):
    _, paths = files
    image = FileImage(paths["tiff"], channels=1)
    z = torch.tensor([[0.3, -0.2, 0.1]], requires_grad=True)
    sample_glimpses([image], z, 16).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 1:].abs().sum() > 0


def test_conversions_to_8bit_srgb_and_grey(tmp_path):
    grey = np.tile(np.arange(0, 256, dtype=np.uint8), (64, 1))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # half-transparent red -> composited on black: about 100
    cases = {
        "grey.png": (Image.fromarray(grey), 1, grey / 255),
        "grey16.png": (Image.fromarray((grey.astype(np.uint16) * 257)), 1, grey / 255),
        "rgba.png": (Image.fromarray(rgba, "RGBA"), 3, None),
        "palette.png": (Image.fromarray(np.stack([grey] * 3, -1)).convert("P", palette=Image.Palette.ADAPTIVE), 1, None),
        "cmyk.jpg": (Image.new("CMYK", (64, 64), (0, 255, 255, 0)), 3, None),  # pure red in CMYK
    }
    for name, (image, channels, expected) in cases.items():
        image.save(tmp_path / name)
        pixels = FileImage(tmp_path / name, channels=channels).read_region(0, 0, 64, 64)
        assert pixels.shape == (channels, 64, 64) and 0 <= pixels.min() and pixels.max() <= 1, name
        if expected is not None:
            assert (pixels[0] - torch.from_numpy(expected[:64, :64]).float()).abs().max() < 2 / 255, name
    rgba_pixels = FileImage(tmp_path / "rgba.png", channels=3).read_region(0, 0, 8, 8)
    assert abs(rgba_pixels[0].mean().item() - 200 * 128 / 255 / 255) < 0.02 and rgba_pixels[1:].max() < 0.02
    cmyk = FileImage(tmp_path / "cmyk.jpg", channels=3).read_region(0, 0, 8, 8).mean((1, 2))
    assert cmyk[0] > 0.6 and cmyk[1] < 0.35 and cmyk[2] < 0.35  # red stays red


def test_float_and_16_bit_images_are_scaled_by_their_value_range_not_cast(tmp_path):
    pyvips = pytest.importorskip("pyvips")
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    cases = {
        "unit-float.tif": (ramp, ramp),  # floats in [0, 1]: a cast would read them as black
        "wide-float.tif": (ramp * 1000 - 200, ramp),  # other floats: by their own range
        "rgb16.tif": (np.stack([ramp * 65535] * 3, -1).astype(np.uint16), ramp),
    }
    for name, (array, expected) in cases.items():
        bands = array.shape[2] if array.ndim == 3 else 1
        image = pyvips.Image.new_from_memory(np.ascontiguousarray(array).tobytes(), 64, 64, bands,
                                             {np.float32: "float", np.uint16: "ushort"}[array.dtype.type])
        if bands == 3:
            image = image.copy(interpretation="rgb16")
        image.tiffsave(str(tmp_path / name), tile=True, tile_width=32, tile_height=32, pyramid=True)
        for channels in (1, 3):
            pixels = FileImage(tmp_path / name, channels=channels).read_region(0, 0, 64, 64)
            assert (pixels - torch.from_numpy(expected)).abs().max() < 2 / 255, (name, channels)
        # the pyramid level and the proxy scale as the full resolution does (one range per file)
        image = FileImage(tmp_path / name, channels=1)
        level = image.read_region(0, 0, 64, 64, downsample=2)
        assert (level[0] - torch.from_numpy(expected).view(32, 2, 32, 2).mean((1, 3))).abs().max() < 3 / 255, name
        assert abs(image.proxy(16)[0].mean().item() - 0.5) < 0.02, name


def test_unusable_files_get_one_line_errors(tmp_path, files):
    array, paths = files
    jpeg = paths["jpeg"].read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image at all\n")
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    cases = {"missing.jpg": "image not found", "empty.jpg": "empty file", "notes.jpg": "not a readable image",
             "noise.png": "not a readable image", "truncated.jpg": "truncated|premature|cannot|not a readable"}
    for name, message in cases.items():
        with pytest.raises(ImageError, match=message) as caught:
            image = FileImage(tmp_path / name, channels=3)
            image.read_region(0, 0, HEIGHT, WIDTH)  # a truncated file may open and fail only when decoded
            image.proxy(16)
        assert "\n" not in str(caught.value) and str(tmp_path / name) in str(caught.value), name
    with pytest.raises(ImageError, match="max_pixels"):
        FileImage(paths["png"], max_pixels=1000)


def test_downsampled_reads_from_a_pyramid_level(files):
    array, paths = files
    image, reference = FileImage(paths["tiff"], channels=3), ArrayImage(upright_array(paths["tiff"]))
    assert [f for f, _ in image.pyramid][:2] == [2, 4]
    exact = image.read_region(16, 32, 160, 200, 4)  # level 4 divides 4: block means of block means
    assert (exact - reference.read_region(16, 32, 160, 200, 4)).abs().max() < 0.02
    approximate = image.read_region(0, 0, 240, 360, 10)  # level 4, area-resampled by 2.5
    assert approximate.shape == (3, 24, 36)
    assert (approximate - reference.read_region(0, 0, 240, 360, 10)).abs().mean() < 0.03


def noise_pyramid(path, width, height, bands, seed=0):
    pixels = (np.random.default_rng(seed).random((height, width, bands)) * 255).astype(np.uint8)
    image = pyvips.Image.new_from_memory(pixels.tobytes(), width, height, bands, "uchar")
    image.copy(interpretation="b-w" if bands == 1 else "srgb").tiffsave(
        str(path), tile=True, tile_width=64, tile_height=64, pyramid=True, compression="deflate")
    return path


@pytest.mark.parametrize("width, height, size", [(1000, 600, 120), (1024, 512, 128), (1025, 513, 128), (600, 1000, 75)])
def test_a_pyramid_proxy_is_vips_thumbnail_of_the_file(tmp_path, width, height, size):
    """The proxy shrinks an already open pyramid page (no second open of the file); it must be exactly what vips'
    thumbnail of the file gives, including where a level is exactly the thumbnail's size (vips then takes the
    level above: (1024, 512) at 128 asks 256x128 of a 256x128 level)."""
    import torch.nn.functional as F

    from vsaccade.file_images import PROXY_OVERSAMPLE, to_channels, to_tensor
    from vsaccade.geometry import proxy_extent

    for bands in (1, 3):
        path = noise_pyramid(tmp_path / f"p{bands}.tif", width, height, bands)
        image = FileImage(path, channels=bands)
        assert image.pyramid
        rows, cols = proxy_extent(height, width, size)
        k = max(1, min(PROXY_OVERSAMPLE, height // rows, width // cols))
        small = to_tensor(to_channels(pyvips.Image.thumbnail(str(path), cols * k, height=rows * k, size="force"), bands))
        expected = torch.zeros(bands, size, size)
        expected[:, :rows, :cols] = F.interpolate(small[None], size=(rows, cols), mode="area")[0]
        assert torch.equal(image.proxy(size), expected)


def test_region_reads_from_a_level_equal_vips_crops(tmp_path):
    """Level reads go through a pyvips.Region (no operation built per read): the same pixels as a crop of the level,
    inside it and across its border (zeros outside)."""
    from vsaccade.file_images import to_tensor

    path = noise_pyramid(tmp_path / "n.tif", 900, 700, 3)
    image = FileImage(path, channels=3)
    level = pyvips.Image.new_from_file(str(path), page=1)
    for top, left, height, width in [(100, 200, 64, 80), (-10, -6, 40, 50), (680, 880, 60, 60), (0, 0, 700, 900)]:
        ours = image.read_region(top, left, height, width, 2)
        expected = torch.zeros(3, height // 2, width // 2)
        y0, x0 = max(top // 2, 0), max(left // 2, 0)
        y1, x1 = min((top + height) // 2, level.height), min((left + width) // 2, level.width)
        expected[:, y0 - top // 2 : y1 - top // 2, x0 - left // 2 : x1 - left // 2] = to_tensor(level.crop(x0, y0, x1 - x0, y1 - y0))
        assert torch.equal(ours, expected), (top, left)


@pytest.mark.parametrize("bigtiff", [False, True])
def test_pyramid_page_sizes_come_from_the_tiff_directory(tmp_path, bigtiff):
    """FileImage learns its pyramid from the TIFF's directory (no page opened until read): the same sizes vips reports,
    classic and BigTIFF; None for what is not a TIFF (vips then opens each page)."""
    from vsaccade.file_images import tiff_page_sizes

    pixels = (np.random.default_rng(0).random((700, 900)) * 255).astype(np.uint8)
    path = tmp_path / "p.tif"
    pyvips.Image.new_from_memory(pixels.tobytes(), 900, 700, 1, "uchar").tiffsave(
        str(path), tile=True, tile_width=64, tile_height=64, pyramid=True, bigtiff=bigtiff)
    pages = pyvips.Image.new_from_file(str(path)).get("n-pages")
    expected = [(pyvips.Image.new_from_file(str(path), page=k).width, pyvips.Image.new_from_file(str(path), page=k).height)
                for k in range(pages)]
    assert tiff_page_sizes(path) == expected
    assert FileImage(path).pyramid == [(2, 1), (4, 2), (8, 3), (16, 4)]
    (tmp_path / "x.tif").write_bytes(b"not a tiff at all")
    assert tiff_page_sizes(tmp_path / "x.tif") is None
