"""Shared fixtures: float64 for the numeric tests; the real Omniglot data (found through JMAML_DATA_DIR or
beside the checkout), loaded once; one compilation cache for the session.

Many tests compile the same programs: the same small configs trained, resumed and evaluated by the ``jmaml``
command in subprocesses, each of which would compile everything again (about 100 programs for a short Omniglot
run, most of them small). The session shares them through JAX's persistent compilation cache in a folder of its
own, which the subprocesses inherit through the environment. It changes no result: a cached executable is the
one XLA compiled for the same program.
"""

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import jax
import pytest

CI_TRUE = ("true", "1", "yes")  # the values of $CI (any case) that mean "running under CI"
SHARED_OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
# made by the first pytest process of the session; its workers (pytest -n) and subprocesses inherit it
_OWNS_CACHE = "JMAML_TESTS_XLA_CACHE" not in os.environ
if _OWNS_CACHE:
    os.environ["JMAML_TESTS_XLA_CACHE"] = tempfile.mkdtemp(prefix="jmaml-tests-xla-")
_COMPILATION_CACHE = os.environ["JMAML_TESTS_XLA_CACHE"]
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the small programs add up too
jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_sessionfinish(session, exitstatus):
    if _OWNS_CACHE:
        shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)


def under_ci() -> bool:
    """Whether the tests run under CI: ``$CI`` is true, 1 or yes, in any case (CI sets ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in CI_TRUE


def requirement_missing(reason: str) -> NoReturn:
    """Skips the calling test (or module) because ``reason``; under CI (:func:`under_ci`) fails it instead,
    since CI installs everything the tests need and a skip there would hide a test that never ran."""
    if under_ci():
        pytest.fail(f"{reason} (required under CI={os.environ['CI']})", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, install: str) -> ModuleType:
    """``import name``, or :func:`requirement_missing` naming the ``pip install`` that brings it (``install``)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        requirement_missing(f"{name} cannot be imported ({err}): {install}")


def _find_omniglot() -> tuple[Path | None, list[Path]]:
    """The first folder holding both packed files, among ``$JMAML_DATA_DIR`` (itself or its ``omniglot/``)
    and ``<checkout>/../shared/data/omniglot``; and the places looked at."""
    looked = []
    env = os.environ.get("JMAML_DATA_DIR", "").strip()
    if env:
        looked += [Path(env).expanduser(), Path(env).expanduser() / "omniglot"]
    looked.append(SHARED_OMNIGLOT)
    for folder in looked:
        if all((folder / f"{s}.npz").is_file() for s in ("background", "evaluation")):
            return folder, looked
    return None, looked


def require_omniglot() -> Path:
    """The real Omniglot folder; missing data is :func:`requirement_missing` (a skip, a failure under CI)."""
    folder, looked = _find_omniglot()
    if folder is None:
        msg = ("real Omniglot data not found (looked in " + ", ".join(map(str, looked)) + "): put "
               "background.npz and evaluation.npz in ../shared/data/omniglot beside the checkout, or point "
               "JMAML_DATA_DIR at a folder holding them (or holding omniglot/ with them)")
        requirement_missing(msg)
    return folder


@pytest.fixture
def x64():
    """Runs a test in float64 (``jax.enable_x64``); a module opts in with
    ``pytestmark = pytest.mark.usefixtures("x64")``."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The real Omniglot folder (read-only), see :func:`require_omniglot`."""
    return require_omniglot()


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory) -> Path:
    """A session-private ``$XDG_CACHE_HOME``: the per-user cache that tests may fill."""
    return tmp_path_factory.mktemp("xdg_cache")


@pytest.fixture(scope="session")
def omniglot_cache(cache_home) -> Path:
    """The resized-Omniglot cache folder inside :func:`cache_home` (the default one when XDG_CACHE_HOME is it)."""
    return cache_home / "jmaml" / "omniglot"


@pytest.fixture(scope="session")
def omniglot(omniglot_dir, omniglot_cache):
    """The paper protocol on the real data: 28x28, seed 0, no validation split (uint8)."""
    from jmaml.data.omniglot import load_omniglot

    return load_omniglot(omniglot_dir, cache_dir=omniglot_cache, download=False)
