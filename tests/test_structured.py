"""Physical channel removal: the smaller model computes exactly what the masked model computes."""
import copy

import pytest
import torch

from compress.models import ModelConfig, build_model
from compress.structured import channel_groups, harvest_channels, remove_channels, zero_channels

ARCHS = ["lenet5", "mlp", "resnet20", "resnet56", "vgg16", "mobilenet_v1", "torchvision:resnet18", "torchvision:googlenet",
         "torchvision:mobilenet_v2", pytest.param("torchvision:densenet121", marks=pytest.mark.slow)]


def randomize_bn(model):
    """Non-trivial BatchNorm statistics, so a mistake in the BN cut shows up in the outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", ARCHS + ["concat"])
def test_removal_equals_masking(name):
    shape = (3, 32, 32) if name.startswith("torchvision") else (1, 28, 28)
    torch.manual_seed(0)
    if name == "concat":
        from custom_model import Inception
        model = Inception().eval()
    else:
        model = build_model(ModelConfig(name=name, width=0.5, hidden=[64, 32]), shape, 10).eval()
    randomize_bn(model)
    x = torch.randn(4, *shape)
    groups = channel_groups(model, x)
    prunable = [g for g in groups if g.prunable]
    assert prunable, "nothing prunable found"
    gen = torch.Generator().manual_seed(0)
    masked = copy.deepcopy(model)
    smaller = copy.deepcopy(model)
    before = sum(p.numel() for p in smaller.parameters())
    full_width = copy.deepcopy(prunable)  # removal shrinks groups (and the offsets after a concatenation)
    for group, same in zip(prunable, full_width):
        keep = torch.randperm(group.size, generator=gen)[: max(group.size // 2, 1)].sort().values
        drop = torch.tensor(sorted(set(range(group.size)) - set(keep.tolist())), dtype=torch.long)
        zero_channels(masked, same, drop)
        remove_channels(smaller, group, keep)
    with torch.no_grad():
        want, got = masked(x), smaller(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())
    assert sum(p.numel() for p in smaller.parameters()) < 0.7 * before
    # the logits layer and the input stay whole
    assert all(not g.prunable for g in groups if "model output" in g.blockers or "model input" in g.blockers)


def test_residual_channels_are_coupled():
    model = build_model(ModelConfig(name="resnet20"), (1, 28, 28), 10).eval()
    groups = channel_groups(model, torch.randn(2, 1, 28, 28))
    stage1 = [g for g in groups if "conv1" in g.producers]
    assert stage1 and len(stage1[0].producers) >= 4  # stem + every block output of stage 1 share channels
    inner = [g for g in groups if g.producers == ["layers.0.conv1"]]
    assert inner and inner[0].consumers == [("layers.0.conv2", 1)]


def test_concatenated_groups_know_their_offsets():
    from custom_model import Inception
    groups = {g.producers[-1]: g for g in channel_groups(Inception(), torch.randn(2, 1, 28, 28)) if g.producers}
    a, b = groups["a"], groups["b"]  # cat([a, b]) and, added to it, cat([a2, b2]): two groups of 6 and 4
    assert a.prunable and b.prunable and set(a.producers) == {"a", "a2"} and set(b.producers) == {"b", "b2"}
    assert a.offset("bn") == 0 and b.offset("bn") == 6 and b.offset("mix") == 6
    assert a.offset("fc") == 12 * 16 and b.offset("fc") == 12 * 16 + 6  # after the flattened 12x4x4 map
    remove_channels(Inception(), groups["mix"], torch.arange(5))  # and offsets follow the cut widths
    assert a.offset("fc") == 5 * 16


def test_slicing_or_concatenating_elsewhere_blocks():
    class Sliced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(4, 2, 1)
            self.other, self.twice = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y, w = self.conv(x), self.other(x)
            return (self.head(y[:, :4]), torch.cat([w, w], 2), self.twice(torch.cat([w, w], 1)))

    groups = {g.producers[0]: g for g in channel_groups(Sliced(), torch.randn(1, 1, 8, 8)) if g.producers}
    assert any("indexing" in b for b in groups["conv"].blockers)
    # along dim 2 the channels stay the same channels (ViT's class token): no blocker from it
    assert not any("along dim 2" in b for b in groups["other"].blockers)
    # a conv reading the same channels twice is cut at both reads (tests/test_tracing.py)
    assert len(groups["other"].repeats["twice"]) == 2


def test_unsupported_operation_blocks_instead_of_cutting_wrongly():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3)
            self.head = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return self.head(torch.roll(y, 1, dims=1))  # mixes channels: cannot be cut

    groups = channel_groups(Odd(), torch.randn(1, 1, 8, 8))
    conv = [g for g in groups if g.producers == ["conv"]][0]
    assert not conv.prunable and any("roll" in b for b in conv.blockers)
    with pytest.raises(ValueError, match="cannot be pruned"):
        remove_channels(Odd(), conv, torch.arange(4))


def test_harvest_removes_dead_neurons_and_folds_their_constant_output():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=[32, 16]), (1, 8, 8), 10).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        model.net[1].weight[:10] = 0
        model.net[1].bias[:10] = 0      # 10 dead neurons: zero in, zero out
        model.net[1].weight[10:12] = 0  # zero rows but a bias: a constant, folded into the next layer's bias
        model.net[1].bias[10:12] = torch.tensor([0.7, -0.3])  # ReLU: 0.7 carries on, -0.3 becomes 0
        want = model(x)
    result = harvest_channels(model, channel_groups(model, x), (1, 8, 8))
    assert result.keep == {"net.1": list(range(12, 32))} and result.folded == 1 and result.biased == []
    assert model.net[1].out_features == 20 and model.net[3].in_features == 20
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-6)


def test_harvest_rounds_widths_up_to_a_multiple_and_stays_exact():
    """round_to=8 keeps 8 or 16 of 32 hidden neurons where 5 or 13 are alive: the dead ones taken
    back stay dead (or keep their constant), so the output is unchanged."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=[32, 32]), (1, 8, 8), 10).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        model.net[1].weight[5:] = 0    # 5 alive; the dead carry their bias (a constant) or zero
        model.net[1].bias[20:] = 0
        model.net[3].weight[13:] = 0   # 13 alive
        want = model(x)
    any_width = copy.deepcopy(model)
    assert {k: len(v) for k, v in harvest_channels(any_width, channel_groups(any_width, x), (1, 8, 8)).keep.items()} \
        == {"net.1": 5, "net.3": 13}
    result = harvest_channels(model, channel_groups(model, x), (1, 8, 8), round_to=8)
    assert {k: len(v) for k, v in result.keep.items()} == {"net.1": 8, "net.3": 16}
    assert model.net[1].out_features == 8 and model.net[5].in_features == 16
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-6)
        assert torch.allclose(any_width(x), want, atol=1e-6)


def frozen_and_masked(folder):
    """A finished run's frozen sparse model (rebuilt from its files), the masked model its training
    checkpoint gives before any cut, and 64 test images."""
    from compress.train import load_checkpoint, make_plan
    from deploy.pipeline import open_run
    run = open_run(folder, progress=False)
    ckpt_model, pruner = run.new_model(), run.new_pruner("sparse")
    pruner.attach(ckpt_model, run.layers, make_plan(run.cfg.train, len(run.data.train), run.data.input_shape))
    ckpt_model.load_state_dict(load_checkpoint(folder / "train" / "sparse" / "checkpoint.pt")["model"])
    return run.frozen_model("sparse"), pruner.freeze().eval(), run.data.test.x[:64]


def test_filter_method_gives_a_physically_smaller_model_through_the_pipeline(tmp_path):
    import json

    import onnx

    from conftest import REPO, cli
    res = cli("run", REPO / "configs" / "quickstart.toml", "--out", tmp_path / "f",
              "--no-progress", "--set", "model.name='lenet5'", "--set", "prune.method='filter'",
              "--set", "prune.filter.ratio=0.5", "--set", "prune.filter.round_to=1", "--set", "gate.min_sparsity=0", "--set",
              "gate.max_accuracy_drop=0.05", "--set", "validate.runs=10",
              "--set", "freeze.latency_check=false", "--set", "freeze.round_to=1")  # any width, chosen by no timing
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    r = json.loads((tmp_path / "f" / "report" / "report.json").read_text())
    s = r["structure"]
    assert s["widths"]["features.0"] == [6, 3] and s["widths"]["classifier.0"] == [120, 60]
    assert s["macs_after"] < 0.4 * s["macs_before"] and s["params_after"] < 0.4 * s["params_before"]
    assert r["size"]["sparse_onnx_bytes"] < 0.5 * r["size"]["dense_onnx_bytes"]
    assert r["sparse"]["agreement_with_torch"] == 1.0
    # the smaller model's outputs equal the masked model's (before the cut) on real data
    small, masked, x = frozen_and_masked(tmp_path / "f")
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() < 1e-5
    graph = onnx.load(str(tmp_path / "f" / "onnx" / "sparse.onnx")).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    assert shapes["features.0.weight"] == [3, 1, 5, 5] and shapes["classifier.2.weight"] == [42, 60]


def test_a_convnext_stream_is_cut_through_the_pipeline_and_the_frozen_model_reloads(tmp_path):
    """torchvision's ConvNeXt block (LayerNorm2d, permutes, LayerNorm, layer scale) in a user's model:
    filter pruning cuts the residual stream, the frozen model is rebuilt from its files with the
    wrapped norms, equals the masked model, and its ONNX export agrees with PyTorch."""
    import json

    from conftest import REPO, cli
    from compress.structured.norm import NormWithRemoved
    res = cli("run", REPO / "configs" / "quickstart.toml", "--out", tmp_path / "c", "--no-progress",
              "--set", "model.name='custom_model:convnext_like'", "--set", "prune.method='filter'",
              "--set", "prune.filter.ratio=0.5", "--set", "train.epochs=3", "--set", "gate.min_sparsity=0",
              "--set", "gate.max_accuracy_drop=1", "--set", "validate.runs=10", "--set", "freeze.latency_check=false")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    r = json.loads((tmp_path / "c" / "report" / "report.json").read_text())
    widths = sorted(r["structure"]["widths"].values())
    assert widths == [[32, 16], [128, 64], [128, 64]]  # the stream and each block's MLP, halved
    assert r["sparse"]["agreement_with_torch"] == 1.0
    small, masked, x = frozen_and_masked(tmp_path / "c")
    assert sum(isinstance(m, NormWithRemoved) for m in small.modules()) == 4  # 2 LayerNorm2d, 1 LayerNorm per block
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() < 1e-4 * masked(x).abs().max()
    # a damaged or crafted structure record is refused with the file named, never a wrongly cut model
    import shutil

    from compress.errors import UserError
    from compress.frozen import load_frozen
    spec = json.loads((tmp_path / "c" / "frozen" / "model.json").read_text())
    name = spec["variants"]["sparse"]["structure"]
    record = json.loads((tmp_path / "c" / "frozen" / name).read_text())
    key = next(iter(record["keep"]))
    for bad in ({key: [-1] + record["keep"][key][1:]}, {key: record["keep"][key][:-1] + [9999]},
                {key: [0, 0] + record["keep"][key][2:]}, {"no.such.layer": [0]}, {key: []}, {key: "0,1"}):
        crafted = tmp_path / "crafted"
        shutil.rmtree(crafted, ignore_errors=True)
        shutil.copytree(tmp_path / "c" / "frozen", crafted)
        (crafted / name).write_text(json.dumps({**record, "keep": {**record["keep"], **bad}}))
        with pytest.raises(UserError, match=name):
            load_frozen(crafted, "sparse")
    assert isinstance(load_frozen(tmp_path / "c" / "frozen", "sparse"), torch.nn.Module)


@pytest.mark.parametrize("round_to", [8, 0])  # 0: the default, multiples of 8 for a ratio or MAC target
def test_filter_pruner_keeps_widths_a_multiple_of_round_to(round_to):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet20"), (1, 28, 28), 10)
    pruner = filter_pruner(model, ratio=0.3, prune_after=0.0, round_to=round_to)
    pruner.begin_epoch(0)
    kept = {k: g.size - len(pruner.dropped[k]) for k, g in pruner.groups.items()}
    assert kept and all(k % 8 == 0 and k > 0 for k in kept.values())
    assert {16: 8, 32: 24, 64: 48}[next(iter(pruner.groups.values())).size] in kept.values()
    # any width when asked for: 70% of 16, 32, 64
    anywidth = filter_pruner(build_model(ModelConfig(name="resnet20"), (1, 28, 28), 10), ratio=0.3, round_to=1)
    assert set(anywidth.final_keep.values()) == {11, 22, 44}


def filter_pruner(model, shape=(1, 28, 28), epochs=1, **options):
    from compress.pruners import TrainPlan
    from compress.pruners.filters import FilterOptions, FilterPruner
    from compress.selection import LayerRule, select_layers
    pruner = FilterPruner(FilterOptions(**options))
    pruner.attach(model, select_layers(model, LayerRule()), TrainPlan(epochs, 1, lambda s: 0.1, shape))
    return pruner


def cut(model, shape=(1, 28, 28)):
    """Freeze's harvest: the physically smaller model."""
    harvest_channels(model.eval(), channel_groups(model, torch.zeros(2, *shape)), shape)
    return model


@pytest.mark.parametrize("factor", [2.0, 3.0])
def test_flops_target_is_met_with_the_smallest_uniform_ratio(factor):
    from compress.structured import keep_count, macs_with_widths
    from compress.flops import count_macs
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet20"), (1, 28, 28), 10)
    dense = count_macs(model, (1, 28, 28))["dense"]
    pruner = filter_pruner(model, prune_after=0.0, flops_target=factor)
    pruner.begin_epoch(0)
    after = count_macs(cut(pruner.freeze()), (1, 28, 28))["dense"]
    assert dense / after >= factor and after == pruner.planned["macs_after"]
    # a slightly smaller ratio would miss the target: the search did not overshoot
    fresh = build_model(ModelConfig(name="resnet20"), (1, 28, 28), 10)
    prunable = [g for g in channel_groups(fresh, torch.zeros(2, 1, 28, 28)) if g.prunable]
    less = {g.producers[0]: keep_count(g.size, pruner.planned["ratio"] - 0.03) for g in prunable}
    assert dense / macs_with_widths(fresh, prunable, less, (1, 28, 28)) < factor


def test_flops_target_out_of_reach_is_a_clear_error():
    from compress.errors import UserError
    model = build_model(ModelConfig(name="lenet5"), (1, 28, 28), 10)
    with pytest.raises(UserError, match="flops_target.*out of reach"):
        filter_pruner(model, flops_target=1000.0)
    with pytest.raises(UserError, match="flops_target.*above 1"):
        filter_pruner(model, flops_target=0.5)


def test_layer_ratios_override_the_default_ratio():
    from compress.pruners.filters import LayerRatio
    model = build_model(ModelConfig(name="lenet5"), (1, 28, 28), 10)
    pruner = filter_pruner(model, ratio=0.5, round_to=1, layer_ratios=[LayerRatio("features.3", 0.25)])
    assert pruner.final_keep == {"features.0": 3, "features.3": 12, "classifier.0": 60, "classifier.2": 42}


def test_gradual_filter_pruning_grows_monotonically_to_the_final_widths():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet20"), (1, 28, 28), 10)
    pruner = filter_pruner(model, epochs=10, ratio=0.5, schedule="gradual", prune_after=0.2, prune_until=0.6)
    seen = []
    for epoch in range(10):
        pruner.begin_epoch(epoch)
        with torch.no_grad():  # training moves the kept weights; dropped ones must stay dropped
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        pruner.after_step(epoch, 0.1)
        seen.append({k: set(v.tolist()) for k, v in pruner.dropped.items()})
    counts = [sum(len(v) for v in s.values()) for s in seen]
    assert counts[:2] == [0, 0] and 0 < counts[2] < counts[3] < counts[4] < counts[6] == counts[9]
    for before, after in zip(seen, seen[1:]):
        assert all(before[k] <= after[k] for k in before)
    assert all(len(v) == g.size - pruner.final_keep[k] for k, g in pruner.groups.items() for v in [seen[-1][k]])


def test_greg_filter_mode_penalises_coupled_filters_and_is_cut_physically():
    from compress.pruners import TrainPlan
    from compress.pruners.greg import GRegOptions, GRegPruner
    from compress.selection import LayerRule, select_layers
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet20", width=0.5), (1, 28, 28), 10)
    twin = copy.deepcopy(model)
    plan = TrainPlan(4, 10, lambda s: 0.1, (1, 28, 28))
    greg = GRegPruner(GRegOptions(variant=1, granularity="filter", sparsity=0.5, pick_after=0.25))
    greg.attach(model, select_layers(model, LayerRule()), plan)
    greg.begin_epoch(1)
    l1 = filter_pruner(twin, epochs=4, ratio=0.5, prune_after=0.25, round_to=1)  # GReg counts any width
    l1.begin_epoch(1)
    assert set(greg.pruned) == set(l1.dropped)  # same channels as the L1 filter method on the same weights
    for k in greg.pruned:
        assert torch.nonzero(greg.pruned[k]).flatten().tolist() == l1.dropped[k].tolist()
    key, stem = next((k, g) for k, g in greg.groups.items() if "conv1" in g.producers)
    assert len(stem.producers) >= 4  # the residual stage: every block's output conv shares these channels
    greg.reg[key][greg.pruned[key]] = 1.0
    for p in stem.producers:
        model.get_submodule(p).weight.grad = torch.zeros_like(model.get_submodule(p).weight)
    greg.after_backward(1)  # a step without a penalty update (those come at 0, k, 2k, ...)
    for p in stem.producers:
        w = model.get_submodule(p).weight
        picked = greg.pruned[key]
        assert torch.equal(w.grad[picked], w.detach()[picked]) and torch.all(w.grad[~picked] == 0)
    greg._remove()
    masked = copy.deepcopy(greg.freeze()).eval()
    x = torch.randn(3, 1, 28, 28)
    small = cut(model)
    assert small.conv1.out_channels == stem.size - int(greg.pruned[key].sum())
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() < 1e-5


def test_harvest_folds_constant_channels_where_exact_and_keeps_them_where_not():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = torch.nn.Conv2d(1, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6)
            self.c2, self.b2 = torch.nn.Conv2d(6, 8, 1, bias=False), torch.nn.BatchNorm2d(8)    # no padding: foldable
            self.c3, self.b3 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)  # padded
            self.fc = torch.nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.relu(self.b2(self.c2(x)))
            x = torch.relu(self.b3(self.c3(x)))
            return self.fc(torch.flatten(torch.nn.functional.max_pool2d(x, 2), 1))

    torch.manual_seed(0)
    model = Net().eval()
    randomize_bn(model)
    with torch.no_grad():
        for bn in (model.b1, model.b2, model.b3):
            bn.bias.copy_(bn.bias.abs() + 0.5)  # dead channels carry a positive constant through ReLU
        model.c1.weight[:2] = 0  # read by c2 (1x1, no padding): folded into c2's (new) bias
        model.c2.weight[:3] = 0  # read by c3 (3x3, padding 1): not exact, must stay
        model.c3.weight[:4] = 0  # read by the Linear after flatten: folded
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = model(x)
    result = harvest_channels(model, channel_groups(model, x), (1, 8, 8))
    assert (model.c1.out_channels, model.c2.out_channels, model.c3.out_channels) == (4, 8, 4)
    assert result.folded == 6 and result.biased == ["c2"] and model.fc.in_features == 4 * 16
    with torch.no_grad():
        assert (model(x) - want).abs().max() < 1e-5


def test_filter_method_names_why_a_model_cannot_be_cut():
    from compress.errors import UserError

    class Rolled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 8, 3), torch.nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.roll(self.conv(x), 1, dims=1).mean((2, 3)))

    with pytest.raises(UserError, match=r"no prunable channel group.*conv: roll roll along the channel axis"):
        filter_pruner(Rolled(), shape=(1, 8, 8))


def test_keep_count_rules():
    from compress.structured import keep_count
    assert [keep_count(10, r) for r in (0.0, 0.3, 0.5, 0.99)] == [10, 7, 5, 1]
    assert [keep_count(64, r, round_to=8) for r in (0.3, 0.5, 0.99)] == [48, 32, 8]
    assert [keep_count(64, r, pow2=True) for r in (0.0, 0.3, 0.5, 0.7, 0.99)] == [64, 32, 32, 16, 1]
    assert keep_count(6, 0.0, pow2=True) == 6 and keep_count(6, 0.2, pow2=True) == 4  # never above n
