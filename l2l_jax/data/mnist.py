"""MNIST: finding, downloading, verifying, caching and loading the four IDX files.

Where the files are looked for
------------------------------
`load_mnist` uses ONE data directory, the first of these that is configured:

1. the ``data_dir`` argument;
2. the environment variable ``L2L_JAX_DATA_DIR``;
3. the user cache directory, ``$XDG_CACHE_HOME/l2l_jax/mnist`` or
   ``~/.cache/l2l_jax/mnist``.

For 1 and 2 the files may lie in ``<dir>/mnist/`` or directly in ``<dir>``; both are
accepted. An explicit choice is never silently replaced by another location, so a
typo in ``data_dir`` gives an error (or a download there), not some other copy.

`load_mnist_for_experiment` is more forgiving: it searches all of those places
(``data_dir``, then ``$L2L_JAX_DATA_DIR``, then the user cache directory) and falls
back from the train to the test split. No other place is ever searched: in
particular nothing relative to where the package is installed or checked out.

Downloads and checksums
-----------------------
Missing files are downloaded (when ``download=True``) from each of `MIRRORS`
in turn into a temporary file in the target directory, verified, and only then
renamed into place. `SHA256` holds the published SHA-256 of the
**gzip-compressed** ``.gz`` files, byte for byte as the mirrors serve them; a
download is accepted when its sha256 matches. Because a re-compressed copy of the
same data (for instance a local re-gzipped mirror) has different ``.gz`` bytes,
`SHA256_DECOMPRESSED` additionally holds the SHA-256 of the **decompressed**
IDX bytes where it is known (the test split only); a download whose ``.gz`` hash
does not match is still accepted if its decompressed bytes match that table. A
file with no entry in either table is never accepted. Files already on disk are not
hashed (that would cost time on every load); they are structurally validated on
every load instead (IDX header, byte count, shapes, label range).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from l2l_jax.data.idx import read_idx
from l2l_jax.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]

#: Base URLs tried in order; a file's URL is ``<mirror><file name>``.
MIRRORS: tuple[str, ...] = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)

#: Standard file names (images, labels) of each split.
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: SHA-256 of the COMPRESSED ``.gz`` files as published and served by the mirrors
#: (the values torchvision, TensorFlow's mirror and many others verify; sizes
#: 9,912,422 / 28,881 / 1,648,877 / 4,542 bytes).
SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

#: SHA-256 of the DECOMPRESSED IDX bytes, keyed by the ``.gz`` name. Only the test
#: split's values are known here; a second way to accept a re-compressed copy.
SHA256_DECOMPRESSED: dict[str, str] = {
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Environment variable naming a data directory (files in ``<dir>/mnist/`` or ``<dir>``).
ENV_VAR = "L2L_JAX_DATA_DIR"

#: Seconds a single HTTP connect or read may block before that mirror is given up.
DEFAULT_TIMEOUT = 30.0

_IMAGE_SHAPE = (28, 28)
_NUM_CLASSES = 10
_CHUNK = 1 << 16


class _MirrorFailure(Exception):
    """One mirror failed for one file; the message is the reason."""


class _DownloadError(DataError):
    """Every mirror failed; ``failures`` keeps (url, reason) for short summaries."""

    def __init__(self, message: str, failures: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.failures = failures


# --------------------------------------------------------------------------- places


def cache_dir() -> Path:
    """Returns the per-user cache directory for MNIST.

    Returns:
        ``$XDG_CACHE_HOME/l2l_jax/mnist`` if ``XDG_CACHE_HOME`` is set and not
        empty, else ``~/.cache/l2l_jax/mnist``. It may not exist yet.
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "l2l_jax" / "mnist"


def _env_dir() -> Path | None:
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser() if value else None


def _subdirs(base: Path) -> list[Path]:
    """Candidate folders of a user-named data directory: ``<base>/mnist`` and ``<base>``."""
    return [base / "mnist", base]


def _download_target(base: Path) -> Path:
    # A directory that is itself called "mnist" is taken as the MNIST folder;
    # any other data directory gets an ``mnist/`` subfolder.
    return base if base.name.lower() == "mnist" else base / "mnist"


def _primary_location(data_dir: PathLike | None) -> tuple[list[Path], Path, str]:
    """The one configured location: (candidate folders, download target, description)."""
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        return _subdirs(base), _download_target(base), "the data_dir argument"
    env = _env_dir()
    if env is not None:
        return _subdirs(env), _download_target(env), f"${ENV_VAR}"
    cache = cache_dir()
    return [cache], cache, "the user cache directory"


def _search_dirs(data_dir: PathLike | None) -> list[Path]:
    """Every folder the experiment fallback looks in, in order, without duplicates."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += _subdirs(Path(data_dir).expanduser())
    env = _env_dir()
    if env is not None:
        dirs += _subdirs(env)
    dirs.append(cache_dir())
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _split_files(split: str) -> tuple[str, str]:
    try:
        return SPLIT_FILES[split]
    except KeyError:
        raise DataError(f"unknown MNIST split {split!r} (expected 'train' or 'test')") from None


def _has_all(directory: Path, names: Sequence[str]) -> bool:
    return all((directory / name).is_file() for name in names)


def _resolve(candidates: list[Path], default: Path, names: Sequence[str]) -> tuple[Path, list[str]]:
    """Picks the folder for a split and lists which of its files are missing there.

    A folder holding both files wins; else one holding some of them (so the rest is
    completed next to them); else the default download target.
    """
    for d in candidates:
        if _has_all(d, names):
            return d, []
    for d in candidates:
        present = [n for n in names if (d / n).is_file()]
        if present:
            return d, [n for n in names if n not in present]
    return default, list(names)


def find_mnist_dir(split: str = "train", data_dir: PathLike | None = None) -> Path | None:
    """Finds a folder holding both files of a split, searching every known place.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: A data directory to look in first (``<dir>/mnist`` and ``<dir>``).

    Returns:
        The first folder holding both files, searching ``data_dir``, then
        ``$L2L_JAX_DATA_DIR`` (``/mnist`` and itself), then the user cache
        directory; ``None`` if none does. Nothing is downloaded or read.

    Raises:
        DataError: If ``split`` is not a known split.
    """
    names = _split_files(split)
    for d in _search_dirs(data_dir):
        if _has_all(d, names):
            return d
    return None


def _manual_hint(names: Sequence[str], target: Path) -> str:
    files = " and ".join(names)
    return (
        f"To install the files by hand, download {files} (for example from {MIRRORS[0]}) "
        f"and put them, still gzip-compressed, in the directory {target} "
        f"(or pass data_dir=, or set ${ENV_VAR}, to a directory holding them)."
    )


# --------------------------------------------------------------------------- download


def _mirror_url(mirror: str, name: str) -> str:
    return mirror if mirror.endswith(name) else mirror.rstrip("/") + "/" + name


def _verify(name: str, path: Path, gz_digest: str) -> None:
    """Raises _MirrorFailure unless ``path`` matches a known checksum (module docs)."""
    expected = SHA256.get(name)
    if expected is not None and gz_digest == expected:
        return
    expected_raw = SHA256_DECOMPRESSED.get(name)
    if expected is None and expected_raw is None:
        raise _MirrorFailure(f"no SHA-256 is known for {name}, so it cannot be verified")
    if expected_raw is not None:
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, zlib.error):
            raw = None  # not valid gzip: certainly no match
        if raw is not None and hashlib.sha256(raw).hexdigest() == expected_raw:
            return
    wanted = expected if expected is not None else f"decompressed {expected_raw}"
    raise _MirrorFailure(f"checksum mismatch (sha256 {gz_digest}, expected {wanted})")


def _temp_path_for(path: Path) -> Path:
    """An unused hidden name next to ``path``, so that ``os.replace`` onto it is atomic.

    (Unlike ``tempfile.mkstemp``, a file opened with mode ``"xb"`` gets the usual
    umask-based permissions rather than 0600.)
    """
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _fetch(url: str, name: str, dest: Path, timeout: float) -> None:
    """Downloads ``url`` to ``dest`` through a verified temp file, or raises _MirrorFailure."""
    tmp: Path | None = _temp_path_for(dest)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "l2l_jax"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            digest = hashlib.sha256()
            received = 0
            with open(tmp, "xb") as out:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
        # A server that closes early can look like a clean end of stream.
        if length is not None and length.isdigit() and received != int(length):
            raise _MirrorFailure(f"truncated response ({received} of {length} bytes)")
        _verify(name, tmp, digest.hexdigest())
        os.replace(tmp, dest)  # atomic: dest is either absent or complete and verified
        tmp = None
    except _MirrorFailure:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _MirrorFailure(f"HTTP error {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _MirrorFailure(f"cannot connect ({exc.reason})") from exc
    except http.client.IncompleteRead as exc:
        raise _MirrorFailure(f"truncated response ({len(exc.partial)} bytes, then the connection closed)") from exc
    except TimeoutError as exc:
        raise _MirrorFailure(f"timed out after {timeout:g} s") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # Connection resets, bad status lines, malformed URLs, disk errors, ...
        raise _MirrorFailure(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _download(
    name: str,
    directory: Path,
    mirrors: Sequence[str],
    timeout: float,
    hint: str,
) -> Path:
    """Downloads one file into ``directory``, trying each mirror until one verifies."""
    dest = directory / name
    if not mirrors:
        raise _DownloadError(f"MNIST file {name} is missing and no download mirrors were given. {hint}", [])
    # Remember which folders we create, so a failed download leaves no empty ones.
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"cannot create the directory ({exc.strerror or exc})"
        raise _DownloadError(
            f"could not download MNIST file {name}: {reason}: {directory}. {hint}", [(str(directory), reason)]
        ) from exc
    failures: list[tuple[str, str]] = []
    for mirror in mirrors:
        url = _mirror_url(mirror, name)
        try:
            _fetch(url, name, dest, timeout)
            return dest
        except _MirrorFailure as exc:
            failures.append((url, str(exc)))
    for d in created:  # deepest first; rmdir only removes empty folders
        try:
            d.rmdir()
        except OSError:
            break
    tried = "\n".join(f"  - {url}: {reason}" for url, reason in failures)
    raise _DownloadError(
        f"could not download MNIST file {name} into {directory}; every mirror failed:\n{tried}\n{hint}",
        failures,
    )


# --------------------------------------------------------------------------- loading


def _read_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads and validates the two files of a split."""
    image_name, label_name = _split_files(split)
    image_path, label_path = directory / image_name, directory / label_name
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != _IMAGE_SHAPE:
        raise DataError(
            f"{image_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{label_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{image_path} holds {images.shape[0]} images but {label_path} holds {labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise DataError(f"{image_path}: holds no images")
    top = int(labels.max())
    if top >= _NUM_CLASSES:
        raise DataError(f"{label_path}: label {top} is out of the range 0..9")
    return images, labels


def _load(
    split: str,
    data_dir: PathLike | None,
    download: bool,
    mirrors: Sequence[str] | None,
    timeout: float,
) -> tuple[np.ndarray, np.ndarray, Path]:
    names = _split_files(split)
    candidates, target, where = _primary_location(data_dir)
    directory, missing = _resolve(candidates, target, names)
    hint = _manual_hint(names, directory)
    if missing:
        if not download:
            raise DataError(
                f"MNIST {split} split not found: {', '.join(missing)} missing in {directory} "
                f"(chosen from {where}) and download=False. {hint}"
            )
        for name in missing:
            _download(name, directory, MIRRORS if mirrors is None else mirrors, timeout, hint)
    images, labels = _read_split(directory, split)
    return images, labels, directory


def load_mnist(
    split: str = "train",
    data_dir: PathLike | None = None,
    download: bool = True,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads one MNIST split, downloading missing files if allowed.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        data_dir: Data directory (files in ``<dir>/mnist/`` or ``<dir>``). Default:
            ``$L2L_JAX_DATA_DIR``, else the user cache directory (see module docs).
        download: Whether to download missing files from the mirrors.
        mirrors: Base URLs to try in order instead of `MIRRORS`.
        timeout: Seconds each HTTP connect/read may block.

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and uint8 ``(N,)`` in 0..9.

    Raises:
        DataError: If files are missing and ``download`` is False, every mirror
            fails (the message lists each mirror's reason and where to put the
            files by hand), or a file is corrupt or has the wrong shapes or labels.
    """
    images, labels, _ = _load(split, data_dir, download, mirrors, timeout)
    return images, labels


def as_float_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Converts uint8 MNIST arrays to model inputs.

    Args:
        images: uint8 ``(N, 28, 28)`` images.
        labels: integer ``(N,)`` labels.

    Returns:
        ``(x, y)``: float32 ``(N, 784)`` in [0, 1] and int32 ``(N,)``.
    """
    x = images.reshape(images.shape[0], -1).astype(np.float32)
    x /= np.float32(255.0)  # in place, stays float32
    return x, labels.astype(np.int32)


def mnist_arrays(
    split: str = "train",
    data_dir: PathLike | None = None,
    download: bool = True,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads one MNIST split as flat float32 images and int32 labels.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: As for `load_mnist`.
        download: As for `load_mnist`.
        mirrors: As for `load_mnist`.
        timeout: As for `load_mnist`.

    Returns:
        ``(x, y)``: float32 ``(N, 784)`` scaled to [0, 1] and int32 ``(N,)``.

    Raises:
        DataError: As for `load_mnist`.
    """
    images, labels = load_mnist(split, data_dir, download, mirrors=mirrors, timeout=timeout)
    return as_float_arrays(images, labels)


def _describe(split: str, n: int, directory: Path) -> str:
    return f"MNIST {split} split ({n:,} images) from {directory}"


def load_mnist_for_experiment(
    data_dir: PathLike | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Loads the training split if it can be had, else falls back to the test split.

    Offline machines often hold only the 10,000-image test split; experiments can
    still run on it, and the description says so, so reports stay honest.

    Order: the train split in any searched folder (see `find_mnist_dir`);
    else, if ``download``, a train download into the configured location (as
    `load_mnist`); else the test split in any searched folder; else, if
    ``download``, a test download.

    Args:
        data_dir: A data directory to look in first.
        download: Whether to try downloading (a failed download is not an error
            as long as the test split is found).
        mirrors: Base URLs to try instead of `MIRRORS`.
        timeout: Seconds each HTTP connect/read may block.

    Returns:
        ``(images, labels, description)``: uint8 ``(N, 28, 28)``, uint8 ``(N,)``,
        and e.g. ``"MNIST train split (60,000 images) from DIR"`` or
        ``"MNIST test split (10,000 images) from DIR — the training split was not
        found; ..."``.

    Raises:
        DataError: If neither split can be found or downloaded, or a found file is
            corrupt.
    """
    found = find_mnist_dir("train", data_dir)
    if found is not None:
        images, labels = _read_split(found, "train")
        return images, labels, _describe("train", len(labels), found)

    candidates, default_target, _ = _primary_location(data_dir)
    train_target, _ = _resolve(candidates, default_target, SPLIT_FILES["train"])
    if download:
        try:
            images, labels, directory = _load("train", data_dir, True, mirrors, timeout)
            return images, labels, _describe("train", len(labels), directory)
        except _DownloadError as exc:  # other DataErrors (corrupt files) propagate
            reasons = "; ".join(f"{urllib.parse.urlsplit(u).netloc or u}: {r}" for u, r in exc.failures)
            why = f"downloading it failed ({reasons or 'no mirrors were given'})"
    else:
        why = "downloading is turned off"

    found = find_mnist_dir("test", data_dir)
    if found is not None:
        images, labels = _read_split(found, "test")
    else:
        try:
            images, labels, found = _load("test", data_dir, download, mirrors, timeout)
        except DataError as exc:
            raise DataError(
                f"no MNIST data found: the training split was not found ({why}), and neither "
                f"was the test split: {exc}"
            ) from exc
    train_files = " and ".join(SPLIT_FILES["train"])
    description = (
        f"{_describe('test', len(labels), found)} — the training split was not found; {why}. "
        f"Put {train_files} in {train_target} to use the 60,000-image training split."
    )
    return images, labels, description
