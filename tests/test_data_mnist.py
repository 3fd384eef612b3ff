"""Tests of the IDX reader and the MNIST loader; no network needed.

IDX files are written with the test helper ``tests/fixtures/idx_writer.py``.

Downloads are tested against a local ``ThreadingHTTPServer`` on 127.0.0.1 serving
a temporary directory, with the checksum table patched so the fixture files count
as "the published" ones.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from l2l_jax.data import (
    MIRRORS,
    find_mnist_dir,
    load_mnist,
    load_mnist_for_experiment,
    mnist,
    mnist_arrays,
    read_idx,
)
from l2l_jax.errors import DataError, L2LError


def _load_idx_writer():
    """The test helper tests/fixtures/idx_writer.py (tests are not a package)."""
    spec = importlib.util.spec_from_file_location("idx_writer", Path(__file__).parent / "fixtures" / "idx_writer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_idx = _load_idx_writer().write_idx

FIXTURE = Path(__file__).parent / "fixtures" / "mnist"
TEST_IMAGES, TEST_LABELS = mnist.SPLIT_FILES["test"]
TRAIN_IMAGES, TRAIN_LABELS = mnist.SPLIT_FILES["train"]
# Facts about the fixture (first 300 test images), see tests/fixtures/mnist/README.md.
FIXTURE_N = 300
FIXTURE_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
FIXTURE_LABEL_COUNTS = [24, 41, 32, 24, 37, 29, 24, 34, 21, 34]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeps every test away from the real cache directory and $L2L_JAX_DATA_DIR."""
    monkeypatch.delenv(mnist.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy_split(dest: Path, split: str = "test", n: int | None = None) -> Path:
    """Puts the fixture (optionally its first n images) under ``split``'s names in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    images_name, labels_name = mnist.SPLIT_FILES[split]
    if n is None:
        shutil.copy(FIXTURE / TEST_IMAGES, dest / images_name)
        shutil.copy(FIXTURE / TEST_LABELS, dest / labels_name)
    else:
        write_idx(dest / images_name, read_idx(FIXTURE / TEST_IMAGES)[:n])
        write_idx(dest / labels_name, read_idx(FIXTURE / TEST_LABELS)[:n])
    return dest


# --------------------------------------------------------------------------- IDX reader


def test_read_real_fixture() -> None:
    images = read_idx(FIXTURE / TEST_IMAGES)
    labels = read_idx(FIXTURE / TEST_LABELS)
    assert images.shape == (FIXTURE_N, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (FIXTURE_N,) and labels.dtype == np.uint8
    assert labels[:10].tolist() == FIXTURE_FIRST_LABELS
    assert np.bincount(labels, minlength=10).tolist() == FIXTURE_LABEL_COUNTS
    assert sum(FIXTURE_LABEL_COUNTS) == len(images)
    assert images.min() == 0 and images.max() == 255
    assert images.flags.writeable and images.dtype.isnative


def test_load_mnist_on_fixture_and_float_arrays() -> None:
    images, labels = load_mnist("test", data_dir=FIXTURE, download=False)
    assert images.shape == (FIXTURE_N, 28, 28) and labels[0] == 7
    x, y = mnist_arrays("test", data_dir=FIXTURE, download=False)
    assert x.shape == (FIXTURE_N, 784) and x.dtype == np.float32
    assert y.shape == (FIXTURE_N,) and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() == 1.0
    np.testing.assert_allclose(x[3], images[3].reshape(-1) / 255.0, rtol=1e-6)
    assert y.tolist() == labels.tolist()


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_write_read_round_trip(tmp_path: Path, dtype: str, shape: tuple[int, ...], name: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_write_idx_header_is_big_endian(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.idx", np.array([[1, 2, 3]], dtype=np.int16))
    assert path.read_bytes() == bytes.fromhex("00000b02" "00000001" "00000003" "0001" "0002" "0003")


def _raw_idx(array: np.ndarray, tmp_path: Path) -> bytes:
    return write_idx(tmp_path / "src.idx", array).read_bytes()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "too short"),
        (b"\x08\x03", "too short"),
        (b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x05", "bad IDX magic"),
        (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x05", "unknown IDX dtype code 0x07"),
        (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x01", "truncated IDX header"),
        (b"\x00\x00\x08\x01" + b"\x00\x00\x00\x04" + b"\x01\x02\x03", "truncated data"),
        (b"\x00\x00\x08\x01" + b"\x00\x00\x00\x02" + b"\x01\x02\x03", "trailing bytes"),
        (b"\x00\x00\x0c\x01" + b"\x00\x00\x00\x02" + b"\x00" * 7, "truncated data"),
    ],
)
def test_read_idx_rejects_malformed(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    # The same bytes gzipped fail the same way.
    gz = tmp_path / "broken.gz"
    gz.write_bytes(gzip.compress(content))
    with pytest.raises(DataError, match=match):
        read_idx(gz)


def test_read_idx_rejects_truncated_real_images(tmp_path: Path) -> None:
    raw = gzip.decompress((FIXTURE / TEST_IMAGES).read_bytes())
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(raw[:-100])
    with pytest.raises(DataError, match=r"truncated data.*\(300, 28, 28\)"):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip(tmp_path: Path) -> None:
    data = (FIXTURE / TEST_IMAGES).read_bytes()
    path = tmp_path / TEST_IMAGES
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_corrupt_gzip(tmp_path: Path) -> None:
    data = bytearray((FIXTURE / TEST_LABELS).read_bytes())
    data[-6] ^= 0xFF  # inside the CRC/size trailer
    path = tmp_path / TEST_LABELS
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read IDX file") as info:
        read_idx(tmp_path / "nope.gz")
    assert isinstance(info.value, L2LError) and isinstance(info.value, OSError)


# --------------------------------------------------------------------------- loader validation


def test_loader_validates_label_range(tmp_path: Path) -> None:
    _copy_split(tmp_path)
    labels = read_idx(FIXTURE / TEST_LABELS)
    labels[5] = 10
    write_idx(tmp_path / TEST_LABELS, labels)
    with pytest.raises(DataError, match="label 10 is out of the range 0..9"):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_loader_validates_counts_and_shapes(tmp_path: Path) -> None:
    _copy_split(tmp_path)
    write_idx(tmp_path / TEST_LABELS, read_idx(FIXTURE / TEST_LABELS)[:299])
    with pytest.raises(DataError, match="holds 300 images but .* holds 299 labels"):
        load_mnist("test", data_dir=tmp_path, download=False)
    _copy_split(tmp_path)
    write_idx(tmp_path / TEST_IMAGES, read_idx(FIXTURE / TEST_IMAGES)[:, :, :27])
    with pytest.raises(DataError, match=r"shape \(N, 28, 28\)"):
        load_mnist("test", data_dir=tmp_path, download=False)
    _copy_split(tmp_path)
    write_idx(tmp_path / TEST_LABELS, read_idx(FIXTURE / TEST_LABELS).astype(np.int32))
    with pytest.raises(DataError, match="expected uint8 labels"):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_unknown_split() -> None:
    with pytest.raises(DataError, match="unknown MNIST split 'validation'"):
        load_mnist("validation", data_dir=FIXTURE, download=False)


# --------------------------------------------------------------------------- lookup order


def test_lookup_order_argument_env_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arg_dir = _copy_split(tmp_path / "arg", n=30)
    env_dir = tmp_path / "env"
    _copy_split(env_dir / "mnist", n=20)  # <dir>/mnist/ layout
    _copy_split(mnist.cache_dir(), n=10)
    assert mnist.cache_dir() == tmp_path / "xdg-cache" / "l2l_jax" / "mnist"
    monkeypatch.setenv(mnist.ENV_VAR, str(env_dir))

    assert len(load_mnist("test", data_dir=arg_dir, download=False)[1]) == 30
    assert len(load_mnist("test", download=False)[1]) == 20
    monkeypatch.delenv(mnist.ENV_VAR)
    assert len(load_mnist("test", download=False)[1]) == 10


def test_env_dir_may_hold_files_directly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mnist.ENV_VAR, str(_copy_split(tmp_path / "flat", n=7)))
    assert len(load_mnist("test", download=False)[1]) == 7


def test_cache_dir_without_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert mnist.cache_dir() == tmp_path / "home" / ".cache" / "l2l_jax" / "mnist"


def test_explicit_dir_is_not_silently_replaced(tmp_path: Path) -> None:
    _copy_split(mnist.cache_dir())
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        load_mnist("test", data_dir=empty, download=False)
    message = str(info.value)
    # Says exactly where to put which files.
    assert str(empty / "mnist") in message
    assert TEST_IMAGES in message and TEST_LABELS in message
    assert "download=False" in message


def test_find_mnist_dir_searches_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_mnist_dir("test", tmp_path / "nothing") is None
    cache = _copy_split(mnist.cache_dir())
    assert find_mnist_dir("test", tmp_path / "nothing") == cache
    env = _copy_split(tmp_path / "env")
    monkeypatch.setenv(mnist.ENV_VAR, str(env))
    assert find_mnist_dir("test") == env
    assert find_mnist_dir("train") is None


# --------------------------------------------------------------------------- downloads


class _Handler(SimpleHTTPRequestHandler):
    """Serves files; ``/truncated/<name>`` sends half of ``good/<name>`` and hangs up."""

    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / "good" / self.path.rsplit("/", 1)[1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local HTTP server: ``good/`` fixture files, ``bad/`` corrupt copies, ``missing/`` empty."""
    root = tmp_path_factory.mktemp("www")
    good = _copy_split(root / "good")
    _copy_split(good, split="train")  # the fixture under the train names, too
    bad = root / "bad"
    bad.mkdir()
    for path in good.iterdir():
        (bad / path.name).write_bytes(b"not the file you are looking for")
    (root / "missing").mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def published(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes the fixture files "the published ones" in the checksum tables."""
    for split in ("test", "train"):
        for fixture_name, name in zip(mnist.SPLIT_FILES["test"], mnist.SPLIT_FILES[split]):
            monkeypatch.setitem(mnist.SHA256, name, _sha256(FIXTURE / fixture_name))
    for name in list(mnist.SHA256_DECOMPRESSED):
        monkeypatch.delitem(mnist.SHA256_DECOMPRESSED, name)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there any more


def _assert_only_mnist_files(directory: Path, names: tuple[str, ...]) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def test_download_good(server: tuple[str, Path], published: None, tmp_path: Path) -> None:
    url, _ = server
    data = tmp_path / "data"
    images, labels = load_mnist("test", data_dir=data, mirrors=[url + "/good/"], timeout=5)
    assert images.shape == (FIXTURE_N, 28, 28) and labels[:10].tolist() == FIXTURE_FIRST_LABELS
    _assert_only_mnist_files(data / "mnist", (TEST_IMAGES, TEST_LABELS))
    assert _sha256(data / "mnist" / TEST_IMAGES) == _sha256(FIXTURE / TEST_IMAGES)
    # A second load reads the files without any request.
    _Handler.requests.clear()
    load_mnist("test", data_dir=data, mirrors=[url + "/good/"])
    assert _Handler.requests == []


def test_download_only_missing_file(server: tuple[str, Path], published: None, tmp_path: Path) -> None:
    url, _ = server
    shutil.copy(FIXTURE / TEST_IMAGES, tmp_path / TEST_IMAGES)
    _Handler.requests.clear()
    load_mnist("test", data_dir=tmp_path, mirrors=[url + "/good/"])
    assert _Handler.requests == [f"/good/{TEST_LABELS}"]
    _assert_only_mnist_files(tmp_path, (TEST_IMAGES, TEST_LABELS))  # completed in place


def test_bad_checksum_then_good_mirror(server: tuple[str, Path], published: None, tmp_path: Path) -> None:
    url, _ = server
    _Handler.requests.clear()
    images, _ = load_mnist("test", data_dir=tmp_path / "mnist", mirrors=[url + "/bad/", url + "/good/"])
    assert len(images) == FIXTURE_N
    assert _Handler.requests[:2] == [f"/bad/{TEST_IMAGES}", f"/good/{TEST_IMAGES}"]
    _assert_only_mnist_files(tmp_path / "mnist", (TEST_IMAGES, TEST_LABELS))
    assert _sha256(tmp_path / "mnist" / TEST_IMAGES) == _sha256(FIXTURE / TEST_IMAGES)


def test_bad_checksum_leaves_nothing(server: tuple[str, Path], published: None, tmp_path: Path) -> None:
    url, _ = server
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataError, match="checksum mismatch"):
        load_mnist("test", data_dir=tmp_path / "mnist", mirrors=[url + "/bad/"])
    assert list((tmp_path / "mnist").iterdir()) == []  # an existing folder is kept, empty


def test_truncated_response(server: tuple[str, Path], published: None, tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(DataError, match="truncated response"):
        load_mnist("test", data_dir=tmp_path / "mnist", mirrors=[url + "/truncated/"])
    assert not (tmp_path / "mnist").exists()
    images, _ = load_mnist("test", data_dir=tmp_path / "mnist", mirrors=[url + "/truncated/", url + "/good/"])
    assert len(images) == FIXTURE_N
    _assert_only_mnist_files(tmp_path / "mnist", (TEST_IMAGES, TEST_LABELS))


def test_404_then_next_mirror(server: tuple[str, Path], published: None, tmp_path: Path) -> None:
    url, _ = server
    images, _ = load_mnist("test", data_dir=tmp_path, mirrors=[url + "/missing/", url + "/good/"])
    assert len(images) == FIXTURE_N


def test_all_mirrors_fail(server: tuple[str, Path], published: None, tmp_path: Path) -> None:
    url, _ = server
    closed = _closed_port_url()
    mirrors = [url + "/missing/", url + "/bad/", closed]
    data = tmp_path / "data"
    with pytest.raises(DataError) as info:
        load_mnist("test", data_dir=data, mirrors=mirrors, timeout=5)
    message = str(info.value)
    for mirror in mirrors:
        assert mirror + TEST_IMAGES in message
    assert "404" in message and "checksum mismatch" in message and "cannot connect" in message
    # Where to put the files by hand: the directory and the file names.
    assert f"in the directory {data / 'mnist'}" in message
    assert TEST_IMAGES in message and TEST_LABELS in message
    assert not data.exists()  # the folders it made for the download are gone again


def test_no_mirrors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no download mirrors"):
        load_mnist("test", data_dir=tmp_path, mirrors=[])


def test_default_mirrors() -> None:
    assert MIRRORS[0].startswith("https://") and all(m.endswith("/mnist/") for m in MIRRORS)
    assert set(mnist.SHA256) == {n for names in mnist.SPLIT_FILES.values() for n in names}
    assert all(len(v) == 64 for v in [*mnist.SHA256.values(), *mnist.SHA256_DECOMPRESSED.values()])


def test_real_table_accepts_recompressed_copy_by_decompressed_sha(server: tuple[str, Path], tmp_path: Path) -> None:
    """A re-gzipped copy of the real labels passes via SHA256_DECOMPRESSED; the fixture does not."""
    url, root = server
    real = root / "real"
    real.mkdir(exist_ok=True)
    raw = gzip.decompress((FIXTURE / TEST_LABELS).read_bytes())  # the first 300 labels only
    (real / TEST_LABELS).write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match="checksum mismatch"):
        mnist._download(TEST_LABELS, tmp_path, [url + "/real/"], 5, "hint")
    # The machine's copy of the real test labels, re-gzipped: its .gz bytes differ from the
    # published ones, but its decompressed bytes match SHA256_DECOMPRESSED.
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / TEST_LABELS
    if not shared.is_file():
        pytest.skip("the shared MNIST test split is not on this machine")
    (real / TEST_LABELS).write_bytes(gzip.compress(gzip.decompress(shared.read_bytes()), mtime=0))
    assert _sha256(real / TEST_LABELS) != mnist.SHA256[TEST_LABELS]  # different .gz bytes
    path = mnist._download(TEST_LABELS, tmp_path, [url + "/real/"], 5, "hint")
    assert len(read_idx(path)) == 10_000


def test_unknown_checksum_is_refused(server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url, _ = server
    monkeypatch.delitem(mnist.SHA256, TEST_LABELS)
    monkeypatch.delitem(mnist.SHA256_DECOMPRESSED, TEST_LABELS)
    with pytest.raises(DataError, match="no SHA-256 is known"):
        mnist._download(TEST_LABELS, tmp_path, [url + "/good/"], 5, "hint")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- experiment fallback


def test_experiment_uses_train_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "env"
    _copy_split(env / "mnist", split="train")
    _copy_split(env / "mnist", split="test", n=5)
    monkeypatch.setenv(mnist.ENV_VAR, str(env))
    images, labels, description = load_mnist_for_experiment(download=False)
    assert len(images) == len(labels) == FIXTURE_N
    assert description == f"MNIST train split (300 images) from {env / 'mnist'}"


def test_experiment_falls_back_to_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _copy_split(tmp_path / "env")
    monkeypatch.setenv(mnist.ENV_VAR, str(env))
    images, labels, description = load_mnist_for_experiment(download=False)
    assert len(images) == FIXTURE_N
    assert description.startswith(f"MNIST test split (300 images) from {env} — the training split was not found")
    assert "downloading is turned off" in description
    assert TRAIN_IMAGES in description and str(env) in description


def test_experiment_falls_back_after_failed_download(
    server: tuple[str, Path], published: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server
    data = tmp_path / "data"
    _copy_split(mnist.cache_dir())
    images, _, description = load_mnist_for_experiment(data, mirrors=[url + "/missing/"], timeout=5)
    assert len(images) == FIXTURE_N
    assert description.startswith(f"MNIST test split (300 images) from {mnist.cache_dir()} —")
    assert "404" in description and str(data / "mnist") in description
    assert not (data / "mnist" / TRAIN_IMAGES).exists()


def test_experiment_downloads_train(server: tuple[str, Path], published: None, tmp_path: Path) -> None:
    url, _ = server
    _, _, description = load_mnist_for_experiment(tmp_path / "d", mirrors=[url + "/good/"], timeout=5)
    assert description == f"MNIST train split (300 images) from {tmp_path / 'd' / 'mnist'}"


def test_experiment_nothing_anywhere(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no MNIST data found") as info:
        load_mnist_for_experiment(tmp_path / "d", download=False)
    assert str(tmp_path / "d" / "mnist") in str(info.value)


def test_the_loader_never_looks_beside_the_package_for_data(tmp_path: Path) -> None:
    """Data lying next to a checkout (``<repo>/../shared/data/mnist``) is not found: only
    ``data_dir``, ``$L2L_JAX_DATA_DIR`` and the user cache directory are searched."""
    checkout = tmp_path / "checkout"
    module_file = checkout / "l2l_jax" / "data" / "mnist.py"
    module_file.parent.mkdir(parents=True)
    shutil.copy(mnist.__file__, module_file)
    for beside in ("shared/data/mnist", "data/mnist", "mnist"):
        _copy_split(tmp_path / beside)
        _copy_split(checkout / beside)
    # The loader's own source, imported from inside that checkout.
    spec = importlib.util.spec_from_file_location("mnist_in_a_checkout", module_file)
    moved = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(moved)
    assert Path(moved.__file__) == module_file
    assert moved.find_mnist_dir("test") is None
    with pytest.raises(DataError, match="no MNIST data found"):
        moved.load_mnist_for_experiment(download=False)
