"""One pruner registry: built-in names, typed options, and a user's class by 'package.module:Class'."""
import pytest

from compress.config.prune import PruneConfig
from compress.errors import UserError
from compress.pruners import build_pruner, registered_pruners
from compress.pruners.l1 import L1FilterPruner, L1Options, L1Pruner
from compress.schema import parse


def test_every_builtin_gets_its_own_typed_options():
    for name, cls in registered_pruners().items():
        pruner = build_pruner(PruneConfig(method=name))
        assert type(pruner) is cls
        if cls.Options is not None:
            assert isinstance(pruner.options, cls.Options), name


def test_l1_with_filter_granularity_is_a_named_class():
    weights = build_pruner(PruneConfig(method="l1"))
    filters = build_pruner(PruneConfig(method="l1", options={"l1": L1Options(granularity="filter", sparsity=0.3)}))
    assert type(weights) is L1Pruner and type(filters) is L1FilterPruner and filters.name == "l1"
    assert filters.options.ratio == 0.3 and filters.l1_options.granularity == "filter"


def test_a_users_class_with_its_options(digits):
    from compress.models import MLP
    from compress.pruners import TrainPlan
    from compress.sparsity import global_sparsity
    cfg = parse(PruneConfig, {"method": "custom_pruner:HalfPruner", "custom": {"fraction": 0.25}}, "prune")
    pruner = build_pruner(cfg)
    assert pruner.options.fraction == 0.25
    model = MLP(digits.input_shape, digits.num_classes, [32])
    pruner.attach(model, ["net.1"], TrainPlan(1, 1, lambda s: 0.1))
    pruner.begin_epoch(0)
    assert global_sparsity(model, ["net.1"]) == pytest.approx(0.25, abs=1e-3)


@pytest.mark.parametrize("method,custom,message", [
    ("custom_pruner:Missing", {}, "cannot import 'custom_pruner:Missing'"),
    ("no_such_module:X", {}, "cannot import 'no_such_module:X'"),
    ("custom_pruner:NotAPruner", {}, "is not a subclass of compress.pruners.Pruner"),
    ("custom_pruner:HalfPruner", {"fraction": 2.0}, "prune.custom: fraction"),
    ("custom_pruner:HalfPruner", {"speed": 1}, "unknown field"),
])
def test_bad_user_pruners_are_one_line_errors(method, custom, message):
    with pytest.raises(UserError, match=message):
        build_pruner(parse(PruneConfig, {"method": method, "custom": custom}, "prune"))


def test_a_registered_class_is_a_method_with_its_own_table(monkeypatch, tmp_path):
    """@register_pruner is all it takes: prune.method, [prune.NAME] parsed and checked, the reference."""
    from custom_pruner import HalfPruner
    from deploy.config import config_reference, load_config
    from compress.pruners import registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.registered_pruners()))

    @registry.register_pruner("half")
    class Half(HalfPruner):
        pass

    path = tmp_path / "run.toml"
    path.write_text("[prune]\nmethod = 'half'\n[prune.half]\nfraction = 0.25\n")
    cfg = load_config(path)
    pruner = build_pruner(cfg.prune)
    assert type(pruner) is Half and pruner.options.fraction == 0.25 and pruner.name == "half"
    assert "`prune.half.fraction`" in config_reference()
    path.write_text("[prune.half]\nspeed = 1\n")
    with pytest.raises(UserError, match=r"^run.toml: prune.half.speed: unknown field \(expected one of: fraction\)$"):
        load_config(path)
    path.write_text("[prune.nope]\nx = 1\n")
    with pytest.raises(UserError, match=r"prune.nope: unknown field .*half"):
        load_config(path)


def test_a_name_cannot_be_registered_twice():
    from compress.pruners import register_pruner
    from compress.pruners.lats import LATSPruner
    assert register_pruner("lats")(LATSPruner) is LATSPruner  # the same class again: a no-op
    with pytest.raises(ValueError, match="already"):
        register_pruner("lats")(L1Pruner)
