"""Training-time half of sparsepipe: data, models, pruners and the training loop."""
__version__ = "0.1.0"
