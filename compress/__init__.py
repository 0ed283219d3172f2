"""Training-time half of sparsepipe: data, models, pruners and the training loop."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparsepipe")  # one source: pyproject.toml
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
