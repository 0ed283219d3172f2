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
