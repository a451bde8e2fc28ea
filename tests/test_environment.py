"""The pinned environment is the one that runs, and environment.yml declares the same pins."""
from importlib.metadata import version

from inf265 import ROOT


def _pins():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].split(";")[0].strip()  # environment markers apply elsewhere
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"requirements.txt: {line!r} is not pinned with =="
            pins[name] = ver
    return pins


def test_installed_versions_match_the_pins():
    wrong = {n: (v, version(n)) for n, v in _pins().items() if not version(n).startswith(v)}
    assert not wrong, f"installed versions differ from requirements.txt (pinned, installed): {wrong}"


def test_torch_pair():
    assert _pins()["torch"] == "2.14.1" and _pins()["torchvision"] == "0.29.1"


def test_environment_yml_uses_the_same_pins():
    text = (ROOT / "environment.yml").read_text()
    assert "python=3.11" in text and "-r requirements.txt" in text
