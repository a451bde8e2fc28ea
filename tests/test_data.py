"""The data layer: which CIFAR-10 is used, counts, clear errors, MNIST test split."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inf265 import ROOT
from inf265.data import (CIFAR10Sample, DataError, get_cifar10, get_mnist_test, online)

CAT, CAR = 3, 1


def _have(root: Path, folder: str) -> bool:
    return (root / folder).is_dir()


def _copy_sample(src: Path, dst: Path) -> Path:
    shutil.copytree(src / CIFAR10Sample.base_folder, dst / CIFAR10Sample.base_folder)
    return dst


def test_sample_found_and_counted(shared_data, offline, capsys):
    if _have(shared_data, "cifar-10-batches-py"):
        pytest.skip("the official CIFAR-10 is present: the sample is not used")
    train = get_cifar10(train=True, root=shared_data)
    test = get_cifar10(train=False, root=shared_data)
    out = capsys.readouterr().out
    assert "CIFAR-10 offline sample" in out and "5170" in out and "1017" in out
    assert train.source == test.source == "CIFAR-10 offline sample"
    assert (len(train), len(test)) == (5170, 1017)
    assert train.data.shape == (5170, 32, 32, 3) and train.data.dtype.name == "uint8"
    t_train, t_test = torch.tensor(train.targets), torch.tensor(test.targets)
    assert int(((t_train == CAT) | (t_train == CAR)).sum()) == 1039
    assert int(((t_test == CAT) | (t_test == CAR)).sum()) == 197
    assert set(t_train.tolist()) == set(range(10))
    assert train.classes[CAT] == "cat" and train.classes[CAR] == "automobile"


def test_sample_goes_through_torchvision_transforms(shared_data, offline):
    if not _have(shared_data, CIFAR10Sample.base_folder):
        pytest.skip("no offline sample here")
    from torchvision import transforms

    ds = get_cifar10(train=False, root=shared_data, verbose=False,
                     transform=transforms.Compose([transforms.Resize(16), transforms.ToTensor()]))
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and isinstance(y, int)


def test_nothing_found_gives_clear_error(tmp_path, offline):
    with pytest.raises(DataError) as err:
        get_cifar10(root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path.resolve()) in msg
    assert "cifar-10-batches-py" in msg and "cifar-10-sample-py" in msg
    assert "DATA_DIR" in msg and "online" in msg


def test_no_network_means_no_download(monkeypatch):
    monkeypatch.setenv("INF265_OFFLINE", "1")
    assert online() is False


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupted_file_is_rejected(shared_data, tmp_path, offline, damage):
    if not _have(shared_data, CIFAR10Sample.base_folder):
        pytest.skip("no offline sample here")
    root = _copy_sample(shared_data, tmp_path)
    victim = root / CIFAR10Sample.base_folder / "data_batch_3"
    victim.chmod(0o644)
    raw = bytearray(victim.read_bytes())
    if damage == "flip_byte":
        raw[5000] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    victim.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"data_batch_3 is corrupted: md5"):
        get_cifar10(root=root)


def test_incomplete_folder_is_rejected(shared_data, tmp_path, offline):
    if not _have(shared_data, CIFAR10Sample.base_folder):
        pytest.skip("no offline sample here")
    root = _copy_sample(shared_data, tmp_path)
    (root / CIFAR10Sample.base_folder / "test_batch").unlink()
    with pytest.raises(DataError, match="missing test_batch"):
        get_cifar10(root=root)


def test_mnist_test_split_without_training_images(shared_data, tmp_path, offline):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / "MNIST" / "raw" / name, raw / name)
    assert not list(raw.glob("train-images*"))
    ds = get_mnist_test(root=tmp_path)
    assert len(ds) == 10000 and ds.data.shape == (10000, 28, 28) and ds.data.dtype == torch.uint8
    assert sorted(torch.unique(ds.targets).tolist()) == list(range(10))
    img, label = ds[0]
    assert img.size == (28, 28) and label == 7  # the first official test image is a 7


def test_mnist_corrupted_gz_is_rejected(shared_data, tmp_path, offline):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(shared_data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", raw)
    data = (shared_data / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").read_bytes()
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(data[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is corrupted"):
        get_mnist_test(root=tmp_path)


def test_mnist_missing_gives_clear_error(tmp_path, offline):
    with pytest.raises(DataError, match="DATA_DIR"):
        get_mnist_test(root=tmp_path)


def test_data_check_command_fails_fast_without_data(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "INF265_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "inf265.data"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "No CIFAR-10 data found" in proc.stderr and "Traceback" not in proc.stderr
