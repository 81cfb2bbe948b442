"""Where the tests find the real Omniglot data, and what they do without it (skip; fail under CI=true)."""

import conftest
import numpy as np
import pytest


@pytest.fixture
def no_shared_data(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "SHARED_OMNIGLOT", tmp_path / "shared" / "data" / "omniglot")
    monkeypatch.setenv("JMAML_DATA_DIR", str(tmp_path / "empty"))


def test_missing_data_skips_with_where_to_put_it(no_shared_data, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"put background\.npz and evaluation\.npz in "
                                                    r"\.\./shared/data/omniglot .* JMAML_DATA_DIR"):
        conftest.require_omniglot()


def test_missing_data_fails_under_ci(no_shared_data, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="real Omniglot data not found"):
        conftest.require_omniglot()


@pytest.mark.parametrize("level", ["root", "omniglot folder"])
def test_jmaml_data_dir_names_the_root_or_the_omniglot_folder(tmp_path, monkeypatch, level):
    monkeypatch.setattr(conftest, "SHARED_OMNIGLOT", tmp_path / "absent")
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    for split in ("background", "evaluation"):
        np.savez(folder / f"{split}.npz", x=np.zeros(1))
    monkeypatch.setenv("JMAML_DATA_DIR", str(folder if level == "omniglot folder" else folder.parent))
    assert conftest.require_omniglot() == folder
