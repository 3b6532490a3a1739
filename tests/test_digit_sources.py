"""Digit sources: IDX reading, MNIST resolution and download (against 127.0.0.1 only), font fallback."""

from __future__ import annotations

import functools
import gzip
import shutil
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from vsaccade.data.digits import DataSourceError, clear_cache, load_digits
from vsaccade.data.font_digits import render_font_digits
from vsaccade.data.mnist import MNIST_FILES, download_mnist, find_mnist_dir, read_idx, verify_mnist

SHARED_MNIST = Path(__file__).parents[2] / "shared/data/mnist"
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

requires_shared_mnist = pytest.mark.skipif(
    not all((SHARED_MNIST / f"{stem}.gz").is_file() for stem in MNIST_FILES),
    reason=f"the shared MNIST copy is missing from {SHARED_MNIST}",
)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Offline, an empty cache, no data folder, no in-process cache, and no connection beyond 127.0.0.1."""
    real_connect = socket.socket.connect

    def local_only(self, address):
        if isinstance(address, tuple) and address[0] != "127.0.0.1":
            raise AssertionError(f"test tried to connect to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setenv("VSACCADE_OFFLINE", "1")
    monkeypatch.setenv("VSACCADE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VSACCADE_DATA", raising=False)
    monkeypatch.delenv("VSACCADE_MNIST_MIRRORS", raising=False)
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def serve():
    """Start an HTTP server on 127.0.0.1 for a folder; return its URL. Servers stop at teardown."""
    servers = []

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    def start(folder: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def decompress_into(folder: Path, stems=tuple(MNIST_FILES)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (folder / stem).write_bytes(gzip.decompress((SHARED_MNIST / f"{stem}.gz").read_bytes()))
    return folder


def cache_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# --- IDX files ---------------------------------------------------------------------------------------------------


@requires_shared_mnist
def test_read_idx_gz_and_raw(tmp_path):
    gz_images = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    gz_labels = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert gz_images.shape == (10000, 28, 28) and gz_images.dtype == np.uint8
    assert gz_labels.shape == (10000,) and gz_labels.dtype == np.uint8
    raw = decompress_into(tmp_path / "raw", ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(read_idx(raw / "t10k-images-idx3-ubyte"), gz_images)
    np.testing.assert_array_equal(read_idx(raw / "t10k-labels-idx1-ubyte"), gz_labels)


def test_read_idx_other_dtype(tmp_path):
    path = tmp_path / "floats-idx2"
    values = np.arange(6, dtype=">f4").reshape(2, 3)
    path.write_bytes(bytes([0, 0, 0x0D, 2]) + np.array([2, 3], dtype=">u4").tobytes() + values.tobytes())
    result = read_idx(path)
    assert result.dtype == np.float32 and result.dtype.isnative
    np.testing.assert_array_equal(result, values)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\x00\x08\x03\x00\x00",  # header cut short
        bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"abc",  # 3 of 5 items
        bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + b"abc",  # one byte too many
        b"PK\x03\x04 not an idx file",  # bad magic number
    ],
)
def test_read_idx_rejects_corrupt_raw(tmp_path, content):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataSourceError, match="broken-idx1-ubyte"):
        read_idx(path)


def test_read_idx_rejects_truncated_and_corrupt_gz(tmp_path):
    packed = gzip.compress(bytes([0, 0, 8, 1]) + (1000).to_bytes(4, "big") + bytes(1000))
    truncated = tmp_path / "truncated-idx1-ubyte.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataSourceError, match="truncated-idx1-ubyte.gz"):
        read_idx(truncated)
    corrupt = tmp_path / "corrupt-idx1-ubyte.gz"
    corrupt.write_bytes(packed[:10] + b"\xff" * (len(packed) - 10))
    with pytest.raises(DataSourceError, match="corrupt-idx1-ubyte.gz"):
        read_idx(corrupt)


# --- Local MNIST -------------------------------------------------------------------------------------------------


@requires_shared_mnist
def test_load_digits_from_data_dir(monkeypatch):
    train = load_digits("train", source="mnist", data_dir=SHARED_MNIST)
    assert train.source == "mnist" and train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == TRAIN_COUNTS
    expected = {"source": "mnist", "split": "train", "path": str(SHARED_MNIST.resolve()), "count": 60000}
    assert train.describe() == expected

    import vsaccade.data.digits as digits

    def no_parsing(*args):
        raise AssertionError("the second load parsed the files again instead of using the in-process cache")

    monkeypatch.setattr(digits, "load_mnist", no_parsing)
    again = load_digits("train", data_dir=SHARED_MNIST)  # auto finds it too, from the in-process cache
    np.testing.assert_array_equal(again.images, train.images)
    again.images[0] = 0  # callers get their own copies
    assert load_digits("train", data_dir=SHARED_MNIST).images[0].any()


@requires_shared_mnist
def test_load_digits_from_env_and_raw_files(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mnist").symlink_to(SHARED_MNIST, target_is_directory=True)
    monkeypatch.setenv("VSACCADE_DATA", str(tmp_path / "data"))
    test = load_digits("test")
    assert test.source == "mnist" and test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels).tolist() == TEST_COUNTS
    assert find_mnist_dir() == tmp_path / "data" / "mnist"

    raw = decompress_into(tmp_path / "raw" / "mnist", ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
    for stem in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]:
        shutil.copy(SHARED_MNIST / f"{stem}.gz", raw)
    from_raw = load_digits("test", data_dir=tmp_path / "raw")  # data_dir/mnist, and ahead of VSACCADE_DATA
    assert from_raw.describe()["path"] == str(raw.resolve())
    np.testing.assert_array_equal(from_raw.images, test.images)


# --- Download ----------------------------------------------------------------------------------------------------


@requires_shared_mnist
def test_download_gz_files(tmp_path, monkeypatch, serve):
    monkeypatch.delenv("VSACCADE_OFFLINE")
    served = tmp_path / "served"
    shutil.copytree(SHARED_MNIST, served)
    cache = download_mnist(tmp_path / "cache" / "mnist", mirrors=[serve(served)], timeout=20)
    assert cache_files(cache) == sorted(f"{stem}.gz" for stem in MNIST_FILES)
    verify_mnist(cache)
    # The cache is where load_digits looks next, offline.
    monkeypatch.setenv("VSACCADE_OFFLINE", "1")
    assert np.bincount(load_digits("test", source="mnist").labels).tolist() == TEST_COUNTS


@requires_shared_mnist
def test_download_raw_files_after_dead_mirror(tmp_path, monkeypatch, serve):
    monkeypatch.delenv("VSACCADE_OFFLINE")
    served = decompress_into(tmp_path / "served")
    dead = f"http://127.0.0.1:{free_port()}/"
    monkeypatch.setenv("VSACCADE_MNIST_MIRRORS", f"{dead},{serve(served)}")
    cache = download_mnist(timeout=20)
    assert cache == tmp_path / "cache" / "mnist"
    assert cache_files(cache) == sorted(MNIST_FILES)
    verify_mnist(cache)


@requires_shared_mnist
def test_download_rejects_tampered_file(tmp_path, monkeypatch, serve):
    monkeypatch.delenv("VSACCADE_OFFLINE")
    served = tmp_path / "served"
    shutil.copytree(SHARED_MNIST, served)
    tampered = bytearray(gzip.decompress((served / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    tampered[100] = (tampered[100] + 1) % 10  # one label changed: still a valid IDX file
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(tampered)))
    mirror = serve(served)
    cache = tmp_path / "cache" / "mnist"
    with pytest.raises(DataSourceError, match=r"t10k-labels-idx1-ubyte.*SHA-256") as info:
        download_mnist(cache, mirrors=[mirror], timeout=20)
    assert mirror in str(info.value) and "\n" not in str(info.value)
    assert "t10k-labels-idx1-ubyte" not in " ".join(cache_files(cache))
    assert not [name for name in cache_files(cache) if name.endswith(".part")]
    with pytest.raises(DataSourceError, match="t10k-labels-idx1-ubyte missing"):
        verify_mnist(cache)


def test_offline_download_opens_no_connection(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted while offline")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(DataSourceError, match="VSACCADE_OFFLINE"):
        download_mnist(tmp_path / "cache", mirrors=["http://127.0.0.1:9/"])
    assert not (tmp_path / "cache").exists()


def test_dead_mirror_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("VSACCADE_OFFLINE")
    dead = f"http://127.0.0.1:{free_port()}/"
    start = time.perf_counter()
    with pytest.raises(DataSourceError, match="could not download") as info:
        download_mnist(tmp_path / "cache", mirrors=[dead], timeout=5)
    assert time.perf_counter() - start < 5
    assert dead in str(info.value)
    assert cache_files(tmp_path / "cache") == []


def test_silent_mirror_bounded_by_timeout(tmp_path, monkeypatch):
    monkeypatch.delenv("VSACCADE_OFFLINE")
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mirror = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        start = time.perf_counter()
        with pytest.raises(DataSourceError, match="timed out"):
            download_mnist(tmp_path / "cache", mirrors=[mirror], timeout=0.5)
        assert time.perf_counter() - start < 2
    assert cache_files(tmp_path / "cache") == []


def test_stalling_transfer_bounded_by_timeout(tmp_path, monkeypatch):
    monkeypatch.delenv("VSACCADE_OFFLINE")
    stop = threading.Event()

    def drip_then_stall(listener: socket.socket) -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            for _ in range(4):  # a trickle of bytes, then silence
                connection.sendall(b"\x1f")
                time.sleep(0.1)
            stop.wait(10)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server = threading.Thread(target=drip_then_stall, args=(listener,), daemon=True)
        server.start()
        start = time.perf_counter()
        with pytest.raises(DataSourceError, match="timed out"):
            download_mnist(tmp_path / "cache", mirrors=[f"http://127.0.0.1:{listener.getsockname()[1]}/"], timeout=0.8)
        elapsed = time.perf_counter() - start
        stop.set()
        server.join(5)
    assert 0.7 < elapsed < 2.0
    assert cache_files(tmp_path / "cache") == []


# --- Fallback ----------------------------------------------------------------------------------------------------


def test_auto_falls_back_to_font_with_one_notice(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("VSACCADE_DATA", str(tmp_path / "data"))
    digits = load_digits("test")
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1 and "font" in notice and "VSACCADE_OFFLINE" in notice
    assert digits.source == "font" and digits.describe()["source"] == "font"
    assert digits.images.shape == (10000, 28, 28) and digits.images.dtype == np.uint8
    assert np.bincount(digits.labels).tolist() == [1000] * 10

    with pytest.raises(DataSourceError, match="MNIST not found") as info:
        load_digits("test", source="mnist")
    assert "\n" not in str(info.value) and str(tmp_path / "data" / "mnist") in str(info.value)
    assert capsys.readouterr().err == ""


def test_auto_falls_back_after_failed_download_and_does_not_retry(monkeypatch, capsys):
    import vsaccade.data.digits as digits_module

    monkeypatch.delenv("VSACCADE_OFFLINE")
    monkeypatch.setattr(digits_module, "FONT_COUNTS", {"train": 100, "test": 100})
    dead = f"http://127.0.0.1:{free_port()}/"
    monkeypatch.setenv("VSACCADE_MNIST_MIRRORS", dead)
    attempts = []
    real_download = digits_module.download_mnist

    def counted_download(*args, **kwargs):
        attempts.append(1)
        return real_download(*args, **kwargs)

    monkeypatch.setattr(digits_module, "download_mnist", counted_download)
    assert load_digits("train").source == "font"
    assert load_digits("test").source == "font"
    assert len(attempts) == 1
    notices = capsys.readouterr().err.splitlines()
    assert len(notices) == 1 and dead in notices[0] and "font" in notices[0]  # one notice for both splits
    with pytest.raises(DataSourceError, match="not downloadable") as info:
        load_digits("test", source="mnist")
    assert dead in str(info.value)


def test_font_source_splits_differ(monkeypatch):
    import vsaccade.data.digits as digits_module

    monkeypatch.setattr(digits_module, "FONT_COUNTS", {"train": 500, "test": 200})
    train, test = load_digits("train", source="font"), load_digits("test", source="font")
    assert (train.source, len(train.labels), len(test.labels)) == ("font", 500, 200)
    assert train.describe()["seed"] != test.describe()["seed"]
    assert not np.array_equal(train.images[:200], test.images)


def test_font_digits_deterministic_balanced_nonblank():
    images, labels = render_font_digits(300, seed=7)
    again, again_labels = render_font_digits(300, seed=7)
    other, _ = render_font_digits(300, seed=8)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, other)
    assert images.shape == (300, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == [30] * 10
    assert (images.reshape(300, -1).max(axis=1) > 200).all()  # every digit has bright strokes
    ink = (images > 64).sum(axis=(1, 2))
    assert (ink > 15).all() and (ink < 300).all()
    # Centred like MNIST: centre of mass near the middle.
    grid = np.arange(28)
    mass = images.sum(axis=(1, 2)).astype(float)
    rows = images.sum(axis=2) @ grid / mass
    cols = images.sum(axis=1) @ grid / mass
    assert np.abs(rows - 13.5).max() < 3 and np.abs(cols - 13.5).max() < 3
