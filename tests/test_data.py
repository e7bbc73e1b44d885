import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fed8.config import DataConfig
from fed8.data import bundled_mnist10k_dir, load_splits, to_float
from fed8.errors import DataError


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx(root: Path, prefix: str, n: int, *, gz=False, rng=None, label_max=10):
    rng = rng or np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, label_max, n, dtype=np.uint8)
    for stem, arr, magic in ((f"{prefix}-images-idx3-ubyte", x, 2051), (f"{prefix}-labels-idx1-ubyte", y, 2049)):
        data = idx_bytes(arr, magic)
        if gz:
            (root / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return x, y


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


# -- bundled MNIST-10k -----------------------------------------------------------------
def test_mnist10k_split_and_licence():
    s = load_splits(cfg())
    assert (len(s.train), len(s.eval)) == (8000, 2000)
    assert s.train.shape == (1, 28, 28) and s.train.num_classes == 10
    counts = torch.bincount(torch.cat([s.train.labels, s.eval.labels]), minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # from the dataset README
    readme = (bundled_mnist10k_dir() / "README.md").read_text()
    assert "Creative Commons Attribution-Share Alike 3.0" in readme
    # the documented split: default_rng(0).permutation(10000), first 8000 train
    from fed8.data._idx import read_idx
    y = read_idx(bundled_mnist10k_dir() / "t10k-labels-idx1-ubyte.gz", magic=2049)
    perm = np.random.default_rng(0).permutation(10000)
    assert np.array_equal(s.train.labels.numpy(), y[perm[:8000]])
    assert np.array_equal(s.eval.labels.numpy(), y[perm[8000:]])


def test_to_float_range():
    x = to_float(torch.tensor([0, 255], dtype=torch.uint8).reshape(1, 1, 1, 2))
    assert x.flatten().tolist() == [-1.0, 1.0]


def test_subset():
    assert len(load_splits(cfg(subset=100)).train) == 100


# -- idx --------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder(tmp_path, gz):
    x, y = write_idx(tmp_path, "train", 50, gz=gz)
    xt, yt = write_idx(tmp_path, "t10k", 20, gz=gz, rng=np.random.default_rng(1))
    s = load_splits(cfg(source="idx", path=str(tmp_path)))
    assert len(s.train) == 50 and len(s.eval) == 20
    assert np.array_equal(s.train.images[:, 0].numpy(), x) and np.array_equal(s.eval.labels.numpy(), yt)


def test_idx_without_test_holds_out(tmp_path):
    write_idx(tmp_path, "train", 50)
    s = load_splits(cfg(source="idx", path=str(tmp_path), eval_fraction=0.2))
    assert (len(s.train), len(s.eval)) == (40, 10)


def test_idx_bad_magic(tmp_path):
    write_idx(tmp_path, "train", 5)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(struct.pack(">i", 1234) + p.read_bytes()[4:])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: bad magic number 1234.*2051"):
        load_splits(cfg(source="idx", path=str(tmp_path)))


def test_idx_truncated(tmp_path):
    write_idx(tmp_path, "train", 5)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: file truncated"):
        load_splits(cfg(source="idx", path=str(tmp_path)))


def test_idx_truncated_gzip(tmp_path):
    write_idx(tmp_path, "train", 5, gz=True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(DataError, match=r"idx3-ubyte\.gz: cannot read"):
        load_splits(cfg(source="idx", path=str(tmp_path)))


def test_idx_label_count_mismatch_and_missing(tmp_path):
    write_idx(tmp_path, "train", 5)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4), 2049))
    with pytest.raises(DataError, match="5 images but train-labels-idx1-ubyte has 4 labels"):
        load_splits(cfg(source="idx", path=str(tmp_path)))
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        load_splits(cfg(source="idx", path=str(tmp_path)))
    with pytest.raises(DataError, match="data.path is empty"):
        load_splits(cfg(source="idx"))
    with pytest.raises(DataError, match="does not exist"):
        load_splits(cfg(source="idx", path=str(tmp_path / "nope")))


def test_keys_the_source_would_ignore_are_refused_when_a_run_is_created(tmp_path):
    """A data.path without its data.source would train on the bundled MNIST; an image_size only folders read.
    Refused for a new run; a run directory made before the check still resumes."""
    import fed8
    from fed8.data import refuse_unread_keys
    from fed8.rundir import RunDir

    with pytest.raises(DataError, match=r"data.path = '.*' is not read with data.source = 'mnist10k'.*idx, cifar10"):
        refuse_unread_keys(cfg(path=str(tmp_path)))
    write_idx(tmp_path, "train", 5)
    write_idx(tmp_path, "t10k", 3)
    with pytest.raises(DataError, match="data.image_size = 64 applies only to data.source = 'folder'"):
        refuse_unread_keys(cfg(source="idx", path=str(tmp_path), image_size=64))
    refuse_unread_keys(cfg(source="idx", path=str(tmp_path), image_size=32))  # the default: fine
    assert len(load_splits(cfg(source="idx", path=str(tmp_path), image_size=64)).train) == 5  # loading stays lenient
    small = ["data.subset=100", "data.num_clients=2", "train.rounds=1", "eval.every=0", "quantize.enabled=false"]
    stray = fed8.load_config(None, small + [f"data.path={tmp_path}"])
    with pytest.raises(DataError, match="is not read with data.source = 'mnist10k'"):
        fed8.run(stray, out=tmp_path / "new", report=False)
    assert not (tmp_path / "new").exists()
    RunDir.create(tmp_path / "old", stray)  # as fed8 wrote it before the check
    assert fed8.run(resume=tmp_path / "old", report=False).summary["rounds"] == 1


# -- cifar10 ----------------------------------------------------------------------------
def write_cifar(root: Path, name: str, n: int, rng, label_max=10) -> np.ndarray:
    rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
    rec[:, 0] = rng.integers(0, label_max, n)
    (root / name).write_bytes(rec.tobytes())
    return rec


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(0)
    r1 = write_cifar(tmp_path, "data_batch_1.bin", 7, rng)
    write_cifar(tmp_path, "data_batch_2.bin", 5, rng)
    rt = write_cifar(tmp_path, "test_batch.bin", 4, rng)
    s = load_splits(cfg(source="cifar10", path=str(tmp_path)))
    assert (len(s.train), len(s.eval), s.train.shape) == (12, 4, (3, 32, 32))
    assert s.train.classes[0] == "airplane"
    # channel planes: R plane first, row-major 32x32
    assert np.array_equal(s.train.images[0, 0].numpy().ravel(), r1[0, 1:1025])
    assert np.array_equal(s.train.images[0, 2].numpy().ravel(), r1[0, 2049:])
    assert s.eval.labels.tolist() == rt[:, 0].tolist()


def test_cifar10_errors(tmp_path):
    rng = np.random.default_rng(0)
    write_cifar(tmp_path, "data_batch_1.bin", 3, rng, label_max=100)
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x0c" + (tmp_path / "data_batch_1.bin").read_bytes()[1:])
    with pytest.raises(DataError, match=r"data_batch_1\.bin: label 12 of record 0 is out of range 0\.\.9"):
        load_splits(cfg(source="cifar10", path=str(tmp_path)))
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="not a whole number of 3073-byte"):
        load_splits(cfg(source="cifar10", path=str(tmp_path)))
    pickled = tmp_path / "py"
    pickled.mkdir()
    (pickled / "data_batch_1").write_bytes(b"\x80\x04junk")
    with pytest.raises(DataError, match="never unpickles"):
        load_splits(cfg(source="cifar10", path=str(pickled)))


# -- image folders ------------------------------------------------------------------------
def write_images(root: Path, classes: dict[str, int], mode="RGB", size=(10, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in classes.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i}.png")


def test_folder_rgb_and_resize(tmp_path):
    write_images(tmp_path, {"cat": 3, "dog": 2})
    s = load_splits(cfg(source="folder", path=str(tmp_path), image_size=16, eval_fraction=0.2))
    assert s.train.shape == (3, 16, 16) and s.train.classes == ("cat", "dog")
    assert len(s.train) + len(s.eval) == 5


def test_folder_train_test_grayscale(tmp_path):
    write_images(tmp_path / "train", {"a": 2, "b": 2}, mode="L")
    write_images(tmp_path / "test", {"a": 1, "b": 1}, mode="L")
    s = load_splits(cfg(source="folder", path=str(tmp_path), image_size=8))
    assert s.train.shape == (1, 8, 8) and (len(s.train), len(s.eval)) == (4, 2)
    assert s.eval.labels.tolist() == [0, 1]


def test_folder_errors(tmp_path):
    write_images(tmp_path, {"cat": 2})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: class folder has no images"):
        load_splits(cfg(source="folder", path=str(tmp_path)))
    (tmp_path / "empty").rmdir()
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image"):
        load_splits(cfg(source="folder", path=str(tmp_path)))


# -- npz ----------------------------------------------------------------------------------
def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 9, 9, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x_train=x, y_train=np.arange(6) % 3,
             x_test=x[:2] / 255.0, y_test=np.array([0, 2]))
    s = load_splits(cfg(source="npz", path=str(tmp_path / "a.npz")))
    assert s.train.shape == (3, 9, 9) and s.train.num_classes == 3
    assert np.array_equal(s.train.images.numpy(), x.transpose(0, 3, 1, 2))
    assert np.array_equal(s.eval.images.numpy(), x[:2].transpose(0, 3, 1, 2))
    np.savez(tmp_path / "b.npz", x_train=x[..., 0], y_train=np.arange(6))
    s = load_splits(cfg(source="npz", path=str(tmp_path / "b.npz"), eval_fraction=0.5))
    assert s.train.shape == (1, 9, 9) and len(s.train) == 3


def test_npz_errors(tmp_path):
    x = np.zeros((4, 5, 5), np.uint8)
    cases = {
        "missing": ({"x_train": x}, r"missing arrays \['y_train'\]"),
        "neg": ({"x_train": x, "y_train": np.array([0, 1, -1, 0])}, "label -1 out of range"),
        "floaty": ({"x_train": x, "y_train": np.zeros(4)}, "labels must be integers"),
        "count": ({"x_train": x, "y_train": np.zeros(3, int)}, "3 labels for 4 images"),
        "range": ({"x_train": x + 2.0, "y_train": np.zeros(4, int)}, r"must lie in \[0, 1\]"),
        "shape": ({"x_train": np.zeros((4, 5)), "y_train": np.zeros(4, int)}, "has shape"),
        "object": ({"x_train": np.array([None] * 4, dtype=object), "y_train": np.zeros(4, int)}, "pickle"),
    }
    for name, (arrays, match) in cases.items():
        p = tmp_path / f"{name}.npz"
        np.savez(p, **arrays)
        with pytest.raises(DataError, match=match):
            load_splits(cfg(source="npz", path=str(p)))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npz"):
        load_splits(cfg(source="npz", path=str(tmp_path / "junk.npz")))


# -- labels against the declared classes ----------------------------------------------------
def test_a_stray_label_is_refused_not_trained_as_a_new_class(tmp_path):
    x, y = write_idx(tmp_path, "train", 50)
    y = y.copy()
    y[7] = 200
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(y, 2049))
    with pytest.raises(DataError, match=r"label 200 is out of range 0\.\.9 \(10 classes\).*data.num_classes"):
        load_splits(cfg(source="idx", path=str(tmp_path)))
    s = load_splits(cfg(source="idx", path=str(tmp_path), num_classes=201))  # the user says so: allowed
    assert s.train.num_classes == 201


def test_npz_class_count_is_declared_or_plausible(tmp_path, caplog):
    x = np.zeros((4, 5, 5), np.uint8)
    np.savez(tmp_path / "huge.npz", x_train=x, y_train=np.array([0, 1, 100000, 1]))
    with pytest.raises(DataError, match="largest label is 100000 but only 3 distinct labels"):
        load_splits(cfg(source="npz", path=str(tmp_path / "huge.npz")))
    np.savez(tmp_path / "named.npz", x_train=x, y_train=np.array([0, 1, 1, 0]), classes=np.array(["cat", "dog", "owl"]))
    with caplog.at_level("WARNING", logger="fed8"):
        s = load_splits(cfg(source="npz", path=str(tmp_path / "named.npz"), eval_fraction=0.25))
    assert s.train.classes == ("cat", "dog", "owl")
    assert "1 of 3 classes have no training images: owl" in caplog.text
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.array([0, 1, 3, 0]), classes=np.array(["a", "b"]))
    with pytest.raises(DataError, match="label 3 is out of range 0..1"):
        load_splits(cfg(source="npz", path=str(tmp_path / "bad.npz")))


def test_single_class_data_is_refused(tmp_path):
    write_images(tmp_path / "one", {"cat": 3})
    with pytest.raises(DataError, match="1 distinct class.*needs at least 2"):
        load_splits(cfg(source="folder", path=str(tmp_path / "one")))
    np.savez(tmp_path / "one.npz", x_train=np.zeros((4, 5, 5), np.uint8), y_train=np.zeros(4, int))
    with pytest.raises(DataError, match="needs at least 2"):
        load_splits(cfg(source="npz", path=str(tmp_path / "one.npz")))


def test_npz_errors_never_suggest_pickle(tmp_path):
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError) as e:
        load_splits(cfg(source="npz", path=str(tmp_path / "random.npz")))
    assert "allow_pickle" not in str(e.value) and "never unpickles" in str(e.value)


def test_a_node_with_its_own_source_ignores_the_servers_folder_image_size(tmp_path):
    """The server reads folders at 64 px; a node brings an npz of 28x28 images: its data loads."""
    import fed8
    from fed8.stages.federation import load_node_data

    rng = np.random.default_rng(0)
    f = tmp_path / "node.npz"
    np.savez(f, x_train=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y_train=np.arange(20) % 2)
    cfg = fed8.load_config(None, ["data.source=folder", f"data.path={tmp_path}", "data.image_size=64",
                                  "model.name=mlp", "model.hidden=8"])
    model, data = load_node_data(cfg, str(f), client=0, source="npz")
    assert tuple(data.x_train.shape[1:]) == (1, 28, 28) and len(data.y_train) + len(data.y_test) == 20


def _natural_npz(tmp_path, n=120, clients=5, **extra):
    rng = np.random.default_rng(0)
    f = tmp_path / "nat.npz"
    owners = rng.integers(10, 10 + clients, n)
    np.savez(f, x_train=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), y_train=np.arange(n) % 3,
             x_test=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), y_test=np.arange(30) % 3,
             client_train=owners, **extra)
    return f, owners


def test_a_run_on_natural_clients_trains_each_on_its_own_images(tmp_path):
    import json

    import fed8

    f, owners = _natural_npz(tmp_path)
    sets = ["data.source=npz", f"data.path={f}", "data.partition=natural", "data.num_clients=5", "train.rounds=1",
            "quantize.enabled=false", "model.name=mlp", "model.hidden=8", "run.threads=1"]
    sizes = []
    for seed in (0, 1):
        r = fed8.run(fed8.load_config(None, sets + [f"run.seed={seed}"]), out=tmp_path / f"r{seed}", report=False)
        part = json.loads((r.run_dir / "partition.json").read_text())
        sizes.append([c["train_samples"] + c["test_samples"] for c in part["clients"]])
    assert sizes[0] == sizes[1] == np.bincount(owners - 10).tolist()  # by id, not drawn from the seed
    sub = load_splits(cfg(source="npz", path=str(f), subset=50, partition="natural")).train
    assert sub.owners is not None and len(sub.owners) == 50 and set(sub.owners.tolist()) <= set(owners.tolist())


def test_natural_clients_need_ids_from_the_data(tmp_path):
    from fed8.stages.federation import load_node_data

    plain = tmp_path / "plain.npz"
    np.savez(plain, x_train=np.zeros((20, 28, 28), np.uint8), y_train=np.arange(20) % 2)
    with pytest.raises(DataError, match="data.partition = 'natural' .*names none. Give an npz with a client_train"):
        load_splits(cfg(source="npz", path=str(plain), partition="natural"))
    with pytest.raises(DataError, match="'natural' .*mnist10k"):
        load_splits(cfg(partition="natural"))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((20, 28, 28), np.uint8), y_train=np.arange(20) % 2, client_train=np.zeros(19, int))
    with pytest.raises(DataError, match="one integer client id per training image; got 19 values"):
        load_splits(cfg(source="npz", path=str(bad)))
    import fed8  # a node's own files are its own client: the run's natural partition does not apply to them
    run = fed8.load_config(None, ["data.source=npz", f"data.path={bad}", "data.partition=natural", "model.name=mlp",
                                  "model.hidden=8"])
    _, data = load_node_data(run, str(plain), client=0, source="npz")
    assert len(data.y_train) + len(data.y_test) == 20


def test_a_folder_of_client_folders_is_a_natural_partition(tmp_path, caplog):
    import json

    import fed8

    write_images(tmp_path / "clients" / "site-b", {"cat": 3, "dog": 2}, mode="L")
    write_images(tmp_path / "clients" / "site-a", {"cat": 1, "emu": 4}, mode="L")  # classes need not match
    write_images(tmp_path / "test", {"cat": 2, "dog": 1, "emu": 1}, mode="L")
    s = load_splits(cfg(source="folder", path=str(tmp_path), image_size=8, partition="natural"))
    assert s.train.classes == ("cat", "dog", "emu") and len(s.eval) == 4
    assert s.train.owners.tolist() == [0] * 5 + [1] * 5  # site-a, then site-b: folder names in order
    assert s.train.labels.tolist() == [0, 2, 2, 2, 2, 0, 0, 0, 1, 1]
    r = fed8.run(fed8.load_config(None, ["data.source=folder", f"data.path={tmp_path}", "data.image_size=8",
                                         "data.partition=natural", "data.num_clients=2", "train.rounds=1",
                                         "quantize.enabled=false", "model.name=mlp", "model.hidden=8"]),
                 out=tmp_path / "run", report=False)
    hist = [c["label_histogram"] for c in json.loads((r.run_dir / "partition.json").read_text())["clients"]]
    assert hist == [[1, 0, 4], [3, 2, 0]]
    import logging

    with caplog.at_level(logging.WARNING, logger="fed8"):
        load_splits(cfg(source="folder", path=str(tmp_path), image_size=8, partition="iid"))
    assert "data.partition = 'iid' draws a new split instead; set data.partition = 'natural' (data.num_clients = 2)" \
        in caplog.text
    with pytest.raises(DataError, match="no client folders"):
        (tmp_path / "empty" / "clients").mkdir(parents=True)
        load_splits(cfg(source="folder", path=str(tmp_path / "empty"), image_size=8))
