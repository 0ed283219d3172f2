"""Dataset factories a user could write: `data.name = "user_data:digits_factory"`."""
import torch
from torch.utils.data import TensorDataset


def digits_factory(root: str, seed: int):
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target)
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:]), 10


def raises(root: str, seed: int):
    raise RuntimeError("the user's bucket is unreachable")


def wrong_type(root: str, seed: int):
    return [1, 2, 3], [4], 10


def empty(root: str, seed: int):
    return TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)), TensorDataset(torch.zeros(0, 1, 8, 8),
                                                                                  torch.zeros(0)), 10


def few_classes(root: str, seed: int):
    train, test, _ = digits_factory(root, seed)
    return train, test, 5  # but labels go up to 9


def exits(root: str, seed: int):
    raise SystemExit(0)  # a script's habit: must not end sparsepipe with exit 0 and no message


def huge_classes(root: str, seed: int):
    train, test, _ = digits_factory(root, seed)
    return train, test, 10**9
