"""A user model factory, referenced from tests as model.name = 'custom_model:make'."""
from torch import nn


def make(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(input_shape[0] * input_shape[1] * input_shape[2]), 32),
                         nn.ReLU(), nn.Linear(32, num_classes))


def not_a_model(input_shape, num_classes):
    return "nope"
