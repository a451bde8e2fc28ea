"""inf265.cifar: split, class selection, preprocessing once, loaders, metrics; and the exported results."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

from inf265 import ROOT, cifar
from inf265.data import get_cifar10


@settings(max_examples=50, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=300), frac=st.floats(0.05, 0.95),
       seed=st.integers(0, 1000))
def test_stratified_split_partitions_and_keeps_proportions(labels, frac, seed):
    y = torch.tensor(labels)
    train, val = cifar.stratified_split(y, frac, seed)
    both = torch.cat([train, val])
    assert sorted(both.tolist()) == list(range(len(y))), "not a partition of the indices"
    for c in set(labels):
        n_c = labels.count(c)
        assert int((y[val] == c).sum()) == round(frac * n_c)
    again = cifar.stratified_split(y, frac, seed)
    assert torch.equal(again[0], train) and torch.equal(again[1], val), "same seed, different split"


def test_stratified_split_depends_on_seed_and_rejects_bad_input():
    y = torch.arange(1000) % 10
    assert not torch.equal(cifar.stratified_split(y, 0.2, 0)[1], cifar.stratified_split(y, 0.2, 1)[1])
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            cifar.stratified_split(y, bad, 0)
    with pytest.raises(ValueError, match="targets"):
        cifar.stratified_split([], 0.2, 0)


def test_select_classes_relabels_in_keep_order():
    x = torch.arange(8).reshape(8, 1)
    y = torch.tensor([3, 1, 0, 3, 9, 1, 1, 3])
    xs, ys = cifar.select_classes(x, y, keep=(1, 3))
    assert xs.flatten().tolist() == [0, 1, 3, 5, 6, 7]
    assert ys.tolist() == [1, 0, 1, 0, 0, 1]


def test_batched_resize_matches_the_per_image_pil_pipeline(shared_data):
    ds = get_cifar10(True, root=shared_data, verbose=False)
    imgs = cifar.images_as_tensor(ds)[:64]
    ours = cifar.resize_to_double(imgs, 16)
    pil = transforms.Compose([transforms.Resize(16), transforms.ToTensor()])
    ref = torch.stack([pil(Image.fromarray(ds.data[i])) for i in range(64)]).double()
    assert ours.shape == (64, 3, 16, 16) and ours.dtype == torch.double
    assert 0 <= ours.min() and ours.max() <= 1
    # torchvision's antialiased tensor resize reproduces PIL's up to uint8 rounding.
    assert (ours - ref).abs().max() <= 1.5 / 255


def test_load_cat_car_on_the_data(shared_data):
    train = get_cifar10(True, root=shared_data, verbose=False)
    test = get_cifar10(False, root=shared_data, verbose=False)
    d = cifar.load_cat_car(datasets=(train, test))
    assert d.classes == ["automobile", "cat"]
    n_train_cc = sum(t in (1, 3) for t in train.targets)
    n_test_cc = sum(t in (1, 3) for t in test.targets)
    assert len(d.y_train) + len(d.y_val) == n_train_cc and len(d.y_test) == n_test_cc
    assert len(d.y_val) == round(0.2 * train.targets.count(1)) + round(0.2 * train.targets.count(3))
    assert d.x_train.shape[1:] == (3, 16, 16) and d.x_train.dtype == torch.double
    # normalised with the training statistics: mean 0 and std 1 on training, not exactly on test
    torch.testing.assert_close(d.x_train.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.double), atol=1e-10, rtol=0)
    torch.testing.assert_close(d.x_train.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.double), atol=1e-10, rtol=0)
    assert d.x_test.mean(dim=(0, 2, 3)).abs().max() > 1e-6
    assert set(d.y_train.tolist()) == {0, 1}
    assert d.counts["test"] == cifar.class_counts(test.targets, 10)
    # the test set keeps the dataset order: label 0 where CIFAR-10 says automobile
    expected = [0 if t == 1 else 1 for t in test.targets if t in (1, 3)]
    assert d.y_test.tolist() == expected


def test_tensor_loader_order_is_seeded_and_matches_dataloader():
    x = torch.arange(50).double().reshape(50, 1)
    y = torch.arange(50)
    loader = cifar.tensor_loader(x, y, 8, True, 7)
    epochs = [[yb.tolist() for _, yb in loader] for _ in range(2)]
    assert epochs[0] != epochs[1], "the order must be redrawn every epoch"
    assert sorted(sum(epochs[0], [])) == list(range(50)) and [len(b) for b in epochs[0]][-1] == 2
    assert epochs[0] == [yb.tolist() for _, yb in cifar.tensor_loader(x, y, 8, True, 7)]
    ref = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(7))
    assert [yb.tolist() for _, yb in ref] == epochs[0]
    plain = [yb.tolist() for _, yb in cifar.tensor_loader(x, y, 20)]
    assert plain == [list(range(20)), list(range(20, 40)), list(range(40, 50))]
    with pytest.raises(ValueError, match="seed"):
        cifar.tensor_loader(x, y, 8, shuffle=True)
    with pytest.raises(ValueError, match="batch_size"):
        cifar.tensor_loader(x, y, 0)
    with pytest.raises(ValueError, match="length"):
        cifar.tensor_loader(x, y[:3], 8)


def test_confusion_matrix_precision_recall():
    true = [0, 0, 0, 1, 1, 1, 1]
    pred = [0, 1, 0, 1, 1, 0, 1]
    m = cifar.confusion_matrix(true, pred, 2)
    assert m == [[2, 1], [1, 3]]
    precision, recall = cifar.precision_recall(m, ["a", "b"])
    assert precision == pytest.approx({"a": 2 / 3, "b": 3 / 4})
    assert recall == pytest.approx({"a": 2 / 3, "b": 3 / 4})
    with pytest.raises(ValueError, match="shape"):
        cifar.confusion_matrix([0, 1], [0], 2)


def test_wilson_interval():
    lo, hi = cifar.wilson_interval(0, 10)
    assert lo == pytest.approx(0, abs=1e-12) and hi == pytest.approx(1.959964 ** 2 / (10 + 1.959964 ** 2), rel=1e-6)
    lo, hi = cifar.wilson_interval(163, 197)
    assert lo < 163 / 197 < hi and 0.05 < hi - lo < 0.15
    lo99, hi99 = cifar.wilson_interval(163, 197, confidence=0.99)
    assert lo99 < lo and hi < hi99
    with pytest.raises(ValueError):
        cifar.wilson_interval(5, 3)


def test_exported_results_are_consistent():
    """results/gradient_descent.json, written by the executed notebook, has the report's schema."""
    path = ROOT / "results" / "gradient_descent.json"
    assert path.is_file(), "run the notebook: DATA_DIR=../shared/data .venv/bin/python -m inf265.execute gradient_descent.ipynb"
    r = json.loads(path.read_text())
    ds = r["dataset"]
    assert ds["classes"] == ["automobile", "cat"] and ds["source"] in ("CIFAR-10", "CIFAR-10 offline sample")
    assert ds["is_sample"] == (ds["source"] == "CIFAR-10 offline sample")
    assert ds["n_train"] + ds["n_val"] < ds["n_train_all_classes"] and ds["n_test"] < ds["n_test_all_classes"]
    assert r["preprocessing"]["image_size"] == 16 and len(r["preprocessing"]["mean"]) == 3 == len(r["preprocessing"]["std"])
    assert r["training"] == {"epochs": 30, "batch_size": 256, "seed": 42}
    configs = r["configurations"]
    assert len(configs) >= 6 and len({c["name"] for c in configs}) == len(configs)
    for c in configs:
        assert 0 <= c["train_accuracy"] <= 1 and 0 <= c["val_accuracy"] <= 1 and c["final_train_loss"] > 0
    best = max(c["val_accuracy"] for c in configs)
    sel = r["selected"]
    assert sel["val_accuracy"] == best
    assert next(c for c in configs if c["name"] == sel["name"])["val_accuracy"] == best
    m = r["test_metrics"]["confusion_matrix"]
    n_test = r["test_metrics"]["n_test"]
    assert n_test == ds["n_test"] == sum(map(sum, m))
    assert r["test_accuracy"] == pytest.approx((m[0][0] + m[1][1]) / n_test, abs=1e-6)
    lo, hi = r["test_accuracy_ci95"]
    assert lo < r["test_accuracy"] < hi
    assert r["test_metrics"]["recall"]["cat"] == pytest.approx(m[1][1] / sum(m[1]), abs=1e-6)
    assert r["manual_vs_sgd"] and all(case["identical"] is True for case in r["manual_vs_sgd"])
    assert {"plain SGD", "weight decay", "momentum"} <= {case["case"] for case in r["manual_vs_sgd"]}
    for key in ("class_counts", "examples", "learning_curves", "confusion_matrix", "misclassified"):
        png = ROOT / r["figures"][key]
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_pil_baseline_gives_the_same_batches_as_the_tensor_path(shared_data):
    """The benchmark compares like with like: same images, same order, same values up to rounding."""
    ds = get_cifar10(True, root=shared_data, verbose=False)
    ds.data, ds.targets = ds.data[:100], ds.targets[:100]
    x = cifar.resize_to_double(cifar.images_as_tensor(ds), 16)
    mean, std = cifar.channel_stats(x)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    fast = list(cifar.tensor_loader(x, torch.tensor(ds.targets), 32, shuffle=True, seed=3))
    slow = list(cifar.pil_loader(ds, mean, std, 32, image_size=16, seed=3))
    assert [len(b[1]) for b in slow] == [32, 32, 32, 4]
    for (xa, ya), (xb, yb) in zip(fast, slow):
        assert torch.equal(ya, yb) and xb.dtype == torch.double
        assert (xa - xb).abs().max() <= 1.5 / 255 / min(std)
