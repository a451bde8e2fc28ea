"""Result export: deterministic JSON without NaN, figures with reproducible bytes."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from inf265.results import load_json, save_figure, save_json  # noqa: E402


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
