"""miniImageNet: both common formats (CSV + images/, pickle cache files) on tiny fixtures."""

import pickle

import numpy as np
import pytest
from PIL import Image

from jmaml.data import mini_imagenet as mi
from jmaml.data import paths
from jmaml.errors import JmamlError

LABELS = ["n03017168", "n01532829", "n02110063"]  # deliberately unsorted


@pytest.fixture(autouse=True)
def _private_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "root"))


def _images(seed, n=18):
    return np.random.default_rng(seed).integers(0, 256, (n, 84, 84, 3), dtype=np.uint8)


def _write_csv_split(folder, split, images, labels, per_class=6, ext="png"):
    """``<split>.csv`` (filename,label) and the images in ``images/``; returns the expected array."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["filename,label"]
    for i, img in enumerate(images):
        label = labels[i // per_class]
        name = f"{label}{i:08d}.{ext}"
        Image.fromarray(img).save(folder / "images" / name)
        rows.append(f"{name},{label}")
    (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    order = np.argsort(labels)  # classes come out sorted by label
    return images.reshape(len(labels), per_class, 84, 84, 3)[order]


def _write_pickle(folder, split, images, labels, per_class=6, seed=0):
    perm = np.random.default_rng(seed).permutation(len(images))  # classes scattered in image_data
    data = np.empty_like(images)
    data[perm] = images
    class_dict = {lab: perm[c * per_class:(c + 1) * per_class].tolist() for c, lab in enumerate(labels)}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
        pickle.dump({"image_data": data, "class_dict": class_dict}, f)
    return images.reshape(len(labels), per_class, 84, 84, 3)[np.argsort(labels)]


def test_csv_format_and_cache(tmp_path):
    want = _write_csv_split(tmp_path / "data", "val", _images(0), LABELS)
    got = mi.load_mini_imagenet_split("val", tmp_path / "data", strict=False, cache_dir=tmp_path / "c")
    assert got.shape == (3, 6, 84, 84, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    cached = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(cached) == 1 and cached[0].startswith("mini_imagenet_val_") and cached[0].endswith(".npz")
    (tmp_path / "data" / "val.csv").unlink()  # the second load reads only the cache
    again = mi.load_mini_imagenet_split("val", tmp_path / "data", dtype="float32", strict=False,
                                        cache_dir=tmp_path / "c")
    assert again.dtype == np.float32 and again.min() >= 0 and again.max() <= 1
    np.testing.assert_allclose(again, want / 255.0, atol=1e-6)


def test_csv_images_of_other_sizes_are_resized(tmp_path):
    (tmp_path / "images").mkdir()
    rows = ["filename,label"]
    for i in range(4):
        Image.fromarray(np.full((100, 120, 3), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.jpg")
        rows.append(f"{i}.jpg,n0{i % 2}")
    (tmp_path / "test.csv").write_text("\n".join(rows))
    got = mi.load_mini_imagenet_split("test", tmp_path, strict=False, cache_dir=tmp_path / "c")
    assert got.shape == (2, 2, 84, 84, 3)
    assert abs(int(got[1, 1].mean()) - 120) <= 2  # image 3 (label n01, second), value 120


def test_pickle_format(tmp_path):
    want = _write_pickle(tmp_path / "data", "train", _images(1), LABELS)
    got = mi.load_mini_imagenet_split("train", tmp_path / "data", strict=False, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(got, want)


def test_all_splits_mixed_formats(tmp_path):
    d = tmp_path / "data"
    want = [_write_pickle(d, "train", _images(2), LABELS),
            _write_csv_split(d, "val", _images(3, 12), ["b", "a"]),
            _write_csv_split(d, "test", _images(4, 6), ["z"])]
    got = mi.load_mini_imagenet(d, strict=False, cache_dir=tmp_path / "c")
    assert isinstance(got, mi.MiniImageNetSplits)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_strict_counts(tmp_path):
    _write_pickle(tmp_path, "test", _images(5), LABELS)
    with pytest.raises(JmamlError, match=r"test has 3 classes x 6 images, the Ravi & Larochelle split "
                                          r"has 20 x 600; pass strict=False"):
        mi.load_mini_imagenet_split("test", tmp_path, cache_dir=tmp_path / "c")


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(JmamlError, match=r"miniImageNet folder .*nothere does not exist; miniImageNet "
                                          r"has no free download"):
        mi.load_mini_imagenet_split("train", tmp_path / "nothere")
    (tmp_path / "d").mkdir()
    with pytest.raises(JmamlError, match=r"has no mini-imagenet-cache-val\.pkl and no val\.csv"):
        mi.load_mini_imagenet_split("val", tmp_path / "d")


def test_missing_image_and_unequal_classes(tmp_path):
    _write_csv_split(tmp_path, "val", _images(6), LABELS)
    next((tmp_path / "images").iterdir()).unlink()
    with pytest.raises(JmamlError, match=r"val\.csv: 1 of 18 images are missing from"):
        mi.load_mini_imagenet_split("val", tmp_path, strict=False, cache_dir=tmp_path / "c")
    lines = (tmp_path / "val.csv").read_text().splitlines()
    (tmp_path / "val.csv").write_text("\n".join(lines[:-1]))
    with pytest.raises(JmamlError, match=r"classes have different numbers of images \(5 to 6"):
        mi.load_mini_imagenet_split("val", tmp_path, strict=False, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing cached from bad data


def test_bad_pickles(tmp_path):
    _write_pickle(tmp_path, "train", _images(7), LABELS)
    pkl = tmp_path / "mini-imagenet-cache-train.pkl"
    data = pkl.read_bytes()
    pkl.write_bytes(data[: len(data) // 2])
    with pytest.raises(JmamlError, match=r"mini-imagenet-cache-train\.pkl: cannot unpickle it"):
        mi.load_mini_imagenet_split("train", tmp_path, strict=False, cache_dir=tmp_path / "c")
    with open(pkl, "wb") as f:
        pickle.dump({"image_data": np.zeros((4, 32, 32, 3), np.uint8), "class_dict": {"a": [0, 1]}}, f)
    with pytest.raises(JmamlError, match=r"image_data is uint8\[4, 32, 32, 3\], expected uint8 \[N, 84, 84, 3\]"):
        mi.load_mini_imagenet_split("train", tmp_path, strict=False, cache_dir=tmp_path / "c")
    with open(pkl, "wb") as f:
        pickle.dump({"images": []}, f)
    with pytest.raises(JmamlError, match=r"expected a dict with image_data and class_dict, got \['images'\]"):
        mi.load_mini_imagenet_split("train", tmp_path, strict=False, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(JmamlError, match="unknown miniImageNet split 'valid'"):
        mi.load_mini_imagenet_split("valid", tmp_path)
    with pytest.raises(JmamlError, match="dtype must be 'uint8' or 'float32', got 'float16'"):
        mi.load_mini_imagenet_split("val", tmp_path, dtype="float16")
