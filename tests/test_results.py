"""Result export: deterministic JSON without NaN, figures with reproducible bytes, the staging
folder of python -m inf265.execute and its publication."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from inf265.results import (RESULTS, STAGING_ENV, ResultsError, load_json, publish, results_dir,  # noqa: E402
                            rounded, save_figure, save_json)


def test_json_is_sorted_and_nan_becomes_null(tmp_path):
    save_json("r.json", {"b": float("nan"), "a": [1.5, float("inf")]}, folder=tmp_path)
    text = (tmp_path / "r.json").read_text()
    assert text.index('"a"') < text.index('"b"') and "NaN" not in text and "Infinity" not in text
    assert load_json("r.json", folder=tmp_path) == {"a": [1.5, None], "b": None}


def test_figure_bytes_are_reproducible(tmp_path):
    def draw(name):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [2, 0, 1])
        path = save_figure(fig, name, folder=tmp_path)
        plt.close(fig)
        return path.read_bytes()

    first, second = draw("a.png"), draw("b.png")
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and first == second


def test_floats_rounded_to_significant_digits(tmp_path):
    obj = {"loss": 0.014347562699242913, "tiny": 5.92300868905012e-16, "n": 3, "ok": True,
           "rows": [{"a": 1234567.891}, 2.0], "name": "x"}
    save_json("r.json", obj, folder=tmp_path, significant=4)
    assert load_json("r.json", folder=tmp_path) == {"loss": 0.01435, "tiny": 5.923e-16, "n": 3, "ok": True,
                                                    "rows": [{"a": 1235000.0}, 2.0], "name": "x"}
    # last-digit noise (e.g. another CPU's vector code) no longer changes the file
    save_json("s.json", {**obj, "loss": 0.014347562699242908}, folder=tmp_path, significant=4)
    assert (tmp_path / "r.json").read_bytes() == (tmp_path / "s.json").read_bytes()
    with pytest.raises(ValueError, match="significant must be an integer from 1 to 17"):
        rounded(1.0, 0)


def test_staging_folder_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(STAGING_ENV, raising=False)
    assert results_dir() == RESULTS
    monkeypatch.setenv(STAGING_ENV, str(tmp_path))
    assert results_dir() == tmp_path
    path = save_json("x.json", {"a": 1})
    assert path == tmp_path / "x.json" and load_json("x.json") == {"a": 1}
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "missing"))
    with pytest.raises(ResultsError, match="is not a folder.*unset it"):
        save_json("x.json", {"a": 1})


def test_load_json_falls_back_to_results_when_not_staged(tmp_path, monkeypatch):
    monkeypatch.setenv(STAGING_ENV, str(tmp_path))
    monkeypatch.setattr("inf265.results.RESULTS", tmp_path / "results")
    save_json("only_published.json", {"b": 2}, folder=tmp_path / "results")
    assert load_json("only_published.json") == {"b": 2}


@pytest.mark.parametrize("name", ["../escape.json", "/abs/x.json", ""])
def test_names_must_stay_in_the_folder(tmp_path, name):
    with pytest.raises(ResultsError, match="give a plain file name"):
        save_json(name, {}, folder=tmp_path)


def test_publish_moves_every_staged_file(tmp_path):
    staging, target = tmp_path / "staging", tmp_path / "results"
    save_json("a.json", {"a": 1}, folder=staging)
    save_json("sub/b.json", {"b": 2}, folder=staging)
    save_json("a.json", {"old": 0}, folder=target)
    save_json("c.json", {"c": 3}, folder=target)
    assert publish(staging, target) == [target / "a.json", target / "sub" / "b.json"]
    assert load_json("a.json", folder=target) == {"a": 1} and load_json("sub/b.json", folder=target) == {"b": 2}
    assert load_json("c.json", folder=target) == {"c": 3}
    assert sorted(p.name for p in target.rglob("*")) == ["a.json", "b.json", "c.json", "sub"]
