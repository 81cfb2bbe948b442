"""Shared fixtures: float64 for the numeric tests; the real Omniglot data beside the checkout, loaded once."""

from pathlib import Path

import jax
import pytest

OMNIGLOT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


@pytest.fixture
def x64():
    """Runs a test in float64 (``jax.enable_x64``); a module opts in with
    ``pytestmark = pytest.mark.usefixtures("x64")``."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """``<repo>/../shared/data/omniglot`` (read-only), where tests and CI find the real data."""
    if not (OMNIGLOT_DIR / "background.npz").is_file():
        pytest.fail(f"real Omniglot data missing: expected {OMNIGLOT_DIR}/background.npz and "
                    "evaluation.npz (shared/ beside the repository checkout)")
    return OMNIGLOT_DIR


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory) -> Path:
    """A session-private cache folder for the resized Omniglot arrays."""
    return tmp_path_factory.mktemp("omniglot_cache")


@pytest.fixture(scope="session")
def omniglot(omniglot_dir, omniglot_cache):
    """The paper protocol on the real data: 28x28, seed 0, no validation split."""
    from jmaml.data.omniglot import load_omniglot

    return load_omniglot(omniglot_dir, cache_dir=omniglot_cache, download=False)
