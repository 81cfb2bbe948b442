"""Where the tests find the real Omniglot data, and what they do without it (skip; fail under CI: see
conftest.under_ci), and the same guard for optional modules."""

import re

import conftest
import numpy as np
import pytest


@pytest.fixture
def no_shared_data(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "SHARED_OMNIGLOT", tmp_path / "shared" / "data" / "omniglot")
    monkeypatch.setenv("JMAML_DATA_DIR", str(tmp_path / "empty"))


SKIP, FAIL = pytest.skip.Exception, pytest.fail.Exception


def outcome(check, *args) -> tuple[type, str]:
    """What ``check(*args)`` ends the calling test with, skip or fail, and its message (caught here, so that a skip
    where a failure is expected fails this test instead of skipping it)."""
    try:
        check(*args)
    except (SKIP, FAIL) as err:
        return type(err), str(err)
    raise AssertionError(f"{check.__name__} neither skipped nor failed")


@pytest.mark.parametrize("ci, expected", [(None, SKIP), ("", SKIP), ("false", SKIP), ("0", SKIP), ("no", SKIP),
                                          ("true", FAIL), ("TRUE", FAIL), ("1", FAIL), ("yes", FAIL), (" Yes ", FAIL)])
def test_missing_data_skips_outside_ci_and_fails_under_it(no_shared_data, monkeypatch, ci, expected):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    kind, message = outcome(conftest.require_omniglot)
    assert kind is expected
    assert re.search(r"^real Omniglot data not found .* put background\.npz and evaluation\.npz in "
                     r"\.\./shared/data/omniglot .* JMAML_DATA_DIR", message), message


@pytest.mark.parametrize("ci, expected", [("", SKIP), ("1", FAIL)])
def test_a_missing_module_skips_outside_ci_and_fails_under_it(monkeypatch, ci, expected):
    """The one guard every optional requirement goes through (torch, sphinx, matplotlib, the notebooks' kernel)."""
    monkeypatch.setenv("CI", ci)
    kind, message = outcome(conftest.require_module, "jmaml_no_such_module", "pip x")
    assert kind is expected
    assert re.match(r"jmaml_no_such_module cannot be imported \(No module named .*\): pip x", message), message


@pytest.mark.parametrize("level", ["root", "omniglot folder"])
def test_jmaml_data_dir_names_the_root_or_the_omniglot_folder(tmp_path, monkeypatch, level):
    monkeypatch.setattr(conftest, "SHARED_OMNIGLOT", tmp_path / "absent")
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    for split in ("background", "evaluation"):
        np.savez(folder / f"{split}.npz", x=np.zeros(1))
    monkeypatch.setenv("JMAML_DATA_DIR", str(folder if level == "omniglot folder" else folder.parent))
    assert conftest.require_omniglot() == folder
