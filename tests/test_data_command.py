"""``jmaml data omniglot | mini-imagenet``: convert, check, report; missing files name the file and the layout."""

import shutil

import numpy as np
import pytest
from test_mini_imagenet import _write_all
from test_omniglot import _write_zip

from jmaml.data import mini_imagenet as mi
from jmaml.data import omniglot_archive as oa
from jmaml.data import paths
from jmaml.errors import JmamlError
from jmaml.experiment import cli, data_command

LABELS = (("a1", "a2", "a3"), ("b1", "b2"), ("c1",))


@pytest.fixture(autouse=True)
def _private_data_root(tmp_path, monkeypatch):
    """Never touch the user's data or cache."""
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "root"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _tiny_zips(folder):
    """Official-layout archives of a few random characters; returns split -> ink [chars, 20, 105, 105]."""
    rng, made = np.random.default_rng(0), {}
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in (("background", ["Beta", "Alpha"]), ("evaluation", ["Gamma"])):
        chars = [(n, c, 10 * i + c, rng.random((20, 105, 105)) < 0.1) for i, n in enumerate(names) for c in (1, 2)]
        _write_zip(folder / f"images_{split}.zip", split, chars)
        made[split] = np.stack([c[3] for c in sorted(chars, key=lambda c: (c[0], c[1]))]).astype(np.uint8)
    return made


def test_omniglot_from_a_folder_of_zips(tmp_path):
    made = _tiny_zips(tmp_path / "zips")
    report = data_command.omniglot(str(tmp_path / "data"), str(tmp_path / "zips"), verify=False)
    for split, ink in made.items():
        np.testing.assert_array_equal(oa.read_packed(tmp_path / "data" / f"{split}.npz", verify=False), ink)
    assert f"Omniglot is in {(tmp_path / 'data').resolve()}" in report
    assert "background.npz: 4 characters x 20 drawings, 105x105, layout ok (converted from" in report
    assert "evaluation.npz: 2 characters x 20 drawings" in report
    assert f"--data-dir {(tmp_path / 'data').resolve()}" in report
    # A second call finds the files and converts nothing.
    assert "already there" in data_command.omniglot(str(tmp_path / "data"), str(tmp_path / "zips"), verify=False)


def test_omniglot_cli_checks_the_converted_files(capsys, tmp_path):
    _tiny_zips(tmp_path / "zips")  # not the real data: the sha256 check must refuse it
    code, out, err = run_cli(capsys, "data", "omniglot", "--data-dir", str(tmp_path / "data"),
                             "--from", str(tmp_path / "zips"))
    assert code == cli.EXIT_BAD_INPUT and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "sha256 mismatch for Omniglot background" in err


def test_omniglot_cli_real_data_in_place(capsys, tmp_path, omniglot_dir):
    data = tmp_path / "data" / "omniglot"
    data.mkdir(parents=True)
    for split in oa.SPLITS:
        shutil.copy(omniglot_dir / f"{split}.npz", data)
    code, out, err = run_cli(capsys, "data", "omniglot", "--data-dir", str(tmp_path / "data"))
    assert code == 0, err
    assert f"Omniglot is in {data.resolve()}" in out
    assert "background.npz: 964 characters x 20 drawings, 105x105, sha256 ok (already there)" in out
    assert "evaluation.npz: 659 characters x 20 drawings, 105x105, sha256 ok (already there)" in out


def test_omniglot_missing_zip_names_it_and_the_layout(capsys, tmp_path):
    (tmp_path / "zips").mkdir()
    _tiny_zips(tmp_path / "zips")
    (tmp_path / "zips" / "images_evaluation.zip").unlink()
    code, out, err = run_cli(capsys, "data", "omniglot", "--data-dir", str(tmp_path / "data"),
                             "--from", str(tmp_path / "zips"))
    assert code == cli.EXIT_BAD_INPUT and err.count("\n") == 1
    assert "has no images_evaluation.zip" in err and "images_background.zip and images_evaluation.zip" in err
    assert not (tmp_path / "data").exists()  # checked before converting anything
    code, _, err = run_cli(capsys, "data", "omniglot", "--from", str(tmp_path / "nowhere"))
    assert code == cli.EXIT_BAD_INPUT and "no such folder" in err and "images_background.zip" in err


@pytest.mark.parametrize("fmt", ["csv", "pickle"])
def test_mini_imagenet_in_place(capsys, tmp_path, fmt):
    want = _write_all(tmp_path / "mine", fmt, labels=LABELS)
    report = data_command.mini_imagenet([str(tmp_path / "mine")], strict=False)
    assert f"miniImageNet is in {(tmp_path / 'mine').resolve()}" in report
    assert "train: 3 classes, 18 images 84x84x3" in report and "test: 1 classes, 6 images" in report
    assert "cache built" in report and f"--data-dir {(tmp_path / 'mine').resolve()}" in report
    loaded = mi.load_mini_imagenet(tmp_path / "mine", strict=False)  # training reads the same cache
    assert [s["cache"] for s in loaded.summary] == ["hit"] * 3
    for got, expected in zip(loaded[:3], want):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("fmt", ["csv", "pickle"])
def test_mini_imagenet_copied_into_the_data_dir(tmp_path, fmt):
    want = _write_all(tmp_path / "mine", fmt, labels=LABELS)
    source = ([str(tmp_path / "mine")] if fmt == "csv" else
              [str(tmp_path / "mine" / f"mini-imagenet-cache-{s}.pkl") for s in mi.SPLITS])
    report = data_command.mini_imagenet(source, str(tmp_path / "data"), strict=False)
    dest = tmp_path / "data"  # an explicit folder with no data yet is the data set folder itself
    assert f"miniImageNet is in {dest.resolve()}" in report
    np.testing.assert_array_equal(mi.load_mini_imagenet(tmp_path / "data", strict=False).train, want[0])


def test_mini_imagenet_cli_strict_counts_and_missing_files(capsys, tmp_path):
    _write_all(tmp_path / "mine", "pickle", labels=LABELS)
    code, _, err = run_cli(capsys, "data", "mini-imagenet", "--from", str(tmp_path / "mine"))
    assert code == cli.EXIT_BAD_INPUT and err.count("\n") == 1 and "the Ravi & Larochelle split has 64 x 600" in err
    (tmp_path / "mine" / "mini-imagenet-cache-val.pkl").unlink()
    code, _, err = run_cli(capsys, "data", "mini-imagenet", "--from", str(tmp_path / "mine"))
    assert code == cli.EXIT_BAD_INPUT and err.count("\n") == 1
    assert "has no mini-imagenet-cache-val.pkl" in err and "images/" in err
    one_pickle = tmp_path / "mine" / "mini-imagenet-cache-train.pkl"
    code, _, err = run_cli(capsys, "data", "mini-imagenet", "--from", str(one_pickle))
    assert code == cli.EXIT_BAD_INPUT and "missing: mini-imagenet-cache-test.pkl, mini-imagenet-cache-val.pkl" in err
    code, _, err = run_cli(capsys, "data", "mini-imagenet", "--from", str(tmp_path / "empty"))
    assert code == cli.EXIT_BAD_INPUT and "no such file or folder" in err and "train.csv" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "data", "mini-imagenet", "--from", str(tmp_path / "empty"))
    assert code == cli.EXIT_BAD_INPUT and "holds no miniImageNet file" in err and "mini-imagenet-cache-train.pkl" in err


def test_mini_imagenet_missing_image_is_named_before_copying(tmp_path):
    _write_all(tmp_path / "mine", "csv", labels=LABELS)
    victim = sorted((tmp_path / "mine" / "images").iterdir())[0]
    victim.unlink()
    with pytest.raises(JmamlError, match=f"images are missing .* e.g. {victim.name}"):
        data_command.mini_imagenet([str(tmp_path / "mine")], str(tmp_path / "data"), strict=False)
    assert not (tmp_path / "data").exists()
