"""Weight-standardised convs (timm's StdConv2d / ScaledStdConv2d, NFNet and BiT ResNet-V2) and the
layers around them (timm's GroupNormAct, padding modules): cut exactly against the masked model."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from compress.structured import channel_groups, harvest_channels, remove_channels, zero_channels
from compress.structured.std_conv import StandardizedConv2d

from test_channel_rules import cut_vs_masked

import timm.layers as timm_layers  # the [test] extra installs timm


class NFNet(nn.Module):
    """NF-ResNet's shape: scaled weight-standardised convs (one grouped, one with dynamic SAME
    padding), a residual, a GroupNorm + activation layer and a padding module on the way."""

    def __init__(self):
        super().__init__()
        L = timm_layers
        self.stem = L.ScaledStdConv2d(3, 16, 3, gamma=1.7)
        self.pad = nn.ZeroPad2d((1, 0, 1, 0))
        self.a = L.ScaledStdConv2dSame(16, 24, 3, stride=2, padding="SAME")
        self.norm = L.GroupNormAct(24, num_groups=4, act_layer=nn.ReLU)
        self.b = L.ScaledStdConv2d(24, 24, 3, groups=4)
        self.c = L.StdConv2d(24, 16, 1)
        self.d = L.StdConv2dSame(16, 16, 3, stride=2, padding="SAME")
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.pad(self.stem(x)))
        y = self.norm(self.a(x))
        y = torch.relu(self.b(y))
        x = self.d(torch.relu(self.c(y) + nn.functional.avg_pool2d(x, 2)))
        return self.head(x.mean((2, 3)))


def _randomise(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if hasattr(m, "gain"):
                m.gain.uniform_(0.5, 1.5)
    return model.eval()


def test_std_convs_cut_exactly_and_keep_the_removed_weights_in_their_statistics():
    model, x = _randomise(NFNet()), torch.randn(2, 3, 15, 17)
    groups = channel_groups(model, x)
    assert {p for g in groups if g.prunable for p in g.producers} == {"stem", "a", "b", "c", "d"}
    cut, diff, _ = cut_vs_masked(model, x, ratio=0.5)
    assert cut >= 3 and diff < 1e-5


def test_a_cut_of_a_cut_matches_the_masked_model_and_onnxruntime(tmp_path):
    import onnxruntime as ort

    from deploy.export import export_onnx

    model, x = _randomise(NFNet()), torch.randn(2, 3, 15, 17)
    masked = copy.deepcopy(model)
    group = next(g for g in channel_groups(model, x) if "a" in g.producers)  # a → norm → b (grouped)
    assert group.blocks == 4 and group.passthrough == ["norm"]
    remove_channels(model, group, torch.tensor([0, 2, 3, 4, 6, 7, 9, 10, 12, 13, 15, 17, 18, 20, 21, 23]))
    group = next(g for g in channel_groups(model, x) if "a" in g.producers)
    remove_channels(model, group, torch.tensor([1, 2, 5, 6, 9, 10, 13, 14]))  # 2 of 4 in each block
    zero_channels(masked, next(g for g in channel_groups(masked, x) if "a" in g.producers),
                  torch.tensor([0, 1, 4, 5, 6, 8, 10, 11, 12, 14, 16, 17, 18, 19, 22, 23]))
    assert isinstance(model.b, StandardizedConv2d) and model.b.weight.shape[1] == 2 and \
        model.b.removed.shape[1] == 4  # 2 of each block's 6 inputs read, 4 kept for the statistics
    assert model.a.gain.shape[0] == model.a.out_channels == 8
    with torch.no_grad():
        want, got = masked(x), model(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    export_onnx(model, x[:1], tmp_path / "nf.onnx")
    session = ort.InferenceSession(str(tmp_path / "nf.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})[0]
    assert np.abs(out - got[:1].numpy()).max() < 1e-4


def test_cutting_inputs_without_the_removed_weights_would_be_wrong():
    """The reason StandardizedConv2d exists: a plain column cut changes every row's statistics."""
    torch.manual_seed(0)
    conv = timm_layers.ScaledStdConv2d(8, 4, 3)
    x = torch.randn(1, 8, 6, 6)
    x[:, 5:] = 0
    plain = copy.deepcopy(conv)
    plain.weight = nn.Parameter(plain.weight[:, :5].clone())
    with torch.no_grad():
        assert (plain(x[:, :5]) - conv(x)).abs().max() > 1e-2
    from compress.structured.std_conv import keep_std_conv_columns

    kept = keep_std_conv_columns(conv, torch.arange(5).expand(4, -1))
    with torch.no_grad():
        assert (kept(x[:, :5]) - conv(x)).abs().max() < 1e-5


def test_harvest_folds_constants_through_the_standardised_weight():
    """Dead channels after a sigmoid carry 0.5; the harvest folds 0.5 × the standardised weight
    (not the raw one) into the next conv's bias."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sigmoid(), timm_layers.ScaledStdConv2d(8, 6, 1), nn.ReLU(),
                          nn.Conv2d(6, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight[[1, 4, 6]] = 0
        model[0].bias[[1, 4, 6]] = 0
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = model(x)
    result = harvest_channels(model, channel_groups(model, x[:1]), (3, 9, 9))
    assert result.keep["0"] == [0, 2, 3, 5, 7] and isinstance(model[2], StandardizedConv2d)
    with torch.no_grad():
        assert float((model(x) - want).abs().max()) < 1e-5


def test_a_cut_group_norm_act_keeps_its_activation_in_view():
    """Cut once, the GroupNormAct becomes a NormActWithRemoved whose activation the next trace still
    follows: a sigmoid there is seen as what it is (removed channels would carry 0.5)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), timm_layers.GroupNormAct(8, num_groups=2, act_layer=nn.ReLU),
                          nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    remove_channels(model, next(g for g in channel_groups(model, x) if "0" in g.producers), torch.tensor([0, 1, 4, 5]))
    group = next(g for g in channel_groups(model, x) if "0" in g.producers)
    assert group.prunable and not group.shifts and group.passthrough == ["1.norm"]
    model[1].act = nn.Sigmoid()
    assert next(g for g in channel_groups(model, x) if "0" in g.producers).shifts


@pytest.mark.parametrize("pad,whole", [(nn.ZeroPad2d((1, 2, 0, 1)), False), (nn.ReflectionPad2d(1), False),
                                       (nn.ReplicationPad2d(1), False), (nn.ConstantPad2d(1, 0.5), True)])
def test_padding_modules_pass_channels_through(pad, whole):
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), pad, nn.Conv2d(8, 4, 3)).eval(), torch.randn(2, 3, 12, 12)
    group = next(g for g in channel_groups(model, x) if "0" in g.producers)
    assert bool(group.shifts) == whole  # a constant pad value is what a removed channel would carry
    if not whole:
        cut, diff, _ = cut_vs_masked(model, x)
        assert cut == 1 and diff < 1e-6


def test_export_folds_the_standardisation_into_plain_conv_weights(tmp_path):
    """What ships runs plain convs with the standardised weights (constants in inference), not the
    standardisation at every call; a cut model's removed weights do not ship."""
    import onnx

    from compress.structured.std_conv import fold_weight_standardization, is_std_conv
    from deploy.export import export_onnx

    model, x = _randomise(NFNet()), torch.randn(2, 3, 15, 17)
    remove_channels(model, next(g for g in channel_groups(model, x) if "a" in g.producers),
                    torch.tensor([0, 1, 6, 7, 12, 13, 18, 19]))
    folded = fold_weight_standardization(model)
    assert not any(is_std_conv(m) for m in folded.modules()) and any(is_std_conv(m) for m in model.modules())
    assert sum(p.numel() for p in folded.parameters()) == sum(p.numel() for n, p in model.named_parameters()
                                                               if not n.endswith(("removed", "gain")))
    with torch.no_grad():
        assert float((folded(x) - model(x)).abs().max()) < 1e-5
    # wide enough that the exporter's own constant folding leaves the standardisation in the graph
    wide = nn.Sequential(timm_layers.ScaledStdConv2d(3, 64, 3), nn.ReLU(),
                         timm_layers.StdConv2dSame(64, 64, 3, stride=2, padding="SAME")).eval()
    info = export_onnx(wide, x, tmp_path / "m.onnx")
    assert info["max_abs_diff_vs_torch"] < 1e-4
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}


def test_sparsity_is_counted_on_the_weights_a_std_conv_computes_with():
    """A zero in a standardised conv's raw weight is -mean/std after standardisation: no zero ships."""
    from compress.sparsity import global_sparsity

    conv_model = nn.Sequential(timm_layers.ScaledStdConv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        conv_model[0].weight[:, :2] = 0  # 2/3 of each row
        conv_model[1].weight[:, :2] = 0
    assert global_sparsity(conv_model, ["1"]) == 0.5
    assert global_sparsity(conv_model, ["0"]) == 0.0


def _harvest_keeps_output(model, x, dead):
    """Zero producer 0's rows `dead`, harvest, and return (channels kept, max relative change)."""
    with torch.no_grad():
        model[0].weight[dead] = 0
        model[0].bias[dead] = 0
        want = model(x)
    result = harvest_channels(model, channel_groups(model, x[:1]), tuple(x.shape[1:]))
    with torch.no_grad():
        return result.keep.get("0"), float((model(x) - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("conv", [lambda: timm_layers.ScaledStdConv2dSame(8, 6, 3, stride=2, padding="SAME"),
                                  lambda: timm_layers.Conv2dSame(8, 6, 3, stride=2)])
def test_harvest_does_not_fold_a_constant_into_a_conv_that_pads_at_run_time(conv):
    """0.5 (a sigmoid of a dead channel) is no constant at a SAME-padded border: not foldable."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sigmoid(), conv(), nn.ReLU(), nn.Conv2d(6, 4, 1)).eval()
    kept, diff = _harvest_keeps_output(model, torch.randn(2, 3, 11, 11), [1, 4, 6])
    assert kept is None and diff == 0


@pytest.mark.parametrize("gamma_zero", [False, True])
def test_harvest_through_a_group_norm_removes_only_channels_it_silences(gamma_zero):
    """A dead channel leaves a GroupNorm as −mean/std·γ + β: input-dependent unless its γ is 0."""
    torch.manual_seed(0)
    model = _randomise(nn.Sequential(nn.Conv2d(3, 8, 3), timm_layers.GroupNormAct(8, num_groups=2), nn.Conv2d(8, 4, 1)))
    if gamma_zero:
        with torch.no_grad():
            model[1].weight[[1, 4, 6]] = 0
    kept, diff = _harvest_keeps_output(model, torch.randn(2, 3, 9, 9), [1, 4, 6])
    assert kept == ([0, 2, 3, 5, 7] if gamma_zero else None) and diff < 1e-5


def test_zeroing_channels_of_a_cut_std_conv_silences_them():
    model, x = _randomise(NFNet()), torch.randn(2, 3, 15, 17)
    remove_channels(model, next(g for g in channel_groups(model, x) if "a" in g.producers),
                    torch.tensor([0, 1, 6, 7, 12, 13, 18, 19]))
    group = next(g for g in channel_groups(model, x) if "b" in g.producers)
    zero_channels(model, group, torch.tensor([1, 2, 5]))
    with torch.no_grad():
        assert float(model.b(torch.randn(2, 8, 6, 6))[:, [1, 2, 5]].abs().max()) == 0


def test_a_per_channel_activation_inside_group_norm_act_is_cut_with_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), timm_layers.GroupNormAct(8, num_groups=2, act_layer=nn.PReLU,
                                                                       act_kwargs={"num_parameters": 8}),
                          nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        model[1].act.weight.uniform_(0.1, 0.9)
    x = torch.randn(2, 3, 9, 9)
    for _ in range(2):  # a cut of a cut: the GroupNormAct is a NormActWithRemoved the second time
        cut, diff, _ = cut_vs_masked(_randomise(model), x)
        assert cut == 1 and diff < 1e-5
        remove_channels(model, next(g for g in channel_groups(model, x) if "0" in g.producers),
                        torch.arange(0, model[0].out_channels, 2))
    assert model[1].act.num_parameters == 2
