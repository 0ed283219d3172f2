"""A model class changes how it is exported and reported only through compress/models/hooks.py."""
import onnx
import torch
from torch import nn

from compress.models.hooks import report_summary
from deploy.export import export_onnx


class Doubling(nn.Module):
    def forward(self, x):
        return x + x


class WithHooks(nn.Module):
    """Doubles its input; exports as x * 2 (the same function through another op) and reports its width."""

    def __init__(self):
        super().__init__()
        self.width = 3

    def forward(self, x):
        return x + x

    def export_copy(self) -> nn.Module:
        class Times(nn.Module):
            def forward(self, x):
                return x * 2
        return Times()

    @staticmethod
    def report_summary(dense, sparse, x):
        return {"width": sparse.width, "inputs": int(x.shape[0]), "same": dense is sparse}


def ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_export_uses_the_models_export_copy(tmp_path):
    x = torch.randn(4, 3)
    export_onnx(Doubling(), x, tmp_path / "plain.onnx")
    info = export_onnx(WithHooks(), x, tmp_path / "hooked.onnx")
    assert "Add" in ops(tmp_path / "plain.onnx") and "Mul" not in ops(tmp_path / "plain.onnx")
    assert "Mul" in ops(tmp_path / "hooked.onnx") and "Add" not in ops(tmp_path / "hooked.onnx")
    assert info["max_abs_diff_vs_torch"] < 1e-6  # compared with the model itself, not only the copy


def test_report_summary_comes_from_the_sparse_models_class():
    model, x = WithHooks(), torch.randn(5, 3)
    assert report_summary(Doubling(), model, x) == {"width": 3, "inputs": 5, "same": False}
    assert report_summary(model, Doubling(), x) is None  # only the sparse model's class is asked
