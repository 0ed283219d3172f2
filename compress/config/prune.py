"""The [prune] section: the method, which layers, and each method's typed options."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError
from ..schema import opt

LAYER_KINDS = ("conv", "linear")


@dataclass
class LayerRule:
    types: list[str] = opt(["conv", "linear"], "Layer kinds to prune: conv, linear.")
    exclude: list[str] = opt([], "Glob patterns of layer names never pruned (e.g. 'classifier.*').")
    keep_first_dense: bool = opt(False, "Leave the first prunable layer dense.")
    keep_last_dense: bool = opt(False, "Leave the last prunable layer dense.")

    def check(self, where: str) -> None:
        for t in self.types:
            if t not in LAYER_KINDS:
                raise UserError(f"{where}.types: unknown layer kind {t!r} (expected conv or linear)")



@dataclass
class LATSOptions:
    schedule: Literal["lats", "s-lats", "pgh", "linear", "constant"] = opt(
        "lats", "Threshold schedule over the pruning window (see the method notes in the README).")
    mode: Literal["during", "early", "init"] = opt(
        "during", "during: sparsify while training; early: reach D by end_epoch, then fix the mask and keep "
        "training; init: pruning at initialisation (constant D from step 0, inflated latent init).")
    threshold_final: float = opt(0.05, "D: the threshold at the end of the pruning window.", lo=0.0, lo_open=True)
    l1_lambda: float = opt(0.0, "λ (schedule 'lats' only): d_t = λ·Σ_{s<t} η_s with no final value; "
                           "when > 0 it replaces threshold_final.", lo=0.0)
    start_epoch: int = opt(0, "Epoch at which the threshold starts growing (dense before it).", lo=0)
    end_epoch: int = opt(0, "mode 'early': epoch by which the threshold reaches D (0 = half of the epochs).", lo=0)
    pgh_beta: float = opt(10.0, "schedule 'pgh': λ grows geometrically by this factor over the window.",
                          lo=0.0, lo_open=True)
    target_sparsity: float = opt(0.0, "Target global sparsity (0 = off). The threshold's rate λ = Δd/η is "
                                 "calibrated in the first half of the pruning window and then held (±4.5%); "
                                 "the report records the λ and D that resulted.",
                                 lo=0.0, hi=1.0, hi_open=True)
    decay_1d: bool = opt(True, "Weight decay also on biases and BatchNorm parameters (train.weight_decay), as "
                         "the official LATS code (no_bn_decay off: one decay for every parameter). false: "
                         "weights only, the other methods' default.")

    def check(self, where: str) -> None:
        if self.l1_lambda > 0 and self.schedule != "lats":
            raise UserError(f"{where}.l1_lambda: only schedule 'lats' takes λ; others need threshold_final")
        if self.l1_lambda > 0 and self.target_sparsity > 0:
            raise UserError(f"{where}.target_sparsity: calibrates D, so it cannot be combined with l1_lambda")
        if self.mode == "init" and self.schedule not in ("lats", "constant"):
            raise UserError(f"{where}.schedule: mode 'init' uses a constant threshold; leave schedule at 'lats'")



@dataclass
class MagnitudeOptions:
    sparsity: float = opt(0.9, "Fraction of the selected weights set to zero.", lo=0.0, hi=1.0, hi_open=True)
    scope: Literal["global", "layer"] = opt("global", "global: one magnitude cut over all layers; "
                                            "layer: the same fraction in every layer.")
    prune_after: float = opt(0.5, "Fraction of the epochs trained dense before the one-shot prune; "
                             "the rest fine-tunes with the mask fixed.", lo=0.0, hi=1.0, hi_open=True)
    block: list[int] = opt([1, 1], "Prune whole [rows, cols] blocks of the 2-D weight (out, in·kh·kw), scored "
                           "by mean |w|, so BSR storage pays off; [1, 1] = single weights.", lo=1)



@dataclass
class L1Options:
    sparsity: float = opt(0.9, "Fraction of groups removed in every layer (at most n−1 per layer).",
                          lo=0.0, hi=1.0, hi_open=True)
    granularity: Literal["weight", "filter"] = opt("weight", "Single weights, or channels: then it is method "
                                                   "'filter' cutting `sparsity` of every coupled channel group "
                                                   "at prune_after (what GReg's filter mode picks).")
    prune_after: float = opt(0.3, "Fraction of the epochs trained dense before the one-shot prune. Set it to "
                             "GReg's pick_after to remove exactly the groups GReg-1 picks.",
                             lo=0.0, hi=1.0, hi_open=True)
    decay_1d: bool = opt(True, "Weight decay also on biases and BatchNorm parameters, as GReg's default, so the "
                         "baseline trains exactly as GReg-1 does.")



@dataclass
class GMPOptions:
    sparsity: float = opt(0.9, "Final fraction of the selected weights set to zero.", lo=0.0, hi=1.0, hi_open=True)
    scope: Literal["global", "layer"] = opt("global", "Magnitude cut over all layers or per layer.")
    start: float = opt(0.1, "Fraction of training at which pruning starts.", lo=0.0, hi=1.0, hi_open=True)
    end: float = opt(0.7, "Fraction of training at which the final sparsity is reached.", lo=0.0, hi=1.0,
                     lo_open=True)
    frequency: int = opt(20, "Steps between mask updates.", lo=1)
    block: list[int] = opt([1, 1], "Prune whole [rows, cols] blocks (see magnitude.block).", lo=1)



@dataclass
class STROptions:
    s_init: float = opt(-5.0, "Initial s of every layer (threshold sigmoid(s)). The paper uses -3200 on "
                        "ImageNet; short or small runs need about -5..-10.")
    s_weight_decay: float = opt(-1.0, "Weight decay on s (negative: the same as train.weight_decay).")
    target_sparsity: float = opt(0.0, "Target global sparsity (0 = off): instead of a fixed decay on s, every "
                                 "1% of training all s are shifted by the one amount that puts sparsity on a "
                                 "cubic ramp to the target; layers keep their learned differences.",
                                 lo=0.0, hi=1.0, hi_open=True)
    ramp_fraction: float = opt(0.75, "Target mode: fraction of the epochs over which sparsity ramps "
                               "(cubic) to the target.", lo=0.0, hi=1.0, lo_open=True)
    decay_1d: bool = opt(True, "Weight decay also on biases and BatchNorm parameters, as the official STR code "
                         "(no_bn_decay off by default there). false: weights only.")



@dataclass
class GRegOptions:
    variant: Literal[1, 2] = opt(1, "1: GReg-1 (fixed L1 pick, growing penalty); 2: GReg-2 (penalty on all, "
                                 "pick by magnitude, then grow/recover).")
    granularity: Literal["weight", "filter"] = opt("weight", "Groups: single weights (unstructured) or channels "
                                                   "(structured: coupled filters cut together, removed "
                                                   "physically at freeze; the logits stay whole).")
    sparsity: float = opt(0.9, "Fraction of groups pruned in every layer or channel group: min(ceil(r·n), n−1) "
                          "groups, the official count.", lo=0.0, hi=1.0, hi_open=True)
    pick_after: float = opt(0.3, "Fraction of the epochs trained dense before regularisation starts.",
                            lo=0.0, hi=1.0, hi_open=True)
    reg_by: float = opt(0.7, "With reg_granularity_prune = 0: fraction of the epochs by which the penalty "
                        "phases end (granularities are derived from it).", lo=0.0, hi=1.0, lo_open=True)
    update_reg_interval: int = opt(5, "Steps between penalty updates, counted from the first step of the "
                                   "penalty phase (updates at its steps 0, k, 2k, …, as the official code).", lo=1)
    reg_upper_limit: float = opt(1.0, "Penalty at which a layer's pruned groups are done.", lo=0.0, lo_open=True)
    reg_granularity_prune: float = opt(0.0, "Penalty increment on pruned groups (official 1e-4; 0 = derived "
                                       "from reg_by so that short runs finish).", lo=0.0)
    reg_upper_limit_pick: float = opt(1e-2, "GReg-2: penalty on all weights before picking.", lo=0.0, lo_open=True)
    reg_granularity_pick: float = opt(0.0, "GReg-2: increment while picking (official 1e-5; 0 = derived).", lo=0.0)
    reg_granularity_recover: float = opt(-1e-4, "GReg-2: increment on kept groups after the pick (≤ 0).", hi=0.0)
    stabilize_steps: int = opt(0, "Steps with the full penalty on after the update that ends the last layer; "
                               "the groups are removed after that update's step and these (official 10000 on "
                               "CIFAR).", lo=0)
    latency_target: float = opt(0.0, "Filter mode: instead of `sparsity`, cut the one fraction of every channel "
                                "group that divides the measured onnxruntime latency by this factor (see "
                                "prune.filter.latency_target). 0: off.", lo=0.0)
    mag_ratio_limit: float = opt(1000.0, "Filter mode: the penalty also stops on mean|kept|/mean|pruned| (EMA "
                                 "0.9), as the official code: GReg-1 ends a layer when every layer's ratio has "
                                 "reached this, GReg-2 each layer when its own has (its average also runs "
                                 "while picking).", lo=1.0)
    decay_1d: bool = opt(True, "Weight decay also on biases and BatchNorm parameters, as the official GReg code "
                         "(SGD over model.parameters()). false: weights only.")

    def check(self, where: str) -> None:
        if self.latency_target > 0 and self.granularity != "filter":
            raise UserError(f"{where}.latency_target: only granularity 'filter' removes channels; "
                            "use sparsity for single weights")
        if 0 < self.latency_target <= 1:
            raise UserError(f"{where}.latency_target: expected 0 (off) or a factor above 1, got {self.latency_target}")



@dataclass
class LayerRatio:
    layer: str = opt("", "Glob matched against the producing layers of a channel group (e.g. 'layers.2.*').")
    ratio: float = opt(0.5, "Fraction of that group's channels removed.", lo=0.0, hi=1.0, hi_open=True)



AUTO_ROUND_TO = 8  # widths a multiple of 8: SIMD-friendly on x86 (AVX2: 8 floats) and ARM (NEON: 4)


@dataclass
class FilterOptions:
    ratio: float = opt(0.5, "Fraction of the channels removed in every prunable group (at most n−1).",
                       lo=0.0, hi=1.0, hi_open=True)
    layer_ratios: list[LayerRatio] = opt([], "Per-group ratios, first match wins: [[prune.filter.layer_ratios]] "
                                         "tables with layer (glob) and ratio.")
    flops_target: float = opt(0.0, "Divide the model's MACs by this factor (e.g. 2.5); one ratio for every group "
                              "not in layer_ratios is found for it. 0: use ratio.", lo=0.0)
    latency_target: float = opt(0.0, "Divide the model's measured latency by this factor (e.g. 2): one ratio for "
                                "every group not in layer_ratios is found by timing candidate widths in "
                                "onnxruntime at [freeze] latency_batch_size / latency_threads before training "
                                "(NetAdapt-style). 0: off.", lo=0.0)
    importance: Literal["l1", "l2"] = opt("l1", "Channel score: L1 or L2 norm of the producing filters.")
    schedule: Literal["oneshot", "gradual"] = opt("oneshot", "Cut once at prune_after, or gradually (cubic, each "
                                                  "epoch) from prune_after to prune_until.")
    prune_after: float = opt(0.3, "Fraction of the epochs trained dense before the (first) cut.",
                             lo=0.0, hi=1.0, hi_open=True)
    prune_until: float = opt(0.6, "gradual: fraction of the epochs by which the final widths are reached.",
                             lo=0.0, hi=1.0, hi_open=True)
    round_to: int = opt(0, "Keep a multiple of this many channels per group (1: any width). 0: automatic — "
                        "multiples of 8 for ratio and flops_target cuts (any width ran up to 4.4x slower than "
                        "multiples of 8 in onnxruntime: README), and latency_target searches several roundings.",
                        lo=0)
    pow2: bool = opt(False, "Keep every cut width a power of two (round_to is then ignored): on our CPU, "
                     "onnxruntime ran such widths far faster than others (README).")
    decay_1d: bool = opt(False, "Weight decay also on biases and BatchNorm parameters (default: weights only).")

    def rounding(self) -> int:
        """round_to as used for ratio and flops_target cuts (latency_target reads 0 as 'search')."""
        return self.round_to or AUTO_ROUND_TO

    def check(self, where: str) -> None:
        if self.flops_target > 0 and self.latency_target > 0:
            raise UserError(f"{where}.latency_target: set flops_target or latency_target, not both")
        for name in ("flops_target", "latency_target"):
            if 0 < getattr(self, name) <= 1:
                raise UserError(f"{where}.{name}: expected 0 (off) or a factor above 1, got {getattr(self, name)}")



# The built-in methods; `prune.method` may also name a user's class as 'package.module:Class'.
METHODS = ("dense", "magnitude", "lats", "str", "greg", "l1", "gmp", "filter")


@dataclass
class PruneConfig:
    method: str = opt("lats", "Pruning method: " + ", ".join(METHODS) + ", or a user's Pruner subclass as "
                      "'package.module:Class' (its options from [prune.custom], parsed into Class.Options).")
    layers: LayerRule = opt(LayerRule(), "Which layers are pruned.")
    lats: LATSOptions = opt(LATSOptions(), "Options of method 'lats'.")
    magnitude: MagnitudeOptions = opt(MagnitudeOptions(), "Options of method 'magnitude'.")
    str: STROptions = opt(STROptions(), "Options of method 'str'.")
    greg: GRegOptions = opt(GRegOptions(), "Options of method 'greg' (GReg-1 / GReg-2).")
    l1: L1Options = opt(L1Options(), "Options of method 'l1' (one-shot L1 with GReg-1's selection rule).")
    gmp: GMPOptions = opt(GMPOptions(), "Options of method 'gmp' (gradual magnitude, cubic).")
    filter: FilterOptions = opt(FilterOptions(), "Options of method 'filter' (one-shot channel pruning, removed "
                                "physically at freeze).")
    custom: dict = opt({}, "Options of a user's pruner class (method 'package.module:Class').")

    def check(self, where: str) -> None:
        if self.method not in METHODS and ":" not in self.method:
            raise UserError(f"{where}.method: unknown method {self.method!r} (expected one of: {', '.join(METHODS)}, "
                            "or 'package.module:Class')")
