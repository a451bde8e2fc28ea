"""gradient_descent.ipynb's data preparation and evaluation, its figures, and its exported results.

The functions are the notebook's own (``inf265.nbdefs.load_definitions``), never copies.
"""
import json

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import transforms

from inf265 import ROOT, cifar_figures
from inf265.data import get_cifar10
from inf265.nbdefs import load_definitions

matplotlib.use("Agg")

NOTEBOOK = ROOT / "gradient_descent.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_definitions(NOTEBOOK)


@pytest.fixture(scope="module")
def cifar(shared_data):
    return get_cifar10(True, root=shared_data, verbose=False), get_cifar10(False, root=shared_data, verbose=False)


# ------------------------------------------------------------------------------------------- split


@settings(max_examples=50, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=300), frac=st.floats(0.05, 0.95),
       seed=st.integers(0, 1000))
def test_stratified_split_partitions_and_keeps_proportions(nb, labels, frac, seed):
    y = torch.tensor(labels)
    train, val = nb.stratified_split(y, frac, seed)
    both = torch.cat([train, val])
    assert sorted(both.tolist()) == list(range(len(y))), "not a partition of the indices"
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())
    for c in set(labels):
        n_c = labels.count(c)
        assert int((y[val] == c).sum()) == round(frac * n_c)
    again = nb.stratified_split(y, frac, seed)
    assert torch.equal(again[0], train) and torch.equal(again[1], val), "same seed, different split"


def test_stratified_split_depends_on_seed_and_rejects_bad_input(nb):
    y = torch.arange(1000) % 10
    assert not torch.equal(nb.stratified_split(y, 0.2, 0)[1], nb.stratified_split(y, 0.2, 1)[1])
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            nb.stratified_split(y, bad, 0)
    with pytest.raises(ValueError, match="targets"):
        nb.stratified_split([], 0.2, 0)


# ------------------------------------------------------------------------------ class selection


def test_select_classes_relabels_in_keep_order(nb):
    x = torch.arange(8).reshape(8, 1)
    y = torch.tensor([3, 1, 0, 3, 9, 1, 1, 3])
    xs, ys = nb.select_classes(x, y, (1, 3))
    assert xs.flatten().tolist() == [0, 1, 3, 5, 6, 7]
    assert ys.tolist() == [1, 0, 1, 0, 0, 1] and ys.dtype == torch.long
    xs, ys = nb.select_classes(x, y.tolist(), (3, 1))  # a list of labels, the other order
    assert ys.tolist() == [0, 1, 0, 1, 1, 0]


def test_notebook_keeps_automobile_as_0_and_cat_as_1(nb, cifar):
    train, _ = cifar
    assert [train.classes[c] for c in nb.KEEP] == ["automobile", "cat"]


def test_class_counts(nb):
    assert nb.class_counts([2, 0, 2, 2], 4) == [1, 0, 3, 0]
    assert nb.class_counts(torch.tensor([1, 1]), 2) == [0, 2]


# ------------------------------------------------------------------------- resize and normalise


def test_resize_matches_the_per_image_pil_pipeline(nb, cifar):
    ds, _ = cifar
    imgs = nb.as_tensor_images(ds)[:64]
    assert imgs.shape == (64, 3, 32, 32) and imgs.dtype == torch.uint8
    ours = nb.resize(imgs, 16)
    pil = transforms.Compose([transforms.Resize(16), transforms.ToTensor()])
    ref = torch.stack([pil(Image.fromarray(ds.data[i])) for i in range(64)]).double()
    assert ours.shape == (64, 3, 16, 16) and ours.dtype == torch.double
    assert 0 <= ours.min() and ours.max() <= 1
    # torchvision's antialiased tensor resize reproduces PIL's up to uint8 rounding.
    assert (ours - ref).abs().max() <= 1.5 / 255


def test_normalise_uses_the_training_statistics_only(nb):
    gen = torch.Generator().manual_seed(0)
    x_train = torch.rand(50, 3, 4, 4, generator=gen, dtype=torch.double) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    x_other = torch.rand(20, 3, 4, 4, generator=gen, dtype=torch.double) + 5
    (a, b), mean, std = nb.normalise(x_train, x_other)
    torch.testing.assert_close(a.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.double), atol=1e-12, rtol=0)
    torch.testing.assert_close(a.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.double), atol=1e-12, rtol=0)
    m = torch.tensor(mean, dtype=torch.double).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.double).view(1, 3, 1, 1)
    torch.testing.assert_close(b, (x_other - m) / s, atol=1e-12, rtol=0)
    assert b.mean() > 1, "the other set must keep its own offset (normalised with the training statistics)"


# ------------------------------------------------------------------------------------- loaders


def test_make_loader_is_seeded_and_reshuffles_every_epoch(nb):
    x = torch.arange(50).double().reshape(50, 1)
    y = torch.arange(50)
    loader = nb.make_loader(x, y, 8, 7)
    epochs = [[yb.tolist() for _, yb in loader] for _ in range(2)]
    assert epochs[0] != epochs[1], "the order must be redrawn every epoch"
    assert sorted(sum(epochs[0], [])) == list(range(50)) and [len(b) for b in epochs[0]][-1] == 2
    twin = nb.make_loader(x, y, 8, 7)
    assert [[yb.tolist() for _, yb in twin] for _ in range(2)] == epochs, "same seed, different batches"
    assert [yb.tolist() for _, yb in nb.make_loader(x, y, 8, 8)] != epochs[0]
    for xb, yb in nb.make_loader(x, y, 8, 7):
        assert torch.equal(xb.flatten().long(), yb), "images and labels must stay paired"


# ------------------------------------------------------------------------------------ evaluation


def test_accuracy_and_probabilities(nb):
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x[:, 0], -x[:, 0]], dim=1)

    x = torch.tensor([[1.0], [-2.0], [3.0], [-0.5]], dtype=torch.double)
    probs = nb.predict_proba(Fixed(), x)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4, dtype=torch.double))
    assert probs.argmax(dim=1).tolist() == [0, 1, 0, 1]
    assert nb.accuracy(Fixed(), x, torch.tensor([0, 1, 1, 1])) == 0.75


def test_confusion_matrix_precision_recall(nb):
    true = [0, 0, 0, 1, 1, 1, 1]
    pred = [0, 1, 0, 1, 1, 0, 1]
    m = nb.confusion_matrix(true, pred, 2)
    assert m == [[2, 1], [1, 3]]
    precision, recall = nb.precision_recall([[2, 1], [0, 4]], ["a", "b"])
    assert precision == pytest.approx({"a": 1.0, "b": 4 / 5})
    assert recall == pytest.approx({"a": 2 / 3, "b": 1.0})
    precision, _ = nb.precision_recall([[0, 1], [0, 4]], ["a", "b"])
    assert np.isnan(precision["a"]), "0/0 precision must be NaN, not a number"
    with pytest.raises(ValueError, match="shape"):
        nb.confusion_matrix([0, 1], [0], 2)


def test_wilson_interval(nb):
    lo, hi = nb.wilson_interval(0, 10)
    assert lo == pytest.approx(0, abs=1e-12) and hi == pytest.approx(1.959964 ** 2 / (10 + 1.959964 ** 2), rel=1e-6)
    # Textbook value (Newcombe 1998, 81/263): 0.2553 to 0.3662.
    lo, hi = nb.wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo99, hi99 = nb.wilson_interval(81, 263, confidence=0.99)
    assert lo99 < lo and hi < hi99
    with pytest.raises(ValueError):
        nb.wilson_interval(5, 3)


# --------------------------------------------------------------------------------------- figures


def test_learning_curve_styles_are_distinct_and_shared_across_panels():
    configs = [{"name": f"c{i}", "lr": lr, "momentum": mom, "weight_decay": wd}
               for i, (lr, mom, wd) in enumerate([(0.01, m, w) for m in (0, 0.9, 0.8) for w in (0, 0.01, 0.001)]
                                                 + [(0.05, 0, 0), (0.1, 0, 0)])]
    styles = cifar_figures.curve_styles(configs)
    assert len(styles) == 5
    assert len({(s["color"], s["marker"], s["linestyle"]) for s in styles.values()}) == 5
    assert len({s["color"] for s in styles.values()}) == 5, "colours repeat"
    histories = {c["name"]: {"train_loss": [1.0, 0.5], "train_acc": [0.6, 0.7], "val_acc": [0.5, 0.6]}
                 for c in configs}
    fig = cifar_figures.learning_curves(configs, histories)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["momentum 0", "momentum 0.8", "momentum 0.9"]
    assert sum(len(ax.lines) for ax in fig.axes) == 3 * len(configs), "one curve per configuration and row"
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == [
        "training loss", "training accuracy (%)", "validation accuracy (%)"]
    accuracy_axis = [ax for ax in fig.axes if ax.get_ylabel() == "validation accuracy (%)"][0]
    assert all(1 < y <= 100 for line in accuracy_axis.lines for y in line.get_ydata()), "accuracies in %"
    (legend,) = fig.legends
    assert legend.get_texts()[0].get_fontsize() >= 11, "legend too small to read at the notebook's width"
    assert sorted(t.get_text() for t in legend.get_texts()) == sorted(styles)


def test_misclassified_shows_the_original_beside_the_16x16_input():
    originals = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    seen = np.ones((5, 16, 16, 3)) / 2
    probs = np.array([[0.6, 0.4], [0.1, 0.9], [0.95, 0.05], [0.3, 0.7], [0.8, 0.2]])
    fig = cifar_figures.misclassified(originals, seen, [1, 0, 1, 0, 1], probs, ["automobile", "cat"], n=3)
    shapes = [ax.images[0].get_array().shape[:2] for ax in fig.axes]
    assert shapes == [(32, 32), (16, 16)] * 3
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts[0].startswith("true: cat") and "automobile 0.95" in texts[0], "most confident error first"
    assert min(t.get_fontsize() for ax in fig.axes for t in [*ax.texts, ax.title]) >= 11, "labels too small"
    assert fig.get_figwidth() * fig.dpi >= 800, "drawn at the notebook's width"
    assert cifar_figures.most_confident(probs, 2).tolist() == [2, 1]


def test_confusion_matrix_figure_is_large_enough_to_read():
    fig = cifar_figures.confusion_matrix([[80, 13], [20, 84]], ["automobile", "cat"])
    (ax,) = fig.axes
    assert fig.get_figwidth() * fig.dpi >= 400
    assert min(label.get_fontsize() for label in ax.get_xticklabels() + ax.get_yticklabels()) >= 11
    assert min(t.get_fontsize() for t in ax.texts) >= 14


# ------------------------------------------------------------------------------ exported results


def test_exported_results_are_consistent():
    """results/gradient_descent.json, written by the executed notebook, has the report's schema."""
    path = ROOT / "results" / "gradient_descent.json"
    assert path.is_file(), "run the notebook: DATA_DIR=../shared/data .venv/bin/python -m inf265.execute gradient_descent.ipynb"
    r = json.loads(path.read_text())
    ds = r["dataset"]
    assert ds["classes"] == ["automobile", "cat"] and ds["source"] in ("CIFAR-10", "CIFAR-10 offline sample")
    assert ds["is_sample"] == (ds["source"] == "CIFAR-10 offline sample")
    assert ds["n_train"] + ds["n_val"] < ds["n_train_all_classes"] and ds["n_test"] < ds["n_test_all_classes"]
    counts = ds["class_counts"]
    assert ds["n_train"] == counts["train"]["automobile"] + counts["train"]["cat"]
    assert ds["n_val"] == counts["val"]["automobile"] + counts["val"]["cat"]
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == ds["n_train_all_classes"]
    assert r["preprocessing"]["image_size"] == 16 and len(r["preprocessing"]["mean"]) == 3 == len(r["preprocessing"]["std"])
    t = r["training"]
    assert t["steps"] == t["epochs"] * -(-ds["n_train"] // t["batch_size"])
    configs = r["configurations"]
    assert len(configs) >= 9 and len({c["name"] for c in configs}) == len(configs)
    for c in configs:
        assert 0 <= c["train_accuracy"] <= 1 and 0 <= c["val_accuracy"] <= 1 and c["final_train_loss"] > 0
        assert c["manual_identical"] is True, f"{c['name']}: train_manual_update differs from train"
    best = max(c["val_accuracy"] for c in configs)
    sel = r["selected"]
    assert sel["val_accuracy"] == best
    assert next(c for c in configs if c["val_accuracy"] == best)["name"] == sel["name"], "ties go to the first"
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
