"""Omniglot: the paper protocol on the real data, the packed-file checks, download and conversion."""

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jmaml.data import omniglot as og
from jmaml.data import omniglot_archive as oa
from jmaml.data import paths
from jmaml.errors import JmamlError


@pytest.fixture(autouse=True)
def _private_data_root(tmp_path, monkeypatch):
    """Never touch the user's data or cache: both default roots are fresh temporary folders."""
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "root"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


# ---------------------------------------------------------------- the protocol on the real data


def test_split_sizes_shapes_and_range(omniglot):
    assert omniglot.train.shape == (4800, 20, 28, 28, 1)
    assert omniglot.test.shape == (1692, 20, 28, 28, 1)
    assert omniglot.val.shape == (0, 20, 28, 28, 1)
    for a in omniglot[:3]:
        assert a.dtype == np.uint8  # 4x smaller than float32 on the host and the device
    for a in (omniglot.train, omniglot.test):
        assert a.min() == 0 and a.max() == 255
        assert 0.02 < a.mean() / 255 < 0.2  # ink = 255 is the minority (about 8% at 105x105)
    assert [d["classes"] for d in omniglot.summary] == [4800, 0, 1692]
    assert [d["images"] for d in omniglot.summary] == [96000, 0, 33840]
    assert {(d["format"], d["image_size"], d["resized"]["count"]) for d in omniglot.summary} == {
        ("omniglot-packed", "28x28x1", 0)}


def test_uint8_is_the_quantised_box_filter(omniglot_dir, omniglot):
    """The cached uint8 characters are round(255 * box-filtered ink), checked on a few real characters."""
    ink = oa.read_packed(omniglot_dir / "background.npz")[:5]
    want = np.rint(og.resize_images(ink, 28, "box") * 255).astype(np.uint8)
    cache_dir = Path(omniglot.summary[0]["cache_path"]).parent
    chars = og.load_characters(omniglot_dir, download=False, cache_dir=cache_dir)
    assert chars.cached.status == "hit"
    np.testing.assert_array_equal(chars.images[:5], want)
    assert list(chars.names[:2]) == ["Alphabet_of_the_Magi/character01", "Alphabet_of_the_Magi/character02"]


def test_rotations_rotate(omniglot):
    x = omniglot.train[:40, :, :, :, 0].reshape(10, 4, 20, 28, 28)  # 10 characters x 4 rotations
    for k in range(1, 4):
        np.testing.assert_array_equal(x[:, k], np.rot90(x[:, 0], k, axes=(2, 3)))
        assert not np.array_equal(x[:, k], x[:, 0])
    t = omniglot.test[:8, 0, :, :, 0]
    np.testing.assert_array_equal(t[1], np.rot90(t[0]))


def test_cache_is_keyed_on_content_and_other_seeds_split_disjointly(omniglot, omniglot_dir, omniglot_cache,
                                                                    tmp_path, monkeypatch):
    (cache,) = omniglot_cache.iterdir()  # named by its source, size, filter and the files' digest
    assert cache.name.startswith("omniglot-28px-box-") and cache.suffix == ".npz"
    assert omniglot.summary[0]["cache_path"] == str(cache)
    # the data root holding omniglot/ names the same data as the Omniglot folder itself, as the
    # argument and as JMAML_DATA_DIR
    monkeypatch.setenv(paths.ENV_VAR, str(omniglot_dir.parent))
    for data_dir in (omniglot_dir.parent, None):
        again = og.load_omniglot(data_dir, cache_dir=omniglot_cache, download=False)
        np.testing.assert_array_equal(again.test, omniglot.test)
        assert [d["cache"] for d in again.summary] == ["hit"] * 3
    # a folder named explicitly must hold the data: a wrong path is an error, not the cache
    with pytest.raises(JmamlError, match="nowhere does not exist"):
        og.load_omniglot(tmp_path / "nowhere", cache_dir=omniglot_cache, download=False)
    other = og.load_omniglot(None, cache_dir=omniglot_cache, download=False, seed=1, val_classes=400)
    assert [len(a) for a in other[:3]] == [4400, 400, 1692]
    assert not np.array_equal(other.test[:4], omniglot.test[:4])
    assert len(list(omniglot_cache.iterdir())) == 1  # one cache serves every seed and validation size


def _copy_real(omniglot_dir, folder):
    folder.mkdir(parents=True)
    for split in oa.SPLITS:
        (folder / f"{split}.npz").write_bytes((omniglot_dir / f"{split}.npz").read_bytes())
    return folder


@pytest.mark.parametrize("damage", ["flipped pixel", "truncated", "zero bytes"])
def test_changed_or_corrupt_source_with_a_warm_cache_and_old_dates(tmp_path, omniglot_dir, damage):
    data = _copy_real(omniglot_dir, tmp_path / "data")
    cache_dir = tmp_path / "c"
    og.load_characters(data, cache_dir=cache_dir, download=False)
    (built,) = cache_dir.iterdir()
    bg = data / "background.npz"
    stat = bg.stat()
    if damage == "flipped pixel":
        a = _real_arrays(omniglot_dir)
        a["images_packed"] = a["images_packed"].copy()
        a["images_packed"][7, 100] ^= 4
        with open(bg, "wb") as f:
            np.savez(f, **a)
    else:
        bg.write_bytes(bg.read_bytes()[: stat.st_size // 2] if damage == "truncated" else b"")
    os.utime(bg, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as after `cp -p` / `tar -x`: old dates
    expect = "sha256 mismatch" if damage == "flipped pixel" else "cannot read it as .npz"
    with pytest.raises(JmamlError, match=rf"background\.npz: {expect}"):
        og.load_characters(data, cache_dir=cache_dir, download=False)
    assert list(cache_dir.iterdir()) == [built]  # the old cache is not served, and nothing new is written


def test_cache_files_follow_the_umask(tmp_path, omniglot_dir):
    old = os.umask(0o022)
    try:
        chars = og.load_characters(omniglot_dir, cache_dir=tmp_path / "c", download=False)
    finally:
        os.umask(old)
    assert chars.cached.status == "built"
    assert chars.cached.path.stat().st_mode & 0o777 == 0o644


def test_default_cache_is_the_per_user_cache_not_the_data_folder(tmp_path, omniglot_dir, monkeypatch):
    data = _copy_real(omniglot_dir, tmp_path / "root" / "omniglot")  # JMAML_DATA_DIR = tmp_path / "root"
    chars = og.load_characters(None, download=False)
    assert chars.source == data and chars.cached.status == "built"
    assert chars.cached.path.parent == tmp_path / "xdg" / "jmaml" / "omniglot"
    assert sorted(p.name for p in data.iterdir()) == ["background.npz", "evaluation.npz"]


def test_overlapping_characters_are_an_error():
    ids = np.zeros((1623, 20, 2, 2), np.uint8)
    ids[:, :, 0, 0] = (np.arange(1623) % 256)[:, None]  # distinct drawings per character
    ids[:, :, 1, 1] = (np.arange(1623) // 256)[:, None]
    names = np.asarray([f"A{i // 20}/character{i % 20 + 1:02d}" for i in range(1623)])
    og.split_characters(ids, names=names)  # the real protocol is disjoint
    perm = np.random.default_rng(0).permutation(1623)
    train_char, test_char = perm[0], perm[1300]
    dup = names.copy()
    dup[test_char] = names[train_char]  # e.g. evaluation.npz holding a background character
    with pytest.raises(JmamlError, match=rf"Omniglot splits overlap: character {names[train_char]} "
                                         rf"\(#{train_char}\) in train and character {names[train_char]} "
                                         rf"\(#{test_char}\) in test have the same name"):
        og.split_characters(ids, names=dup)
    same = ids.copy()
    same[test_char] = ids[train_char]
    with pytest.raises(JmamlError, match=rf"character #{train_char} in train and character #{test_char} in "
                                         "test have identical drawings"):
        og.split_characters(same)


def test_split_characters_protocol():
    ids = np.broadcast_to(np.arange(1623, dtype=np.int32)[:, None, None, None], (1623, 20, 2, 2))
    s = og.split_characters(ids, seed=0, val_classes=400)
    chars = [set(a[::4, 0, 0, 0, 0].tolist()) for a in s[:3]]
    assert [len(c) for c in chars] == [1100, 100, 423]
    assert set().union(*chars) == set(range(1623))
    assert sum(len(c) for c in chars) == 1623  # disjoint
    # rotations of a character stay in one split, next to each other
    np.testing.assert_array_equal(s.train[0::4, 0, 0, 0, 0], s.train[3::4, 0, 0, 0, 0])
    s0 = og.split_characters(ids, seed=0)
    assert chars[2] == set(s0.test[::4, 0, 0, 0, 0].tolist())  # the test set does not depend on val
    assert set(s0.train[::4, 0, 0, 0, 0].tolist()) == chars[0] | chars[1]
    s1 = og.split_characters(ids, seed=1)
    assert set(s1.test[::4, 0, 0, 0, 0].tolist()) != chars[2]


@pytest.mark.parametrize("resample", ["box", "lanczos", "nearest"])
def test_resize_matches_pil(resample):
    rng = np.random.default_rng(0)
    x = (rng.random((3, 105, 105)) < 0.1).astype(np.uint8)
    got = og.resize_images(x, 28, resample)
    filt = Image.Resampling[resample.upper()]
    want = np.stack([np.asarray(Image.fromarray(a.astype(np.float32), "F").resize((28, 28), filt))
                     for a in x])
    np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(JmamlError, match="val_classes must be a multiple of 4"):
        og.load_omniglot(val_classes=10)
    with pytest.raises(JmamlError, match="unknown resample filter 'cubic'"):
        og.load_characters(resample="cubic")
    with pytest.raises(JmamlError, match="image_size must be an integer >= 1"):
        og.load_omniglot(image_size=0)


# ---------------------------------------------------------------- packed files: missing, corrupt


def test_missing_data_dir(tmp_path):
    with pytest.raises(JmamlError, match=r"Omniglot folder .*nothere does not exist.*download=True"):
        og.load_omniglot(tmp_path / "nothere", cache_dir=tmp_path / "cache", download=False)


def test_incomplete_data_dir(tmp_path, omniglot_dir):
    (tmp_path / "data").mkdir()
    os.symlink(omniglot_dir / "background.npz", tmp_path / "data" / "background.npz")
    with pytest.raises(JmamlError, match=r"lacks evaluation\.npz"):
        og.load_omniglot(tmp_path / "data", cache_dir=tmp_path / "cache", download=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def _real_arrays(omniglot_dir, split="background"):
    with np.load(omniglot_dir / f"{split}.npz") as d:
        return {k: d[k] for k in d.files}


def test_checksum_mismatch(tmp_path, omniglot_dir):
    a = _real_arrays(omniglot_dir)
    a["images_packed"] = a["images_packed"].copy()
    a["images_packed"][123, 45] ^= 1  # one pixel of one drawing
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "background.npz", **a)
    os.symlink(omniglot_dir / "evaluation.npz", tmp_path / "data" / "evaluation.npz")
    with pytest.raises(JmamlError) as e:
        og.load_omniglot(tmp_path / "data", cache_dir=tmp_path / "cache", download=False)
    msg = str(e.value)
    assert "background.npz: sha256 mismatch for Omniglot background" in msg
    assert oa.FILE_SHA256["background"] in msg and oa.CONTENT_SHA256["background"] in msg
    assert "delete" in msg and "download=True" in msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_rebuilt_file_with_same_content_is_accepted(tmp_path, omniglot_dir):
    a = _real_arrays(omniglot_dir, "evaluation")
    np.savez(tmp_path / "evaluation.npz", **a)  # a rebuild: other file hash, same content
    images = oa.read_packed(tmp_path / "evaluation.npz")
    assert images.shape == (659, 20, 105, 105) and images.dtype == np.uint8


def test_truncated_packed_file(tmp_path, omniglot_dir):
    data = (omniglot_dir / "evaluation.npz").read_bytes()
    (tmp_path / "evaluation.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(JmamlError, match=r"evaluation\.npz: cannot read it as \.npz"):
        oa.read_packed(tmp_path / "evaluation.npz")


def test_wrong_keys(tmp_path):
    np.savez(tmp_path / "background.npz", images=np.zeros(3))
    with pytest.raises(JmamlError, match=r"not a packed Omniglot file, keys \['alphabet'"):
        oa.read_packed(tmp_path / "background.npz", verify=False)


# ---------------------------------------------------------------- archives: conversion, download


def _write_zip(path: Path, split: str, chars, *, drop=None) -> Path:
    """An official-layout archive: chars = [(alphabet, character number, file id, ink [20, H, W])]."""
    with zipfile.ZipFile(path, "w") as zf:
        for alphabet, num, oid, ink in chars:
            for d in range(1, 21):
                name = f"images_{split}/{alphabet}/character{num:02d}/{oid:04d}_{d:02d}.png"
                if name == drop:
                    continue
                buf = io.BytesIO()
                Image.fromarray(~ink[d - 1].astype(bool)).save(buf, "PNG")  # black strokes, mode "1"
                zf.writestr(name, buf.getvalue())
    return path


def _real_subset(omniglot_dir, alphabets=(0, 1), per_alphabet=2):
    """A few real characters (packed rows and metadata) of the first background alphabets."""
    a = _real_arrays(omniglot_dir)
    rows = np.concatenate([np.flatnonzero((a["alphabet"] == al) & (a["char_in_alphabet"] <= per_alphabet))
                           for al in alphabets])
    ink = np.unpackbits(a["images_packed"][rows], axis=1, count=105 * 105).reshape(-1, 20, 105, 105)
    chars = [(str(a["alphabets"][a["alphabet"][r]]), int(a["char_in_alphabet"][r]), int(a["orig_id"][r]),
              ink[i]) for i, r in enumerate(rows[::20])]
    return chars, {k: v[rows] for k, v in a.items() if v.shape[:1] == a["alphabet"].shape}, a


def test_convert_zip_reproduces_packed_rows(tmp_path, omniglot_dir):
    chars, want, full = _real_subset(omniglot_dir)
    chars = chars[::-1]  # member order in the archive must not matter
    z = _write_zip(tmp_path / "images_background.zip", "background", chars)
    out = oa.convert_omniglot_zip(z, tmp_path / "out" / "background.npz")
    with np.load(out) as d:
        assert sorted(d.files) == sorted(oa.KEYS)
        for k in ("images_packed", "char_in_alphabet", "drawing", "orig_id"):
            np.testing.assert_array_equal(d[k], want[k], err_msg=k)
        np.testing.assert_array_equal(d["character"], np.repeat(np.arange(4), 20))
        assert list(d["alphabets"]) == list(full["alphabets"][:2]) and str(d["split"]) == "background"
        assert d["image_shape"].tolist() == [105, 105] and d["image_shape"].dtype == np.int16
    images = oa.read_packed(out, verify=False)
    assert images.shape == (4, 20, 105, 105)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["background.npz"]


def test_download_and_convert_tiny_archives(tmp_path):
    rng = np.random.default_rng(0)
    urls, made = {}, {}
    for split, names in (("background", ["Beta", "Alpha"]), ("evaluation", ["Gamma"])):
        made[split] = [(n, c, 10 * i + c, rng.random((20, 105, 105)) < 0.1)
                       for i, n in enumerate(names) for c in (1, 2, 3)]
        urls[split] = _write_zip(tmp_path / f"src_{split}.zip", split, made[split]).as_uri()
    got = oa.fetch_omniglot(tmp_path / "data", urls=urls)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "background.npz", "evaluation.npz", "images_background.zip", "images_evaluation.zip"]
    for split, chars in made.items():
        want = sorted(chars, key=lambda c: (c[0], c[1]))  # rows sorted by alphabet, then character
        np.testing.assert_array_equal(oa.read_packed(got[split], verify=False),
                                      np.stack([c[3] for c in want]).astype(np.uint8))
    with pytest.raises(JmamlError, match="sha256 mismatch for Omniglot background"):
        oa.read_packed(got["background"])  # tiny archives are not the real data


def test_no_network(tmp_path):
    urls = {s: f"http://127.0.0.1:9/images_{s}.zip" for s in oa.SPLITS}
    with pytest.raises(JmamlError) as e:
        oa.fetch_omniglot(tmp_path / "data", urls=urls)
    msg = str(e.value)
    assert "could not download http://127.0.0.1:9/images_background.zip" in msg
    assert oa.URLS["background"] in msg and oa.URLS["evaluation"] in msg and "by hand" in msg
    assert list((tmp_path / "data").iterdir()) == []  # no partial download left


def test_corrupt_archive_leaves_nothing(tmp_path, omniglot_dir):
    chars, _, _ = _real_subset(omniglot_dir, alphabets=(0,), per_alphabet=1)
    z = _write_zip(tmp_path / "good.zip", "background", chars)
    data = z.read_bytes()
    (tmp_path / "truncated.zip").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(JmamlError, match=r"images_background\.zip: corrupt or truncated Omniglot archive"):
        oa.fetch_omniglot(tmp_path / "data", urls={"background": (tmp_path / "truncated.zip").as_uri()})
    assert list((tmp_path / "data").iterdir()) == []  # the bad download is deleted, no npz, no temp


def test_archive_with_missing_member_leaves_nothing(tmp_path, omniglot_dir):
    chars, _, _ = _real_subset(omniglot_dir, alphabets=(0,), per_alphabet=1)
    alphabet, num, oid, _ = chars[0]
    drop = f"images_background/{alphabet}/character{num:02d}/{oid:04d}_07.png"
    z = _write_zip(tmp_path / "partial.zip", "background", chars, drop=drop)
    with pytest.raises(JmamlError, match=rf"{alphabet}/character01 has drawings \[1, 2, 3, 4, 5, 6, 8,"):
        oa.fetch_omniglot(tmp_path / "data", urls={"background": z.as_uri()})
    assert list((tmp_path / "data").iterdir()) == []


def test_archive_with_wrong_structure(tmp_path):
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as zf:
        zf.writestr("omniglot/a/b.png", b"x")
    with pytest.raises(JmamlError, match=r"unexpected members such as 'omniglot/a/b\.png'"):
        oa.convert_omniglot_zip(tmp_path / "images_background.zip", tmp_path / "background.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_background.zip"]


def test_failed_write_leaves_nothing(tmp_path, omniglot_dir, monkeypatch):
    chars, _, _ = _real_subset(omniglot_dir, alphabets=(0,), per_alphabet=1)
    z = _write_zip(tmp_path / "images_background.zip", "background", chars)

    def disk_full(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(OSError, match="No space left"):
        oa.convert_omniglot_zip(z, tmp_path / "out" / "background.npz")
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- paths


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("JMAML_DATA_DIR", str(tmp_path / "env"))
    assert paths.resolve_data_dir(tmp_path / "arg", "omniglot") == tmp_path / "arg"
    assert paths.resolve_data_dir(None, "omniglot") == tmp_path / "env" / "omniglot"
    monkeypatch.delenv("JMAML_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.resolve_data_dir() == tmp_path / "xdg" / "jmaml"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.default_data_root() == tmp_path / "home" / ".cache" / "jmaml"


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with paths.atomic_write(target) as f:
            f.write(b"new, half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    with paths.atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
