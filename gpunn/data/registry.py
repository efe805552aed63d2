"""Named data sets: where their files are looked for, their checksums, and downloads.

Search order for a data set's files: ``data_dir`` (``--data-dir``), then
``$GPUNN_DATA/<name>`` (default ``$XDG_CACHE_HOME/gpunn`` or ``~/.cache/gpunn``), then system
folders (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist`` from Debian's
``dataset-fashion-mnist`` package). IDX files may be gzipped or not. Checksums are SHA-256 of
the *decompressed* IDX content, so a re-gzipped copy (Debian's) verifies the same.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field

from .readers import DataFormatError, file_sha256

__all__ = ["DatasetInfo", "DATASETS", "DatasetNotFound", "ChecksumError", "cache_dir",
           "locate_dataset", "download_dataset", "dataset_status", "verify_file", "OWN_KINDS",
           "parse_own", "absolute_dataset"]


class DatasetNotFound(FileNotFoundError):
    """A data set's files are not on this machine (the message lists every way to get them)."""


class ChecksumError(DataFormatError):
    """A file's checksum differs from the registry's (message: file, expected, actual)."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str                           # "idx" | "cifar10" | "synthetic"
    files: dict                         # role -> file name (without .gz for idx)
    sha256: dict = field(default_factory=dict)   # role -> sha256 of the decompressed content
    urls: tuple = ()                    # base URLs (idx) or archive URL (cifar10)
    archive_md5: str | None = None      # cifar10: md5 of the published tarball
    system_dirs: tuple = ()
    apt_package: str | None = None
    class_names: tuple = ()


_IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
              "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}

DATASETS = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "idx", _IDX_FILES,
        sha256={  # computed from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",), apt_package="dataset-fashion-mnist",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Ankle boot")),
    # MNIST and KMNIST: no checksum recorded (none could be verified here, offline); their
    # files are still validated by format (magic, dims, counts, label range).
    "mnist": DatasetInfo(
        "mnist", "idx", _IDX_FILES,
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        system_dirs=("/usr/share/datasets/mnist",),
        class_names=tuple(str(d) for d in range(10))),
    "kmnist": DatasetInfo(
        "kmnist", "idx", _IDX_FILES,
        urls=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    "cifar10": DatasetInfo(
        "cifar10", "cifar10",
        {**{f"data_batch_{i}": f"data_batch_{i}" for i in range(1, 6)}, "test_batch": "test_batch"},
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        archive_md5="c58f30108f718f92721af3b95e74349a",
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                     "ship", "truck")),
    "synthetic": DatasetInfo("synthetic", "synthetic", {},
                             class_names=tuple(f"pattern {k}" for k in range(10))),
}


# Your own data: "npz:FILE" (x_train, y_train, x_test, y_test[, class_names]), "idx:DIR" (the
# four IDX files of an MNIST-format set), "folder:DIR" (DIR/train/<class>/*.png, DIR/test/...).
OWN_KINDS = ("npz", "idx", "folder")


def parse_own(spec: str):
    """(kind, path) for an own-data spec ("npz:...", "idx:...", "folder:..."), else None."""
    kind, sep, path = str(spec).partition(":")
    if sep and kind in OWN_KINDS:
        if not path:
            raise ValueError(f"data set {spec!r}: give a path after {kind}:")
        return kind, path
    return None


def absolute_dataset(spec: str) -> str:
    """The spec with its path made absolute (a run's config.json then works from anywhere);
    registered names are returned unchanged."""
    own = parse_own(spec)
    if own:
        return f"{own[0]}:{os.path.abspath(os.path.expanduser(own[1]))}"
    if str(spec).endswith(".npz"):
        return os.path.abspath(os.path.expanduser(spec))
    return spec


def cache_dir() -> str:
    """``$GPUNN_DATA``, else ``$XDG_CACHE_HOME/gpunn``, else ``~/.cache/gpunn``."""
    if os.environ.get("GPUNN_DATA"):
        return os.environ["GPUNN_DATA"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gpunn")


def get_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}, "
                         "or your own: npz:FILE.npz, idx:DIR, folder:DIR") from None


def _candidate_dirs(info: DatasetInfo, data_dir=None):
    """The folders looked in, in order: only ``data_dir`` (and its <name> subfolder) when one
    is given, so an explicit folder is never silently replaced by another copy; else the
    cache and the system folders."""
    dirs = []
    if data_dir:
        dirs += [data_dir, os.path.join(data_dir, info.name)]
        if info.kind == "cifar10":
            dirs.append(os.path.join(data_dir, "cifar-10-batches-py"))
        return dirs
    cache = os.path.join(cache_dir(), info.name)
    dirs.append(cache)
    if info.kind == "cifar10":
        dirs.append(os.path.join(cache, "cifar-10-batches-py"))
    dirs += list(info.system_dirs)
    return dirs


def _find_file(directory, fname, kind):
    options = [fname + ".gz", fname] if kind == "idx" else [fname]
    for f in options:
        p = os.path.join(directory, f)
        if os.path.isfile(p):
            return p
    return None


def locate_dataset(name: str, data_dir=None) -> dict:
    """Paths of every file of ``name`` (role -> path), from the first folder holding all of
    them; raises DatasetNotFound listing every way to get the data set."""
    info = get_info(name)
    if info.kind == "synthetic":
        return {}
    if data_dir and not os.path.isdir(data_dir):
        raise DatasetNotFound(f"--data-dir {data_dir} does not exist (with --data-dir it is the "
                              f"only place {info.name} is looked for)")
    for d in _candidate_dirs(info, data_dir):
        found = {role: _find_file(d, f, info.kind) for role, f in info.files.items()}
        if all(found.values()):
            return found
    raise DatasetNotFound(how_to_get(info, data_dir))


def how_to_get(info: DatasetInfo, data_dir=None) -> str:
    looked = ", ".join(_candidate_dirs(info, data_dir))
    files = ", ".join(f + (".gz" if info.kind == "idx" else "") for f in info.files.values())
    ways = []
    if info.apt_package:
        ways.append(f"install the Debian package: sudo apt-get install {info.apt_package}")
    if info.urls:
        ways.append(f"download it (needs network access): gpunn datasets --download {info.name}")
    ways.append(f"point at a folder holding {files}: --data-dir DIR")
    ways.append(f"put those files in $GPUNN_DATA/{info.name} (now {os.path.join(cache_dir(), info.name)})")
    only = (f"; --data-dir makes {data_dir} the only place looked, leave it out for the usual "
            f"places" if data_dir else "")
    return (f"data set {info.name!r} not found (looked in: {looked}{only}). Ways to get it:\n  - " +
            "\n  - ".join(ways))


def verify_file(info: DatasetInfo, role: str, path: str) -> None:
    """Check a file against the registry's SHA-256 (if one is recorded)."""
    expected = info.sha256.get(role)
    if not expected:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumError(f"{path}: checksum mismatch for {info.name} {role}: expected sha256 "
                            f"{expected}, got {actual} (corrupt or a different file; delete it "
                            f"and fetch it again)")


def dataset_status(data_dir=None) -> list:
    """[(name, "where found" or "missing: how to get it")] for every registered data set."""
    out = []
    for name, info in DATASETS.items():
        if info.kind == "synthetic":
            out.append((name, "generated from a seed (always available)"))
            continue
        try:
            paths = locate_dataset(name, data_dir)
            out.append((name, os.path.dirname(next(iter(paths.values())))))
        except DatasetNotFound:
            hint = f"apt-get install {info.apt_package}" if info.apt_package else \
                f"gpunn datasets --download {name}"
            out.append((name, f"missing ({hint}, or --data-dir)"))
    return out


def _fetch(url, dest, timeout=60, opener=None):
    """Download ``url`` to ``dest`` atomically (temporary file beside it, then rename)."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=os.path.dirname(dest))
    try:
        with os.fdopen(fd, "wb") as f, (opener or urllib.request.urlopen)(url, timeout=timeout) as r:
            shutil.copyfileobj(r, f)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def download_dataset(name: str, data_dir=None, opener=None) -> str:
    """Download ``name`` into the cache (or ``data_dir``), verify it, return the folder."""
    info = get_info(name)
    if info.kind == "synthetic":
        return "(generated)"
    dest = os.path.join(data_dir or cache_dir(), info.name)
    if info.kind == "idx":
        errors = []
        for base in info.urls:
            try:
                for role, fname in info.files.items():
                    path = os.path.join(dest, fname + ".gz")
                    if not os.path.isfile(path):
                        _fetch(base + fname + ".gz", path, opener=opener)
                    try:
                        verify_file(info, role, path)
                    except ChecksumError:
                        os.unlink(path)     # never keep a bad file where it would be found
                        raise
                return dest
            except (OSError, ValueError) as e:
                errors.append(f"{base}: {e}")
        raise DatasetNotFound(f"could not download {name}: " + "; ".join(errors) + "\n" +
                              how_to_get(info, data_dir))
    # cifar10: one tarball, md5-checked, extracted beside it
    tgz = os.path.join(dest, "cifar-10-python.tar.gz")
    try:
        if not os.path.isfile(tgz):
            _fetch(info.urls[0], tgz, opener=opener)
        md5 = hashlib.md5(open(tgz, "rb").read()).hexdigest()
        if md5 != info.archive_md5:
            os.unlink(tgz)
            raise ChecksumError(f"{tgz}: checksum mismatch: expected md5 {info.archive_md5}, got {md5}")
        with tarfile.open(tgz) as t:
            t.extractall(dest, filter="data")
    except OSError as e:
        raise DatasetNotFound(f"could not download {name}: {e}\n" + how_to_get(info, data_dir)) from None
    return dest
