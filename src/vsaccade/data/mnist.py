"""MNIST in IDX format: reading (.gz or raw), locating, verifying and downloading into the package cache.

Where MNIST is looked for, in order: a directory given by argument (holding the IDX files or an `mnist/`
subfolder), `$VSACCADE_DATA/mnist`, and the cache `$VSACCADE_CACHE/mnist` (default `~/.cache/vsaccade/mnist`).
Downloads go into the cache, are verified by the SHA-256 of the *decompressed* payloads (gzip packing differs
between copies) and are disabled by `VSACCADE_OFFLINE=1`.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import socket
import struct
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np


class DataSourceError(RuntimeError):
    """A digit source that cannot be used: missing, corrupt, or not downloadable. Messages are one line."""


MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

DEFAULT_MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]

SPLIT_PREFIX = {"train": "train", "test": "t10k"}

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16


def offline() -> bool:
    """True when `VSACCADE_OFFLINE` is set to anything but empty, 0, false or no."""
    return os.environ.get("VSACCADE_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def cache_root() -> Path:
    """The package cache: `$VSACCADE_CACHE`, else `~/.cache/vsaccade`."""
    root = os.environ.get("VSACCADE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "vsaccade"


def mnist_cache_dir() -> Path:
    """Where downloaded MNIST files live: `<cache root>/mnist`."""
    return cache_root() / "mnist"


def mirror_list(mirrors: list[str] | None = None) -> list[str]:
    """The mirrors to try: the argument, else `$VSACCADE_MNIST_MIRRORS` (comma separated), else the defaults."""
    if mirrors is None:
        env = os.environ.get("VSACCADE_MNIST_MIRRORS", "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or DEFAULT_MIRRORS
    return list(mirrors)


def _idx_file(directory: Path, stem: str) -> Path | None:
    """The raw or gzipped file for `stem` in `directory` (raw preferred: faster to read), or None."""
    for name in (stem, stem + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    return None


def _has_mnist(directory: Path) -> bool:
    return all(_idx_file(directory, stem) is not None for stem in MNIST_FILES)


def _read_payload(path: Path) -> bytes:
    """The decompressed bytes of a .gz file (recognised by its magic bytes) or the bytes of a raw file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataSourceError(f"cannot read {path}: {err}") from err
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataSourceError(f"{path}: corrupt or truncated gzip data ({err})") from err


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (.gz or raw), native byte order; checks magic number, dims and length."""
    path = Path(path)
    data = _read_payload(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DataSourceError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataSourceError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dims expected)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        state = "truncated" if len(data) - header < expected else "too long"
        raise DataSourceError(
            f"{path}: {state} IDX data ({len(data) - header} bytes after the header, {expected} expected for {dims})"
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def find_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first directory holding all four MNIST files, or None.

    Looks in `data_dir` (the files directly, or its `mnist/` subfolder), then `$VSACCADE_DATA/mnist`,
    then the cache. Only presence is checked here; contents are checked when read.
    """
    for candidate in search_locations(data_dir):
        if _has_mnist(candidate):
            return candidate
    return None


def search_locations(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories `find_mnist_dir` looks in, in order."""
    locations: list[Path] = []
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        locations += [base, base / "mnist"]
    env = os.environ.get("VSACCADE_DATA")
    if env:
        locations.append(Path(env).expanduser() / "mnist")
    locations.append(mnist_cache_dir())
    return locations


def load_mnist(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) int64 labels of one split ("train" or "test") read from `directory`."""
    if split not in SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(directory)
    prefix = SPLIT_PREFIX[split]
    paths = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        path = _idx_file(directory, f"{prefix}-{kind}")
        if path is None:
            raise DataSourceError(f"no {prefix}-{kind}[.gz] in {directory}")
        paths[kind] = path
    images_path, labels_path = paths["images-idx3-ubyte"], paths["labels-idx1-ubyte"]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataSourceError(f"{images_path}: expected uint8 (N, 28, 28) images, got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (len(images),):
        raise DataSourceError(f"{labels_path}: expected {len(images)} uint8 labels, got {labels.dtype} {labels.shape}")
    if len(labels) and labels.max() > 9:
        raise DataSourceError(f"{labels_path}: label {int(labels.max())} outside 0-9")
    return images, labels.astype(np.int64)


def _payload_sha256(path: Path) -> str:
    """SHA-256 of the decompressed payload of a .gz or raw file (streamed)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as raw:
            magic = raw.read(2)
            raw.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=raw) if magic == _GZIP_MAGIC else raw
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise DataSourceError(f"cannot read {path}: {err}") from err
    return digest.hexdigest()


def verify_mnist(directory: str | os.PathLike) -> None:
    """Raise DataSourceError unless the four MNIST files in `directory` have the expected decompressed SHA-256."""
    directory = Path(directory)
    problems = []
    for stem, expected in MNIST_FILES.items():
        path = _idx_file(directory, stem)
        if path is None:
            problems.append(f"{stem} missing")
        elif not _verified(directory, stem, expected):
            problems.append(f"{path.name} has the wrong SHA-256 or is unreadable")
    if problems:
        raise DataSourceError(f"MNIST in {directory} failed verification: {'; '.join(problems)}")


def _remaining(deadline: float) -> float:
    """Seconds left before `deadline`; TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _recording_opener(sockets: list[socket.socket]) -> urllib.request.OpenerDirector:
    """A urllib opener (proxies and redirects as usual) whose connections append their sockets to `sockets`."""

    class HTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            sockets.append(self.sock)

    class HTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            sockets.append(self.sock)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(HTTPConnection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(HTTPSConnection, req)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def _fetch(url: str, handle: BinaryIO, deadline: float) -> None:
    """Write the body at `url` to `handle`, giving up (TimeoutError) once `deadline` passes.

    Each socket wait is limited to the time left: the body is read one receive at a time, with the socket's
    timeout reset before each.
    """
    sockets: list[socket.socket] = []
    with _recording_opener(sockets).open(url, timeout=_remaining(deadline)) as response:
        while True:
            if sockets:
                sockets[-1].settimeout(_remaining(deadline))
            chunk = response.read1(_CHUNK)
            if not chunk:
                return
            handle.write(chunk)


def _download_file(stem: str, mirror: str, directory: Path, deadline: float) -> Path:
    """Fetch `stem` (.gz, else raw) from one mirror into `directory`, verified, atomically; return its path."""
    base = mirror.rstrip("/") + "/"
    for name in (stem + ".gz", stem):
        url = base + name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=directory)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                _fetch(url, handle, deadline)
            try:
                digest = _payload_sha256(tmp)
            except DataSourceError as err:
                raise DataSourceError(f"{url}: unreadable download ({err.__cause__})") from err
            if digest != MNIST_FILES[stem]:
                raise DataSourceError(f"{url} has the wrong SHA-256 (of the decompressed payload)")
            with tmp.open("rb") as handle:
                packed = handle.read(2) == _GZIP_MAGIC
            final = directory / (stem + ".gz" if packed else stem)
            os.replace(tmp, final)
            (directory / (stem if packed else stem + ".gz")).unlink(missing_ok=True)  # drop a stale other copy
            return final
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise  # only "not found" means: try the other file name on the same mirror
        finally:
            tmp.unlink(missing_ok=True)
    raise DataSourceError(f"{base}: neither {stem}.gz nor {stem} found (HTTP 404)")


def download_mnist(
    cache_dir: str | os.PathLike | None = None, mirrors: list[str] | None = None, timeout: float = 60.0
) -> Path:
    """Download the four MNIST files into `cache_dir` (default `<cache root>/mnist`) and return that directory.

    Mirrors are tried in order for each file (.gz first, then the raw name); files already present and
    verified are kept. The whole download, across all files and mirrors, is bounded by `timeout` seconds
    (every connection and read waits at most the time left; name resolution is up to the system resolver).
    Each file is written to a temporary file in `cache_dir`, verified by the SHA-256 of its decompressed
    payload, then renamed into place, so the cache never holds a partial or wrong file.
    """
    mirrors = mirror_list(mirrors)
    if offline():
        raise DataSourceError("MNIST download disabled by VSACCADE_OFFLINE=1")
    if not mirrors:
        raise DataSourceError("MNIST download impossible: no mirrors given")
    deadline = time.monotonic() + timeout
    directory = Path(cache_dir).expanduser() if cache_dir is not None else mnist_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataSourceError(f"cannot create MNIST cache {directory}: {err}") from err
    dead: set[str] = set()  # mirrors that failed other than by a missing or wrong file: not asked again
    for stem, expected in MNIST_FILES.items():
        if _verified(directory, stem, expected):
            continue
        reason = "no mirror left to try"
        for mirror in mirrors:
            if mirror in dead:
                continue
            try:
                _download_file(stem, mirror, directory, deadline)
                break
            except urllib.error.HTTPError as err:
                reason = f"{err.url or mirror}: HTTP {err.code} {err.reason}"
            except DataSourceError as err:
                reason = str(err)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
                reason = f"{mirror}: {getattr(err, 'reason', None) or err or type(err).__name__}"
                dead.add(mirror)
        else:
            raise DataSourceError(
                f"could not download MNIST file {stem} within {timeout:g} s from {', '.join(mirrors)}; "
                f"last reason: {reason}"
            )
    return directory


def _verified(directory: Path, stem: str, expected: str) -> bool:
    """Whether `directory` already holds `stem` with the expected decompressed SHA-256."""
    path = _idx_file(directory, stem)
    try:
        return path is not None and _payload_sha256(path) == expected
    except DataSourceError:
        return False
