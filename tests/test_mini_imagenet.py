"""miniImageNet: both common formats (CSV + images/, pickle cache files) on tiny generated data sets."""

import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

from jmaml.data import cache
from jmaml.data import mini_imagenet as mi
from jmaml.data import paths
from jmaml.errors import JmamlError

LABELS = ["n03017168", "n01532829", "n02110063"]  # deliberately unsorted


@pytest.fixture(autouse=True)
def _private_data_root(tmp_path, monkeypatch):
    """Never touch the user's data or cache: both default roots are fresh temporary folders."""
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "root"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


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


def _write_all(folder, fmt, seed=0, labels=(("a1", "a2", "a3"), ("b1", "b2"), ("c1",))):
    """All three splits in one format; returns the expected arrays (classes sorted by label)."""
    write = _write_csv_split if fmt == "csv" else _write_pickle
    return [write(folder, split, _images(seed + i, 6 * len(labs)), list(labs))
            for i, (split, labs) in enumerate(zip(mi.SPLITS, labels))]


def _cache_names(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_csv_format_and_cache(tmp_path):
    want = _write_csv_split(tmp_path / "data", "val", _images(0), LABELS)
    got = mi.load_mini_imagenet_split("val", tmp_path / "data", strict=False, cache_dir=tmp_path / "c")
    assert got.images.shape == (3, 6, 84, 84, 3) and got.images.dtype == np.uint8
    np.testing.assert_array_equal(got.images, want)
    assert got.labels.tolist() == sorted(LABELS)
    (cached,) = _cache_names(tmp_path / "c")
    assert cached.startswith("mini_imagenet-val.csv-") and cached.endswith(".npz")  # named by its source
    assert got.summary == {"split": "val", "format": "csv", "source": str(tmp_path / "data" / "val.csv"),
                           "classes": 3, "images": 18, "image_size": "84x84x3", "cache": "built",
                           "cache_path": str(tmp_path / "c" / cached), "resized": {"count": 0, "sizes": {}}}
    again = mi.load_mini_imagenet_split("val", tmp_path / "data", strict=False, cache_dir=tmp_path / "c")
    assert again.summary["cache"] == "hit"
    np.testing.assert_array_equal(again.images, want)


def test_csv_images_of_other_sizes_are_resized_and_counted(tmp_path):
    (tmp_path / "images").mkdir()
    rows = ["filename,label"]
    for i in range(4):
        shape = (100, 120, 3) if i < 3 else (84, 84, 3)
        Image.fromarray(np.full(shape, 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        rows.append(f"{i}.png,n0{i % 2}")
    (tmp_path / "test.csv").write_text("\n".join(rows))
    for status in ("built", "hit"):  # the cache remembers what was resized
        got = mi.load_mini_imagenet_split("test", tmp_path, strict=False, cache_dir=tmp_path / "c")
        assert got.images.shape == (2, 2, 84, 84, 3)
        assert abs(int(got.images[1, 0].mean()) - 40) <= 2  # image 1 (label n01, first), value 40
        assert got.summary["cache"] == status
        assert got.summary["resized"] == {"count": 3, "sizes": {"120x100": 3}}


def test_pickle_format(tmp_path):
    want = _write_pickle(tmp_path / "data", "train", _images(1), LABELS)
    got = mi.load_mini_imagenet_split("train", tmp_path / "data", strict=False, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(got.images, want)
    assert got.summary["format"] == "pickle" and got.summary["classes"] == 3 and got.summary["images"] == 18
    assert _cache_names(tmp_path / "c")[0].startswith("mini_imagenet-mini-imagenet-cache-train.pkl-")


@pytest.mark.parametrize("fmt", ["csv", "pickle"])
def test_all_splits_summary_keep_and_place(tmp_path, fmt):
    want = _write_all(tmp_path / "data", fmt)
    got = mi.load_mini_imagenet(tmp_path / "data", strict=False, cache_dir=tmp_path / "c")
    assert isinstance(got, mi.MiniImageNetSplits)
    for g, w in zip(got[:3], want):
        np.testing.assert_array_equal(g, w)
    assert [(d["split"], d["format"], d["classes"], d["cache"]) for d in got.summary] == [
        ("train", fmt, 3, "built"), ("val", fmt, 2, "built"), ("test", fmt, 1, "built")]
    placed = []
    kept = mi.load_mini_imagenet(tmp_path / "data", strict=False, cache_dir=tmp_path / "c", keep=("train", "test"),
                                 place=lambda x: placed.append(x.shape) or "on device")
    assert kept.train == "on device" and kept.test == "on device" and kept.val is None
    assert sorted(placed) == sorted([want[0].shape, want[2].shape])
    assert [d["cache"] for d in kept.summary] == ["hit"] * 3 and kept.summary[1]["classes"] == 2


def test_data_root_or_dataset_folder(tmp_path, monkeypatch):
    want = _write_all(tmp_path / "root" / "mini_imagenet", "pickle")  # JMAML_DATA_DIR = tmp_path / "root"
    for data_dir in (None, tmp_path / "root", tmp_path / "root" / "mini_imagenet"):
        got = mi.load_mini_imagenet_split("test", data_dir, strict=False)
        np.testing.assert_array_equal(got.images, want[2])
    # the default cache is the per-user cache, not the data folder
    assert got.summary["cache_path"].startswith(str(tmp_path / "xdg" / "jmaml" / "mini_imagenet"))
    assert not any(p.suffix == ".npz" for p in (tmp_path / "root").rglob("*"))


def test_cache_files_follow_the_umask(tmp_path):
    _write_pickle(tmp_path, "val", _images(2), LABELS)
    old = os.umask(0o027)
    try:
        got = mi.load_mini_imagenet_split("val", tmp_path, strict=False, cache_dir=tmp_path / "c")
    finally:
        os.umask(old)
    assert os.stat(got.summary["cache_path"]).st_mode & 0o777 == 0o640


# ---------------------------------------------------------------- what a researcher gets wrong


@pytest.mark.parametrize("fmt", ["csv", "pickle"])
def test_overlapping_splits_are_an_error(tmp_path, fmt):
    _write_all(tmp_path, fmt, labels=(("n01", "n02", "n03"), ("n04", "n05"), ("n02",)))
    with pytest.raises(JmamlError, match=r"miniImageNet splits overlap: class n02 is in both train and test "
                                         r"\(1 shared classes\)"):
        mi.load_mini_imagenet(tmp_path, strict=False, cache_dir=tmp_path / "c")
    if fmt == "csv":
        assert not (tmp_path / "c").exists()  # found from the CSVs, before anything is converted


@pytest.mark.parametrize("fmt", ["csv", "pickle"])
def test_changed_split_with_old_dates_is_seen(tmp_path, fmt):
    d = tmp_path / "data"
    first = _write_all(d, fmt)
    got = mi.load_mini_imagenet(d, strict=False, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(got.test, first[2])
    source = d / ("test.csv" if fmt == "csv" else "mini-imagenet-cache-test.pkl")
    stat = source.stat()
    write = _write_csv_split if fmt == "csv" else _write_pickle
    second = write(d, "test", _images(99, 6), ["c9"])  # another split, unpacked with the old dates
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    got = mi.load_mini_imagenet(d, strict=False, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(got.test, second)
    assert [s["cache"] for s in got.summary] == ["hit", "hit", "built"]
    assert len(_cache_names(tmp_path / "c")) == 4  # each cache named by its source's digest
    if fmt == "csv":  # an image replaced inside images/, with the old date, is seen too
        image = d / "images" / "c900000002.png"
        stat = image.stat()
        Image.fromarray(np.full((84, 84, 3), 7, np.uint8)).save(image)
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        got = mi.load_mini_imagenet_split("test", d, strict=False, cache_dir=tmp_path / "c")
        assert got.summary["cache"] == "built" and (got.images[0, 2] == 7).all()


def test_both_formats_in_one_folder(tmp_path):
    want_csv = _write_all(tmp_path, "csv", seed=0)
    want_pkl = _write_all(tmp_path, "pickle", seed=10)
    with pytest.raises(JmamlError, match=r"holds both the CSV layout \(train\.csv, val\.csv, test\.csv\) and the "
                                         r"pickles \(mini-imagenet-cache-train\.pkl, .*data_format='csv'"):
        mi.load_mini_imagenet(tmp_path, strict=False, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()
    for fmt, want in (("csv", want_csv), ("pickle", want_pkl)):
        got = mi.load_mini_imagenet(tmp_path, data_format=fmt, strict=False, cache_dir=tmp_path / "c")
        np.testing.assert_array_equal(got.train, want[0])
        assert {s["format"] for s in got.summary} == {fmt}
    # one split in each format is refused as well
    (tmp_path / "val.csv").unlink()
    with pytest.raises(JmamlError, match="holds both"):
        mi.load_mini_imagenet_split("train", tmp_path, strict=False)


@pytest.mark.parametrize("fmt", ["csv", "pickle"])
def test_missing_or_broken_validation_split_is_reported_first(tmp_path, fmt):
    _write_all(tmp_path, fmt)
    val = tmp_path / ("val.csv" if fmt == "csv" else "mini-imagenet-cache-val.pkl")
    val.unlink()
    with pytest.raises(JmamlError, match=rf"has no {val.name} \(the val split, {fmt} format\)"):
        mi.load_mini_imagenet(tmp_path, strict=False, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # train was not converted first
    if fmt == "pickle":
        data = (tmp_path / "mini-imagenet-cache-test.pkl").read_bytes()
        val.write_bytes(data[: len(data) // 2])
        with pytest.raises(JmamlError, match=r"mini-imagenet-cache-val\.pkl: truncated"):
            mi.load_mini_imagenet(tmp_path, strict=False, cache_dir=tmp_path / "c")
        val.write_bytes(b"")
        with pytest.raises(JmamlError, match=r"mini-imagenet-cache-val\.pkl: empty"):
            mi.load_mini_imagenet(tmp_path, strict=False, cache_dir=tmp_path / "c")
        assert not (tmp_path / "c").exists()


def test_strict_counts(tmp_path):
    _write_pickle(tmp_path, "test", _images(5), LABELS)
    with pytest.raises(JmamlError, match=r"test has 3 classes x 6 images, the Ravi & Larochelle split "
                                         r"has 20 x 600; pass strict=False"):
        mi.load_mini_imagenet_split("test", tmp_path, cache_dir=tmp_path / "c")
    _write_csv_split(tmp_path / "csv", "test", _images(5), LABELS)
    with pytest.raises(JmamlError, match=r"test has 3 classes x 6 images"):
        mi.load_mini_imagenet_split("test", tmp_path / "csv", cache_dir=tmp_path / "c2")
    assert not (tmp_path / "c2").exists()  # CSV counts are checked before converting


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(JmamlError, match=r"miniImageNet folder .*nothere does not exist; miniImageNet "
                                         r"has no free download"):
        mi.load_mini_imagenet_split("train", tmp_path / "nothere")
    (tmp_path / "d").mkdir()
    with pytest.raises(JmamlError, match=r"has no val\.csv \(the val split, csv format\)"):
        mi.load_mini_imagenet_split("val", tmp_path / "d")
    with pytest.raises(JmamlError, match=r"3 miniImageNet splits are missing or broken: .*train\.csv.*\| .*val\.csv"):
        mi.load_mini_imagenet(tmp_path / "d")


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
    pkl.write_bytes(data[: len(data) // 2] + b".")  # truncated, yet ending like a pickle
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
    with pytest.raises(JmamlError, match="unknown miniImageNet data_format 'jpeg'; use one of csv, pickle"):
        mi.load_mini_imagenet_split("val", tmp_path, data_format="jpeg")


def test_cache_reader_round_trip(tmp_path):
    """``cache.read_npz`` against ``np.load``: every dtype and layout the caches hold, compressed or not,
    each array 64-byte aligned; a truncated member is an error (the cache is then rebuilt)."""
    arrays = {"u8": _images(3, 2), "fortran": np.asfortranarray(np.arange(24.0).reshape(4, 6)),
              "text": np.asarray(["120x100", "84x85"]), "empty": np.zeros((0, 3), np.int64), "scalar": np.int64(7)}
    for compress in (False, True):
        path = paths.save_npz_atomic(tmp_path / f"c{compress}.npz", arrays, compress=compress)
        got = cache.read_npz(path, list(arrays))
        with np.load(path) as want:
            for key in arrays:
                assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
                np.testing.assert_array_equal(got[key], want[key], err_msg=key)
                assert got[key].ctypes.data % cache.ALIGN == 0 or got[key].size == 0, key
    data = (tmp_path / "cFalse.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises((EOFError, zipfile.BadZipFile)):
        cache.read_npz(tmp_path / "cut.npz", ["u8"])


def test_loaded_images_go_to_a_cpu_device_without_a_copy(tmp_path):
    """Built or read from the cache, a split's images sit on a 64-byte boundary, so that
    ``jax.device_put`` on the CPU uses them in place: the data is held once, not twice."""
    _write_pickle(tmp_path / "data", "train", _images(1), LABELS)
    for status in ("built", "hit"):
        got = mi.load_mini_imagenet_split("train", tmp_path / "data", strict=False, cache_dir=tmp_path / "c")
        assert got.summary["cache"] == status
        placed = jax.device_put(got.images, jax.devices("cpu")[0])
        assert placed.unsafe_buffer_pointer() == got.images.ctypes.data, status


def test_training_does_not_hold_the_test_split(tmp_path, monkeypatch):
    """The mini workload checks all three splits and keeps only the training split on the device; the
    test split (already checked, its episode validated from its shape) is read again, from its cache,
    when the meta-test asks for it."""
    from jmaml.experiment.configs import get_config
    from jmaml.experiment.workloads import Deferred, make_workload

    monkeypatch.setattr(mi, "CLASSES", {"train": 5, "val": 5, "test": 4})
    monkeypatch.setattr(mi, "IMAGES_PER_CLASS", 6)
    labels = tuple(tuple(f"{p}{i}" for i in range(n)) for p, n in zip("abc", (5, 5, 4)))
    want = _write_all(tmp_path / "data", "pickle", labels=labels)
    reads = []
    real = mi.load_source
    monkeypatch.setattr(mi, "load_source", lambda source, **kw: reads.append(source.split) or real(source, **kw))
    cfg = get_config("mini-5w1s", {"data_dir": str(tmp_path / "data"), "ways": 4, "queries": 2,
                                   "eval_tasks": 4, "eval_batch": 2})
    workload = make_workload(cfg)
    assert sorted(reads) == ["test", "train", "val"] and isinstance(workload.test_data, Deferred)
    np.testing.assert_array_equal(workload.train_data, want[0])
    np.testing.assert_array_equal(workload.held_out(), want[2])
    assert sorted(reads) == ["test", "test", "train", "val"]
    with pytest.raises(JmamlError, match="4 classes"):  # the deferred split's episode is still checked up front
        make_workload(get_config("mini-5w1s", {"data_dir": str(tmp_path / "data"), "queries": 2}))
