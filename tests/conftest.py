"""Shared pytest fixtures: the data folder and a no-network switch."""
from pathlib import Path

import pytest
import torch

from inf265.data import data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The data folder the suite runs against ($DATA_DIR); skips nothing: it must hold the data."""
    root = data_dir()
    assert root.is_dir(), f"DATA_DIR={root} does not exist; run the tests with DATA_DIR=../shared/data"
    return root


@pytest.fixture
def offline(monkeypatch):
    """No download is attempted in this test."""
    monkeypatch.setenv("INF265_OFFLINE", "1")


@pytest.fixture(scope="module")
def float64():
    """The project's dtype (torch.double) for one test module; other modules keep theirs.

    Use with ``pytestmark = pytest.mark.usefixtures("float64")``.
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
