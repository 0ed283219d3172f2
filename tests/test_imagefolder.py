"""An image folder read lazily through DataLoader workers: transforms, determinism, bad files."""
import numpy as np
import pytest
import torch

from compress.config.data import DataConfig
from compress.data import load_config_data
from compress.distributed import World
from compress.errors import UserError
from compress.loader import batches


def write_folder(root, images, labels, split, count, offset=0):
    from PIL import Image
    for i in range(offset, offset + count):
        d = root / split / f"class_{labels[i]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i}.png")


@pytest.fixture
def folder(tmp_path):
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = (bunch.images * 255 / 16).astype(np.uint8)
    write_folder(tmp_path, images, bunch.target, "train", 120)
    write_folder(tmp_path, images, bunch.target, "val", 40, offset=120)
    return tmp_path


def load(root, **kw):
    return load_config_data(DataConfig(name="imagefolder", root=str(root), image_size=16, **kw))


def all_batches(data, split="train", **kw):
    kw = {"shuffle": True, "seed": 3, "epoch": 1, "world": World(), "num_classes": data.num_classes, **kw}
    return list(batches(getattr(data, split), 32, **kw))


def test_lazy_split_shapes_and_preprocessing(folder):
    data = load(folder)
    assert data.input_shape == (1, 16, 16) and len(data.train) == 120 and len(data.test) == 40
    assert data.num_classes == 10
    x, y = data.test[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and 0 <= y < 10
    pre = data.preprocessing
    assert pre["scale"] == 1 / 255 and len(pre["mean"]) == 1 and pre["std"][0] > 0  # grey: measured


def test_augment_none_trains_on_the_test_transform(folder):
    """data.augment = "none" turns the random crops and flips off for image folders (digits, text): each
    training image is then exactly its test-time view, the same in every epoch."""
    from compress.imagefolder import open_image

    plain, auto = load(folder, augment="none"), load(folder)
    for index in (0, 5, 77):
        test_view = plain.test.transform(open_image(plain.train.items[index][0], 1))
        assert torch.equal(plain.train[(index, 123)][0], test_view)
        assert torch.equal(plain.train[(index, 456)][0], test_view)
        assert not torch.equal(auto.train[(index, 123)][0], test_view)  # auto: random crops and flips


def test_training_batches_are_the_same_with_and_without_workers(folder):
    data = load(folder)
    plain = all_batches(data)
    assert [len(y) for _, y in plain] == [32, 32, 32, 24]
    with_workers = all_batches(data, workers=2)
    for (xa, ya), (xb, yb) in zip(plain, with_workers):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)  # augmentation seeded per (epoch, sample)
    other_epoch = all_batches(data, epoch=2)
    assert not torch.equal(plain[0][0], other_epoch[0][0])


def test_each_rank_reads_only_its_share_of_every_batch(folder):
    data = load(folder)
    whole = all_batches(data)
    ranks = [all_batches(data, world=World(rank, 2)) for rank in (0, 1)]
    for b, (x, y) in enumerate(whole):
        assert len(ranks[0][b][1]) + len(ranks[1][b][1]) == len(y)
        assert torch.equal(torch.cat([ranks[0][b][1], ranks[1][b][1]]).sort().values, y.sort().values)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_named(folder, workers):
    (folder / "train" / "class_0" / "broken.png").write_bytes(b"nope")
    with pytest.raises(UserError, match=r"broken.png: not a readable image"):
        load(folder)  # measuring the grey statistics reads it already
    data = load(folder, mean=[0.5], std=[0.25])  # given statistics: found mid-epoch, and named
    with pytest.raises(UserError, match=r"broken.png: not a readable image") as e:
        all_batches(data, workers=workers)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_class_folders_must_match_between_splits(folder):
    (folder / "val" / "class_extra").mkdir()
    with pytest.raises(UserError, match="class folders differ from the training split's"):
        load(folder)


def test_colour_images_default_to_imagenet_statistics(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 12, 12, 3), dtype=np.uint8)
    labels = np.arange(20) % 2
    write_folder(tmp_path, images, labels, "train", 12)
    write_folder(tmp_path, images, labels, "test", 8, offset=12)
    data = load(tmp_path)
    assert data.input_shape == (3, 16, 16) and data.preprocessing["mean"] == [0.485, 0.456, 0.406]
    with pytest.raises(UserError, match="data.mean: 1 values for 3-channel images"):
        load(tmp_path, mean=[0.5], std=[0.2])


class StopAt(Exception):
    pass


def test_an_interrupted_run_on_streamed_images_resumes_bit_identically(folder, tmp_path):
    """Order, augmentation and worker seeds depend on (seed, epoch, sample) only: stopping after an
    epoch and resuming from the checkpoint ends with the same weights as an uninterrupted run."""
    from compress.models import LeNet5
    from compress.pruners import build_pruner
    from compress.config.prune import PruneConfig
    from compress.pruners.magnitude import MagnitudeOptions
    from compress.train import TrainConfig, train

    data = load(folder, workers=2)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    prune = PruneConfig(method="magnitude", options={"magnitude": MagnitudeOptions(sparsity=0.5, prune_after=0.3)})

    def fresh():
        torch.manual_seed(0)
        return LeNet5(data.input_shape, data.num_classes)

    whole = fresh()
    train(whole, build_pruner(prune), data, cfg, ["features.0", "classifier.0"], out_dir=tmp_path / "a", progress=False)

    class Interrupting(type(build_pruner(prune))):
        def begin_epoch(self, epoch):
            if epoch == 2:
                raise StopAt()
            super().begin_epoch(epoch)

    with pytest.raises(StopAt):
        train(fresh(), Interrupting(prune.magnitude), data, cfg, ["features.0", "classifier.0"],
              out_dir=tmp_path / "b", progress=False)
    resumed = fresh()
    train(resumed, build_pruner(prune), data, cfg, ["features.0", "classifier.0"], out_dir=tmp_path / "b",
          progress=False)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _class_ordered(tmp_path):
    """A folder whose files sort class by class (class_0 first): the layout that made 'first N' one class."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = (bunch.images * 255 / 16).astype(np.uint8)
    for c in range(3):
        picked = np.flatnonzero(bunch.target == c)
        write_folder(tmp_path, images[picked], bunch.target[picked], "train", 30)
        write_folder(tmp_path, images[picked], bunch.target[picked], "test", 10, offset=30)
    return tmp_path


def test_limits_take_a_seeded_class_stratified_subset(tmp_path):
    root = _class_ordered(tmp_path)
    data = load(root, train_limit=20, test_limit=10, mean=[0.5], std=[0.25])
    assert len(data.train) == 20 and len(data.test) == 10 and data.num_classes == 3
    # balanced over the classes (7, 7, 6 in some order), where the first 20 files were class 0 alone
    assert sorted(np.bincount(data.train.labels.numpy(), minlength=3)) == [6, 7, 7]
    assert sorted(np.bincount(data.test.labels.numpy(), minlength=3)) == [3, 3, 4]
    again = load(root, train_limit=20, test_limit=10, mean=[0.5], std=[0.25])
    assert again.train.items == data.train.items  # seeded: the same subset every time


def test_a_limit_that_leaves_a_class_empty_is_refused(tmp_path):
    root = _class_ordered(tmp_path)
    with pytest.raises(UserError, match=r"data.train_limit = 1: .* train split: class \d+ has no samples"):
        load(root, train_limit=1, mean=[0.5], std=[0.25])


def test_an_empty_class_folder_or_a_single_class_is_refused(folder):
    (folder / "train" / "class_empty").mkdir()
    (folder / "val" / "class_empty").mkdir()
    with pytest.raises(UserError, match=r"class_empty: class folder holds no images"):
        load(folder)
    import shutil
    for split in ("train", "val"):
        shutil.rmtree(folder / split / "class_empty")
        for d in (folder / split).iterdir():
            if d.name != "class_0":
                shutil.rmtree(d)
    with pytest.raises(UserError, match=r"only one class folder \('class_0'\)"):
        load(folder)


def test_a_dangling_symlink_is_named(folder):
    (folder / "train" / "class_1" / "gone.png").symlink_to(folder / "nowhere.png")
    with pytest.raises(UserError, match=r"gone.png: dangling symbolic link"):
        load(folder)
    from deploy.pipeline.provenance import listing_digest
    with pytest.raises(UserError, match=r"gone.png: cannot read .*dangling symbolic link"):
        listing_digest(folder)


def test_a_decompression_bomb_is_refused_from_its_header(folder):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # 20000 x 20000 grey, 8 bit
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 20001)) \
        + chunk(b"IEND", b"")
    (folder / "train" / "class_0" / "0000bomb.png").write_bytes(bomb)
    with pytest.raises(UserError, match=r"0000bomb.png: .*20000 x 20000|0000bomb.png: not a readable image"):
        load(folder)


def test_a_fifo_among_the_images_or_idx_files_is_refused_not_waited_on(folder, tmp_path):
    import os

    from compress.data import load_data
    os.mkfifo(folder / "train" / "class_1" / "pipe.png")
    with pytest.raises(UserError, match=r"pipe.png: not a regular file"):
        load(folder)
    idx = tmp_path / "idx"
    idx.mkdir()
    os.mkfifo(idx / "train-images-idx3-ubyte")
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: not a regular file"):
        load_data("mnist", str(idx))
