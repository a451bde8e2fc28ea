"""The data layer: CIFAR-10 and the MNIST test split, online or offline.

Every notebook and test gets its data from here.

* The data folder is ``$DATA_DIR`` (default: ``data/`` in the project root, git-ignored).
* CIFAR-10 (:func:`get_cifar10`): the official ``cifar-10-batches-py`` when present; otherwise
  torchvision's md5-checked download when the network is there; otherwise the real offline sample
  ``cifar-10-sample-py`` through the same torchvision code path (:class:`CIFAR10Sample`).
* MNIST test split (:func:`get_mnist_test`): torchvision's ``MNIST`` when complete; otherwise the
  two official test files ``MNIST/raw/t10k-*`` read with torchvision's own idx readers (the
  training images are not needed).
* Missing or corrupted data raises :class:`DataError` with a message that says what to do.
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from torchvision.datasets import CIFAR10, MNIST
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import calculate_md5

from . import ROOT

OFFICIAL_NAME = "CIFAR-10"
SAMPLE_NAME = "CIFAR-10 offline sample"


class DataError(RuntimeError):
    """Data missing, corrupted or not downloadable; the message says what to do."""


def data_dir() -> Path:
    """The data folder: ``$DATA_DIR`` (relative to the current folder) or ``<project>/data``."""
    value = os.environ.get("DATA_DIR", "").strip()
    return Path(value).expanduser() if value else ROOT / "data"


class CIFAR10Sample(CIFAR10):
    """The offline sample of CIFAR-10 (first images of each official batch, official format).

    Same loading code as torchvision's ``CIFAR10`` (pickles, md5 check, transforms); only the
    folder, file names and md5 sums differ. It cannot be downloaded.
    """

    base_folder = "cifar-10-sample-py"
    url = None
    filename = None
    tgz_md5 = None
    train_list = [
        ["data_batch_1", "0cdc50daee16914f0b3e5066a38f1ac3"],
        ["data_batch_2", "b0f870ec6b9dcbcdb1c0c94c8139e019"],
        ["data_batch_3", "2c4f429e1ecdf7f37faa3e92a10347e3"],
        ["data_batch_4", "cb3668b33f879a9061f9fde18e88a522"],
        ["data_batch_5", "a5c631f3a4b824d41448a45cbb2ecc1e"],
    ]
    test_list = [["test_batch", "57636657212437fce6662dc7992789c3"]]

    def download(self) -> None:  # pragma: no cover - guarded by get_cifar10
        raise DataError("the CIFAR-10 offline sample cannot be downloaded")


def _files(cls) -> list[tuple[str, str]]:
    return [tuple(x) for x in cls.train_list + cls.test_list] + [(cls.meta["filename"], cls.meta["md5"])]


def _folder_state(root: Path, cls) -> str:
    """'absent' (no file of the dataset), 'ok' (every file with its md5), or raise DataError."""
    folder = root / cls.base_folder
    present = [(name, md5) for name, md5 in _files(cls) if (folder / name).is_file()]
    if not present:
        return "absent"
    missing = [name for name, _ in _files(cls) if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder} is incomplete: missing {', '.join(missing)}.\n"
            f"Restore the folder (or delete it so that it can be downloaded again)."
        )
    for name, md5 in present:
        got = calculate_md5(str(folder / name))
        if got != md5:
            raise DataError(
                f"{folder / name} is corrupted: md5 {got}, expected {md5}.\n"
                f"Replace the file with a good copy (or delete {folder} so that it can be downloaded again)."
            )
    return "ok"


def online(url: str | None = CIFAR10.url, timeout: float = 3.0) -> bool:
    """True when the dataset's host answers (a quick TCP connect); False offline.

    ``INF265_OFFLINE=1`` forces False (no download is attempted).
    """
    if os.environ.get("INF265_OFFLINE", "") not in ("", "0") or not url:
        return False
    return _reachable(url, timeout)


@functools.lru_cache(maxsize=None)
def _reachable(url: str, timeout: float) -> bool:
    """Asked once per process and host: a notebook loads both splits without waiting twice."""
    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _no_cifar_error(root: Path, reason: str = "") -> DataError:
    return DataError(
        f"No CIFAR-10 data found in {root.resolve()}"
        + (f" ({reason})" if reason else "")
        + ".\nTwo ways out:\n"
        "  1. go online: the official CIFAR-10 (170 MB) is then downloaded into that folder, or\n"
        f"  2. point DATA_DIR at a folder holding {CIFAR10.base_folder}/ (official) or "
        f"{CIFAR10Sample.base_folder}/ (offline sample),\n"
        "     e.g.  DATA_DIR=../shared/data make run"
    )


def cifar10_class(root: Path | None = None, download: bool | None = None):
    """Which CIFAR-10 class to use for ``root``: ``CIFAR10`` or ``CIFAR10Sample``.

    Downloads the official dataset when it is absent and the network is there (``download=None``
    means: when online). Raises :class:`DataError` when nothing usable is found.
    """
    root = Path(root) if root is not None else data_dir()
    if _folder_state(root, CIFAR10) == "ok":
        return CIFAR10
    reason = ""
    if download is None:
        download = online()
    if download:
        try:
            root.mkdir(parents=True, exist_ok=True)
            CIFAR10(str(root), train=True, download=True)
            return CIFAR10
        except Exception as exc:  # offline after all, read-only folder, bad archive ...
            reason = f"download failed: {exc}"
            print(f"CIFAR-10 {reason}; looking for the offline sample", file=sys.stderr)
    if _folder_state(root, CIFAR10Sample) == "ok":
        return CIFAR10Sample
    raise _no_cifar_error(root, reason)


def _load(cls, root: Path, train: bool, **kwargs):
    try:
        return cls(str(root), train=train, **kwargs)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as exc:
        raise DataError(f"{root / cls.base_folder} could not be read ({type(exc).__name__}: {exc})") from None


def get_cifar10(train: bool = True, transform=None, root: Path | str | None = None,
                download: bool | None = None, verbose: bool = True):
    """CIFAR-10 (official or offline sample) as a torchvision dataset.

    The returned dataset has the usual ``data`` (N, 32, 32, 3 uint8), ``targets``, ``classes``,
    plus ``source``: ``"CIFAR-10"`` or ``"CIFAR-10 offline sample"``.
    """
    root = Path(root) if root is not None else data_dir()
    cls = cifar10_class(root, download)
    ds = _load(cls, root, train, transform=transform)
    ds.source = SAMPLE_NAME if cls is CIFAR10Sample else OFFICIAL_NAME
    if verbose:
        print(f"Dataset: {ds.source}, {'training' if train else 'test'} split: {len(ds)} images")
    return ds


def describe_cifar10(root: Path | str | None = None) -> str:
    """One line naming the dataset that will be used and its counts (raises DataError if none)."""
    root = Path(root) if root is not None else data_dir()
    train = get_cifar10(True, root=root, verbose=False)
    test = get_cifar10(False, root=root, verbose=False)
    return f"{train.source}: {len(train)} training images, {len(test)} test images"


class MNISTTestSplit(MNIST):
    """The official MNIST test split (10000 images) without the training files.

    torchvision's ``MNIST`` wants all four official files before it loads either split; this
    subclass needs only ``MNIST/raw/t10k-images-idx3-ubyte[.gz]`` and
    ``t10k-labels-idx1-ubyte[.gz]``, checks the ``.gz`` md5 sums, and reads them with
    torchvision's own idx readers.
    """

    resources = [r for r in MNIST.resources if r[0].startswith("t10k")]

    def __init__(self, root, transform=None, target_transform=None, download: bool = False):
        super().__init__(root, train=False, transform=transform,
                         target_transform=target_transform, download=download)

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, "MNIST", "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, "MNIST", "processed")

    def _source(self, gz_name: str, md5: str) -> Path | None:
        raw = Path(self.raw_folder)
        plain = raw / gz_name[:-3]
        if plain.is_file():
            return plain
        packed = raw / gz_name
        if packed.is_file():
            got = calculate_md5(str(packed))
            if got != md5:
                raise DataError(f"{packed} is corrupted: md5 {got}, expected {md5}. Replace it with the official file.")
            return packed
        return None

    def _check_exists(self) -> bool:
        return all(self._source(name, md5) is not None for name, md5 in self.resources)

    def _load_data(self):
        out = []
        for (name, md5), reader in zip(self.resources, (read_image_file, read_label_file)):
            path = self._source(name, md5)
            try:
                if path.suffix == ".gz":
                    with tempfile.TemporaryDirectory() as tmp:
                        plain = Path(tmp) / path.stem
                        plain.write_bytes(gzip.decompress(path.read_bytes()))
                        out.append(reader(str(plain)))
                else:
                    out.append(reader(str(path)))
            except (OSError, EOFError, AssertionError, RuntimeError) as exc:
                raise DataError(f"{path} could not be read as an MNIST idx file ({type(exc).__name__}: {exc})") from None
        return tuple(out)


def get_mnist_test(transform=None, root: Path | str | None = None, download: bool | None = None):
    """The MNIST test split (10000 images, labels 0-9) as a torchvision dataset."""
    root = Path(root) if root is not None else data_dir()
    try:
        full = MNIST(str(root), train=False, transform=transform)  # complete official folder
        return full
    except RuntimeError:
        pass
    ds = MNISTTestSplit.__new__(MNISTTestSplit)
    ds.root, ds.transform, ds.target_transform = str(root), None, None
    if not MNISTTestSplit._check_exists(ds):
        if download is None:
            download = online(MNIST.mirrors[0])
        if not download:
            raise DataError(
                f"No MNIST test split found in {Path(ds.raw_folder).resolve()}.\n"
                "Go online (the two official test files are downloaded), or point DATA_DIR at a folder\n"
                "holding MNIST/raw/t10k-images-idx3-ubyte.gz and MNIST/raw/t10k-labels-idx1-ubyte.gz."
            )
    return MNISTTestSplit(str(root), transform=transform, download=bool(download))


def main(argv=None) -> int:
    """``python -m inf265.data``: say which data will be used, or fail with the clear error."""
    try:
        print(describe_cifar10())
        print(f"MNIST test split: {len(get_mnist_test())} images")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
