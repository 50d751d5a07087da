"""Tests of bastion.datasets: bundled digits, files on disk, and cached downloads (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
import torch
import torch.nn.functional as F
from PIL import Image

from bastion.datasets import (
    load_cifar10,
    load_digits,
    load_image_folder,
    load_mnist,
    load_npy,
    load_npz,
)
from bastion.datasets._download import fetch
from bastion.exceptions import BastionError, InputError, InvalidParameterError

# ----------------------------------------------------------------------------- load_digits


@pytest.mark.parametrize("size", [8, 28])
def test_load_digits_shapes_dtypes_and_range(size):
    (x_train, y_train), (x_test, y_test) = load_digits(size)
    assert x_train.shape == (1347, 1, size, size)
    assert x_test.shape == (450, 1, size, size)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert y_train.shape == (1347,) and y_test.shape == (450,)
    for x in (x_train, x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() == pytest.approx(1.0)
    assert set(np.unique(np.concatenate([y_train, y_test]))) == set(range(10))


def test_load_digits_8_is_the_original_pixels_scaled():
    (x_train, y_train), (x_test, y_test) = load_digits(8, random_state=0)
    digits = sklearn.datasets.load_digits()
    x = np.concatenate([x_train, x_test])[:, 0] * 16
    np.testing.assert_array_equal(x, np.round(x))  # multiples of 1/16
    # Same multiset of (image, label) pairs as scikit-learn's data.
    y = np.concatenate([y_train, y_test])
    ours = sorted(zip(map(bytes, x.astype(np.uint8)), y, strict=True))
    theirs = sorted(zip(map(bytes, digits.images.astype(np.uint8)), digits.target, strict=True))
    assert ours == theirs


def test_load_digits_28_is_the_bilinear_upsampling_of_8():
    (x8, y8), (x8_test, _) = load_digits(8, random_state=3)
    (x28, y28), (x28_test, _) = load_digits(28, random_state=3)
    np.testing.assert_array_equal(y8, y28)
    expected = F.interpolate(
        torch.from_numpy(x8), size=(28, 28), mode="bilinear", align_corners=False
    ).clamp(0, 1)
    np.testing.assert_allclose(x28, expected.numpy(), atol=1e-6)
    assert x28_test.shape == (len(x8_test), 1, 28, 28)


def test_load_digits_split_is_stratified():
    (_, y_train), (_, y_test) = load_digits(8, test_size=0.3)
    counts = np.bincount(np.concatenate([y_train, y_test]), minlength=10)
    np.testing.assert_allclose(np.bincount(y_test, minlength=10), 0.3 * counts, atol=1)
    assert len(y_test) == pytest.approx(0.3 * counts.sum(), abs=1)


def test_load_digits_random_state():
    (a, ya), _ = load_digits(8, random_state=1)
    (b, yb), _ = load_digits(8, random_state=1)
    (_, yc), _ = load_digits(8, random_state=2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    (d, _), _ = load_digits(8, random_state=torch.Generator().manual_seed(0))
    assert d.shape == a.shape


def test_load_digits_none_leaves_global_rngs_alone():
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    torch_state = torch.get_rng_state()
    (_, y1), _ = load_digits(8, random_state=None)
    (_, y2), _ = load_digits(8, random_state=None)
    assert not np.array_equal(y1, y2)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"size": 12}, "size"), ({"test_size": 1.5}, "test_size"), ({"random_state": -1}, "random")],
)
def test_load_digits_invalid_parameters(kwargs, name):
    with pytest.raises(InvalidParameterError, match=f"'{name}.*load_digits"):
        load_digits(**kwargs)


def test_load_digits_size_message():
    with pytest.raises(InvalidParameterError) as info:
        load_digits(12)
    assert str(info.value) == (
        "The 'size' parameter of load_digits must be one of {8, 28}. Got 12 instead."
    )


# ----------------------------------------------------------------------------- npz / npy


def test_load_npz_roundtrip(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    y = np.array([0, 1, 1, 0])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    x2, y2 = load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert x2.dtype == np.float32

    np.savez(tmp_path / "custom.npz", images=x, targets=y)
    x3, y3 = load_npz(str(tmp_path / "custom.npz"), x_key="images", y_key="targets")
    np.testing.assert_array_equal(x3, x)
    np.testing.assert_array_equal(y3, y)


def test_load_npz_without_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)))
    x, y = load_npz(tmp_path / "d.npz")
    assert x.shape == (3, 2) and y is None
    np.savez(tmp_path / "e.npz", x=np.zeros((3, 2)), y=np.zeros(3))
    assert load_npz(tmp_path / "e.npz", y_key=None)[1] is None


def test_load_npz_missing_key_lists_available_keys(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 2)), labels=np.zeros(2))
    with pytest.raises(InputError, match=r"no array named 'x'.*\['images', 'labels'\]"):
        load_npz(tmp_path / "d.npz")


def test_load_npz_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(InputError, match="2 labels but x has 3 samples"):
        load_npz(tmp_path / "d.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(InputError, match="load_npy"):
        load_npz(tmp_path / "single.npy")


def test_load_npy_roundtrip_and_errors(tmp_path):
    x = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    y = np.arange(5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    x2, y2 = load_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    x3, y3 = load_npy(tmp_path / "x.npy")
    np.testing.assert_array_equal(x3, x)
    assert y3 is None
    with pytest.raises(InputError, match="does not exist"):
        load_npy(tmp_path / "x.npy", tmp_path / "nope.npy")
    np.save(tmp_path / "y4.npy", np.arange(4))
    with pytest.raises(InputError, match="4 labels but x has 5 samples"):
        load_npy(tmp_path / "x.npy", tmp_path / "y4.npy")


def test_load_npy_refuses_pickled_objects(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="Could not read"):
        load_npy(tmp_path / "obj.npy")


# ----------------------------------------------------------------------------- image folders


def _save_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_load_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {
        ("dog", "a.png"): rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
        ("cat", "b.png"): rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
        ("cat", "a.PNG"): rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
        ("dog", "c.bmp"): rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
    }
    for (cls, name), p in pixels.items():
        _save_image(tmp_path / cls / name, p)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()

    x, y, class_names = load_image_folder(tmp_path)
    assert class_names == ["cat", "dog"]
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape == (4, 3, 4, 5)
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    order = [("cat", "a.PNG"), ("cat", "b.png"), ("dog", "a.png"), ("dog", "c.bmp")]
    expected = np.stack([pixels[k].transpose(2, 0, 1) / 255.0 for k in order])
    np.testing.assert_allclose(x, expected, atol=1e-7)


def test_load_image_folder_grayscale_and_resize(tmp_path):
    _save_image(tmp_path / "a" / "0.png", np.full((6, 6), 51, dtype=np.uint8))
    _save_image(tmp_path / "b" / "0.png", np.full((9, 7), 255, dtype=np.uint8))
    x, y, names = load_image_folder(tmp_path, size=4, grayscale=True)
    assert x.shape == (2, 1, 4, 4)
    np.testing.assert_allclose(x[0], 0.2, atol=1e-6)
    np.testing.assert_allclose(x[1], 1.0)
    assert names == ["a", "b"] and y.tolist() == [0, 1]


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(InputError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(InputError, match="holds no image files"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class").rmdir()
    _save_image(tmp_path / "a" / "0.png", np.zeros((4, 4, 3), dtype=np.uint8))
    _save_image(tmp_path / "b" / "0.png", np.zeros((5, 4, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="differ in size"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=3)[0].shape == (2, 3, 3, 3)
    (tmp_path / "b" / "1.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="Could not read the image"):
        load_image_folder(tmp_path, size=3)
    with pytest.raises(InvalidParameterError, match="'size'"):
        load_image_folder(tmp_path, size=0)


# ----------------------------------------------------------------------------- downloads


def test_fetch_checks_md5_and_keeps_no_corrupt_file(tmp_path):
    source = tmp_path / "file.bin"
    source.write_bytes(b"payload" * 1000)
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(BastionError, match="corrupt: its MD5 is"):
        fetch(source.as_uri(), dest, download=True, md5="0" * 32, verbose=False)
    assert list(dest.parent.iterdir()) == []
    good = hashlib.md5(source.read_bytes()).hexdigest()
    assert fetch(source.as_uri(), dest, download=True, md5=good, verbose=False) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["file.bin"]


# ----------------------------------------------------------------------------- MNIST


def _idx_gz(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 5, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    source = tmp_path / "source"
    source.mkdir()
    for name, array in arrays.items():
        _idx_gz(source / name, array)
    return source, arrays


def test_load_mnist_parses_and_caches(tmp_path, fake_mnist):
    source, arrays = fake_mnist
    cache = tmp_path / "cache"
    (x_train, y_train), (x_test, y_test) = load_mnist(
        cache_dir=cache, base_url=source.as_uri(), verbose=False
    )
    assert x_train.shape == (5, 1, 28, 28) and x_test.shape == (3, 1, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    np.testing.assert_array_equal(x_train[:, 0] * 255, arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(x_test[:, 0] * 255, arrays["t10k-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte.gz"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    assert sorted(os.listdir(cache / "mnist")) == sorted(arrays)

    # The second call reads the cache: the source is gone, and no download is allowed.
    for f in source.iterdir():
        f.unlink()
    (x2, y2), _ = load_mnist(cache_dir=cache, base_url=source.as_uri(), download=False)
    np.testing.assert_array_equal(x2, x_train)
    np.testing.assert_array_equal(y2, y_train)


def test_load_mnist_uses_bastion_cache_env(tmp_path, fake_mnist, monkeypatch):
    source, _ = fake_mnist
    monkeypatch.setenv("BASTION_CACHE", str(tmp_path / "env_cache"))
    load_mnist(base_url=source.as_uri() + "/", verbose=False)
    assert (tmp_path / "env_cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_load_mnist_download_false_says_where_to_put_files(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(BastionError, match="download=False") as info:
        load_mnist(cache_dir=cache, download=False)
    assert str(cache / "mnist" / "train-images-idx3-ubyte.gz") in str(info.value)


def test_load_mnist_failed_download_leaves_no_partial_file(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(BastionError, match="Could not download"):
        load_mnist(cache_dir=cache, base_url=(tmp_path / "nowhere").as_uri(), verbose=False)
    assert list((cache / "mnist").iterdir()) == []


def test_load_mnist_rejects_bad_magic(tmp_path, fake_mnist):
    source, arrays = fake_mnist
    # A labels file (magic 0x801) where images (0x803) are expected.
    _idx_gz(source / "train-images-idx3-ubyte.gz", arrays["train-labels-idx1-ubyte.gz"])
    with pytest.raises(BastionError, match="magic number 0x00000801, expected 0x00000803"):
        load_mnist(cache_dir=tmp_path / "cache", base_url=source.as_uri(), verbose=False)


# ----------------------------------------------------------------------------- CIFAR-10


def _cifar_tarball(path: Path, batches: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.fixture
def fake_cifar(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    content = {
        name: (
            rng.integers(0, 256, (2, 3072), dtype=np.uint8),
            [int(v) for v in rng.integers(0, 10, 2)],
        )
        for name in names
    }
    # Protocol 2 with bytes keys, like the published (Python 2) batches.
    payloads = {
        name: pickle.dumps({b"data": data, b"labels": labels}, protocol=2)
        for name, (data, labels) in content.items()
    }
    payloads["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
    archive = tmp_path / "source" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    _cifar_tarball(archive, payloads)
    return archive, content


def test_load_cifar10_parses_and_caches(tmp_path, fake_cifar):
    archive, content = fake_cifar
    cache = tmp_path / "cache"
    (x_train, y_train), (x_test, y_test) = load_cifar10(
        cache_dir=cache, url=archive.as_uri(), verbose=False
    )
    assert x_train.shape == (10, 3, 32, 32) and x_test.shape == (2, 3, 32, 32)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    train_data = np.concatenate([content[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(x_train * 255, train_data.reshape(10, 3, 32, 32))
    np.testing.assert_array_equal(x_test * 255, content["test_batch"][0].reshape(2, 3, 32, 32))
    np.testing.assert_array_equal(
        y_train, np.concatenate([content[f"data_batch_{i}"][1] for i in range(1, 6)])
    )
    np.testing.assert_array_equal(y_test, content["test_batch"][1])
    assert (cache / "cifar10" / "cifar-10-python.tar.gz").is_file()

    archive.unlink()
    (x2, _), _ = load_cifar10(cache_dir=cache, url=archive.as_uri(), download=False)
    np.testing.assert_array_equal(x2, x_train)


def test_load_cifar10_reads_python3_pickles(tmp_path):
    data = np.arange(3072, dtype=np.int64).reshape(1, 3072) % 256
    payload = pickle.dumps({"data": data.astype(np.uint8), "labels": [7]})
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    archive = tmp_path / "cifar.tar.gz"
    _cifar_tarball(archive, dict.fromkeys(names, payload))
    (x, y), _ = load_cifar10(cache_dir=tmp_path / "c", url=archive.as_uri(), verbose=False)
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [7] * 5
    np.testing.assert_array_equal(x[0].reshape(-1) * 255, data[0])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_load_cifar10_refuses_code_in_pickles(tmp_path):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    payload = pickle.dumps({b"data": _Exploit(), b"labels": [0]}, protocol=2)
    archive = tmp_path / "evil.tar.gz"
    _cifar_tarball(archive, dict.fromkeys(names, payload))
    with pytest.raises(BastionError, match=r"refusing to load the global (posix|os|nt)\.system"):
        load_cifar10(cache_dir=tmp_path / "c", url=archive.as_uri(), verbose=False)


def test_load_cifar10_missing_batch(tmp_path):
    archive = tmp_path / "partial.tar.gz"
    batch = {b"data": np.zeros((1, 3072), dtype=np.uint8), b"labels": [0]}
    _cifar_tarball(archive, {"data_batch_1": pickle.dumps(batch, protocol=2)})
    with pytest.raises(BastionError, match="no batch file 'data_batch_2'"):
        load_cifar10(cache_dir=tmp_path / "c", url=archive.as_uri(), verbose=False)


def test_load_cifar10_truncated_batch(tmp_path):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    archive = tmp_path / "truncated.tar.gz"
    _cifar_tarball(archive, dict.fromkeys(names, b""))
    with pytest.raises(BastionError, match="Could not read the CIFAR-10 batch 'data_batch_1'"):
        load_cifar10(cache_dir=tmp_path / "c", url=archive.as_uri(), verbose=False)


def test_load_cifar10_download_false(tmp_path):
    with pytest.raises(BastionError, match="download=False") as info:
        load_cifar10(cache_dir=tmp_path, download=False)
    assert str(tmp_path / "cifar10" / "cifar-10-python.tar.gz") in str(info.value)
