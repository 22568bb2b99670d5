import pickle

import numpy as np
import pytest
import torch

from prunelab.data import DATASETS, load_dataset
from prunelab.data.cifar import safe_unpickle
from prunelab.data.idx import read_idx
from prunelab.errors import PrunelabError

from .conftest import make_idx_dataset, write_idx


def test_idx_roundtrip_plain_and_gz(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x", a, gz=False)
    write_idx(tmp_path / "y", a, gz=True)
    assert np.array_equal(read_idx(tmp_path / "x"), a)
    assert np.array_equal(read_idx(tmp_path / "y.gz"), a)


def test_idx_truncated_and_bad_header(tmp_path):
    a = np.zeros((4, 5, 5), dtype=np.uint8)
    write_idx(tmp_path / "x", a, gz=False)
    p = tmp_path / "x"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(PrunelabError, match="truncated"):
        read_idx(p)
    p.write_bytes(b"garbage!")
    with pytest.raises(PrunelabError, match="not an unsigned-byte IDX"):
        read_idx(p)


def test_idx_folder_split_is_deterministic_and_padded(idx_dir):
    a = load_dataset("mnist-idx", str(idx_dir), val_size=40)
    b = load_dataset("mnist-idx", str(idx_dir), val_size=40)
    assert a.train_x.shape[1:] == (1, 32, 32)
    assert len(a.train_x) + len(a.val_x) == 240 and len(a.val_x) == 40
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    # padding is zeros around the original 28x28
    assert int(a.train_x[:, :, :2].max()) == 0 and int(a.train_x[:, :, -2:].max()) == 0
    # train and val are disjoint (the toy images are unique thanks to noise)
    tr = {bytes(x.numpy()) for x in a.train_x}
    assert not any(bytes(x.numpy()) in tr for x in a.val_x)


def test_batches_augment_shapes_and_reproducible(tiny_data):
    b1 = list(tiny_data.batches("train", 64, shuffle=True, augment=True, seed=3))
    b2 = list(tiny_data.batches("train", 64, shuffle=True, augment=True, seed=3))
    assert sum(len(y) for _, y in b1) == len(tiny_data.train_y)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(b1, b2))
    x, _ = b1[0]
    assert x.shape[1:] == (1, 32, 32) and torch.isfinite(x).all()
    plain = next(iter(tiny_data.batches("train", 64)))[0]
    assert not torch.equal(plain, x)  # augmentation did something


def test_missing_fmnist_names_package_and_flag(tmp_path):
    with pytest.raises(PrunelabError, match="dataset-fashion-mnist.*--data-dir"):
        load_dataset("fmnist", str(tmp_path / "nowhere"))


def test_incomplete_idx_folder(tmp_path):
    root = make_idx_dataset(tmp_path / "d")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PrunelabError, match="t10k-labels-idx1-ubyte not found"):
        load_dataset("mnist-idx", str(root))


def _cifar_batch(n, classes, key):
    rng = np.random.default_rng(0)
    return {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
            key: rng.integers(0, classes, n).tolist(), "batch_label": "x"}


def test_cifar10_python_layout(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(20, 10, "labels")))
    (root / "test_batch").write_bytes(pickle.dumps(_cifar_batch(10, 10, "labels")))
    d = load_dataset("cifar10", str(tmp_path), val_size=10)
    assert d.train_x.shape == (90, 3, 32, 32) and d.test_x.shape == (10, 3, 32, 32)
    assert d.num_classes == 10


def test_cifar_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(PrunelabError, match="not a CIFAR python batch"):
        safe_unpickle(p)
    assert not (tmp_path / "pwned").exists()


def test_imagefolder(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow (prunelab[images]) not installed")
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (40 + i, 36), (i * 30, 10, 200)).save(d / f"{i}.png")
    import os
    os.environ["PRUNELAB_IMAGE_SIZE"] = "32"
    try:
        d = load_dataset("imagefolder", str(tmp_path), val_size=2)
    finally:
        del os.environ["PRUNELAB_IMAGE_SIZE"]
    assert d.num_classes == 2 and d.train_x.shape[1:] == (3, 32, 32)
    assert len(d.train_x) + len(d.val_x) == 12 and len(d.test_x) == 12


def test_registry_lists_all_loaders():
    assert set(DATASETS.names()) >= {"fmnist", "mnist-idx", "cifar10", "cifar100", "imagefolder"}
