"""Channel removal on every torchvision classification model (or a timm set, --zoo timm): exact,
refused (naming the blocker), crash or WRONG, with the MAC reduction when every prunable group
loses 30% of its channels (block-balanced random keep sets, seeded).

Each model runs in a child process with a time limit (random weights, BatchNorm statistics made
non-trivial, layers initialised to zero given random weights; 64x64 input, 96 for inception_v3, 224 for the vision transformers; timm models at
64x64, or their configured input size when they do not run at 64). "exact": the cut model's output equals
the model with those channels zeroed (relative difference < 1e-4). A group whose removed channels
would carry a constant to the next layers (StarReLU's bias), which a plain cut refuses, is zeroed and
then cut by the harvest, folding the constants into those layers' biases, as the pipeline's freeze
stage does ("harvested_groups").

With --torch-pruning, Torch-Pruning (`pip install torch-pruning`) runs beside it on the same model,
input and ratio, in its own child process: its generic call (MetaPruner, L1 magnitude importance,
pruning_ratio 0.3 per layer, the classifier ignored, nothing model-specific), one step; "works"
when the pruned model runs; MACs are counted by our counter on both, so the medians compare; `channels_removed` (the share of
conv and Linear output channels cut, each tool) shows where a tool cut more than the ratio asks.

    .venv/bin/python tools/bench_torchvision_sweep.py            # writes results/torchvision-sweep/
    .venv/bin/python tools/bench_torchvision_sweep.py --zoo timm --torch-pruning   # results/timm-sweep/
    .venv/bin/python tools/bench_torchvision_sweep.py --zoo timm-extra   # results/timm-extra-sweep/
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# timm models across families (issue 25's list); `timm` is the optional extra `sparsepipe[compare]`
TIMM_MODELS = """resnet18 resnet50 resnext26ts seresnet18 skresnet18 resnet26d ecaresnet26t efficientnet_b0
tf_efficientnet_lite0 mobilenetv2_100 mobilenetv3_large_100 mobilenetv3_small_100 mobilenetv4_conv_small
ghostnet_100 mixnet_s rexnet_100 tinynet_a lcnet_050 fbnetc_100 mnasnet_100 densenet121 inception_v3
repvgg_a0 mobileone_s0 cspresnet50 cspdarknet53 dpn68 gernet_s regnetx_002 regnety_004 convnext_atto
convnextv2_atto vit_tiny_patch16_224 deit_tiny_patch16_224 swin_tiny_patch4_window7_224 levit_128s
mixer_s16_224 nf_resnet26 dm_nfnet_f0 mobilevit_xxs efficientvit_b0 hrnet_w18_small res2net50_14w_8s
selecsls42b dla34 vgg11 poolformer_s12 resmlp_12_224 resnetv2_50x1_bit convformer_s18 caformer_s18""".split()
# 30 more that no rule was written for (a check for wrong cuts and crashes on what users bring)
TIMM_EXTRA = """coat_lite_tiny crossvit_tiny_240 pvt_v2_b0 twins_svt_small xcit_tiny_12_p16_224 tresnet_m visformer_tiny
nest_tiny edgenext_xx_small fastvit_t8 repvit_m1 efficientformer_l1 efficientformerv2_s0 tiny_vit_5m_224
inception_next_tiny hgnetv2_b0 ghostnetv2_100 sequencer2d_s gcvit_xxtiny davit_tiny coatnet_nano_rw_224
ese_vovnet19b_dw regnetz_b16 resnest14d halonet26t lambda_resnet26t cs3darknet_s eca_nfnet_l0
mobilenetv4_hybrid_medium fbnetv3_b""".split()


def model_and_input(name: str):
    """The model `name` ('timm:<name>' for timm; random weights, seeded; BatchNorm statistics made
    non-trivial) in eval mode, and the input it is swept at."""
    import torch

    torch.manual_seed(0)
    if name.startswith("timm:"):
        model, size = _timm_model(name[5:])
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None).eval()
        size = 224 if any(k in name for k in ("vit", "swin", "maxvit")) else 96 if "inception" in name else 64
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        # a layer initialised to zero (torchvision's ViT head) would make every output 0 and the
        # comparison with the masked model vacuous
        weight = getattr(m, "weight", None)
        if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)) and not weight.detach().any():
            torch.nn.init.normal_(weight.data, std=0.02)
    return model, torch.randn(2, 3, size, size)


def _timm_model(name: str):
    """A timm model and the smallest of 64 and its configured input size it runs at."""
    import timm
    import torch

    model = timm.create_model(name, pretrained=False).eval()
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
        return model, 64
    except Exception:  # a fixed patch grid / window size: its own input size
        return model, int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])


def child_torch_pruning(name: str) -> dict:
    """Torch-Pruning's generic call on `name`: its MAC reduction at ratio 0.3, counted by our counter."""
    import torch
    import torch_pruning as tp

    from compress.flops import count_macs

    model, x = model_and_input(name)
    before = count_macs(model, x.shape[1:])["dense"]
    ignored = [m for m in model.modules()  # the classifier: a Linear, or squeezenet's 1x1 conv, to 1000 classes
               if getattr(m, "out_features", None) == 1000 or getattr(m, "out_channels", None) == 1000]
    ignored += [getattr(model, "get_classifier", lambda: None)()] if hasattr(model, "get_classifier") else []
    ignored = [m for m in ignored if isinstance(m, torch.nn.Module)]
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.3, ignored_layers=ignored)
    widths = channel_widths(model)
    pruner.step()
    with torch.no_grad():
        model(x)
    return {"status": "works", "mac_reduction": 1 - count_macs(model, x.shape[1:])["dense"] / before,
            "channels_removed": 1 - channel_widths(model) / widths}


def channel_widths(model) -> int:
    """Output channels of every conv and Linear (what a ratio of 0.3 asks to cut 30% of, at most)."""
    import torch

    return sum(m.out_channels if isinstance(m, torch.nn.modules.conv._ConvNd) else m.out_features
               for m in model.modules() if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)))


def child(name: str) -> dict:
    import copy
    from collections import Counter

    import torch

    from compress.flops import count_macs
    from compress.structured import channel_groups, harvest_channels, remove_channels, zero_channels
    from compress.structured.budget import group_keep_count, random_kept

    model, x = model_and_input(name)
    try:
        groups = channel_groups(model, x)
    except ValueError as e:  # cannot trace or run it: a one-line refusal
        return {"model": name, "status": "refused", "mac_reduction": 0.0, "top_blockers": {str(e)[:160]: 1}}
    prunable = [g for g in groups if g.prunable]
    gen = torch.Generator().manual_seed(0)
    params = sum(p.numel() for p in model.parameters())
    in_groups = sum(p.numel() for g in prunable for n in g.producers
                    for k, p in model.get_submodule(n).named_parameters() if k.startswith("weight"))
    masked, smaller = copy.deepcopy(model), copy.deepcopy(model)
    cut = refused = harvested = 0
    for group, same in zip(prunable, copy.deepcopy(prunable)):
        keep = random_kept(group, group_keep_count(group, 0.3), gen)
        drop = torch.tensor(sorted(set(range(same.size)) - set(keep.tolist())), dtype=torch.long)
        try:
            remove_channels(smaller, group, keep)
        except ValueError as e:
            if "constant" not in str(e):
                refused += 1
                continue
            # removed channels would carry a constant (StarReLU's bias): zeroed here, cut below by the
            # harvest, which folds the constants into the next layers' biases (as the pipeline's freeze)
            zero_channels(smaller, group, drop)  # the live group: its offsets follow the cuts before
            harvested += 1
        zero_channels(masked, same, drop)
        cut += 1
    if harvested:
        harvest_channels(smaller, channel_groups(smaller, x), tuple(x.shape[1:]))
    with torch.no_grad():
        want, got = masked(x), smaller(x)
    if not want.abs().max() > 0:
        raise RuntimeError("the masked model's output is all zeros: the comparison would prove nothing")
    diff = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
    before, after = count_macs(model, x.shape[1:])["dense"], count_macs(smaller, x.shape[1:])["dense"]
    blockers = Counter(b.split(" ")[0] + " " + b.split(" ")[1] if " " in b else b
                       for g in groups if g.producers and not g.prunable for b in g.blockers[:1])
    status = "wrong" if diff >= 1e-4 else "exact" if cut else "refused"
    return {"model": name, "status": status, "groups": len(groups), "prunable_groups": len(prunable),
            "cut_groups": cut, "refused_groups": refused, "harvested_groups": harvested, "params": params,
            "prunable_param_share": in_groups / params, "mac_reduction": 1 - after / before,
            "channels_removed": 1 - channel_widths(smaller) / channel_widths(model),
            "max_rel_diff": diff, "top_blockers": dict(blockers.most_common(3))}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy.report import save_png

    rows = sorted((r for r in rows if "mac_reduction" in r), key=lambda r: r["mac_reduction"])
    fig, ax = plt.subplots(figsize=(14, 4))
    colours = {"exact": "tab:green", "refused": "tab:gray", "wrong": "tab:red"}
    ax.bar(range(len(rows)), [100 * r["mac_reduction"] for r in rows], color=[colours[r["status"]] for r in rows])
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=90, fontsize=6)
    ax.set(ylabel="MAC reduction at ratio 0.3 (%)", title=f"{title}: channel removal")
    fig.tight_layout()
    save_png(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", choices=("torchvision", "timm", "timm-extra"), default="torchvision")
    p.add_argument("--out", type=Path, help="default: results/torchvision-sweep or results/timm-sweep")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per model")
    p.add_argument("--models", default="", help="comma-separated subset (default: every classification model)")
    p.add_argument("--torch-pruning", action="store_true", help="run Torch-Pruning beside it on every model")
    p.add_argument("--update", action="store_true", help="replace only these models' rows in the existing results")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-tp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    if args.child_tp:
        print(json.dumps(child_torch_pruning(args.child_tp)))
        return
    import torchvision
    from tqdm import tqdm

    from compress import atomic

    out = args.out or ROOT / "results" / f"{args.zoo}-sweep"
    if args.models:
        names = args.models.split(",")
    else:
        names = {"timm": TIMM_MODELS, "timm-extra": TIMM_EXTRA}.get(args.zoo) or \
            torchvision.models.list_models(module=torchvision.models)
    if args.zoo.startswith("timm"):
        names = [n if n.startswith("timm:") else f"timm:{n}" for n in names]
    old = json.loads((out / "results.json").read_text())["rows"] if args.update else []
    rows = [r for r in old if r["model"] not in names]
    for name in tqdm(names, desc="models"):
        row = {"model": name, **in_child("--child", name, args.timeout)}
        if args.torch_pruning:
            row["torch_pruning"] = in_child("--child-tp", name, args.timeout)
        elif any(r["model"] == name and "torch_pruning" in r for r in old):  # --update: its code did not change
            row["torch_pruning"] = next(r["torch_pruning"] for r in old if r["model"] == name)
        rows.append(row)
        tp = row.get("torch_pruning", {})
        tqdm.write(f"{name}: {row['status']} {100 * row.get('mac_reduction', 0):.0f}% {row.get('top_blockers', '')}"
                   + (f" | Torch-Pruning: {tp['status']} {100 * tp.get('mac_reduction', 0):.0f}%" if tp else ""))
        atomic.write_json(out / "results.json", summary(rows))
    plot(rows, out / "sweep.png", "timm models" if args.zoo.startswith("timm") else "torchvision classification models")


def in_child(flag: str, name: str, timeout: float) -> dict:
    """One child process's JSON answer, or {"status": "crash" | "timeout"}, with its seconds."""
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, __file__, flag, name], capture_output=True, text=True, timeout=timeout)
        if res.returncode == 0:
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row.pop("model", None)
        else:
            last = (res.stderr.strip().splitlines() or ["?"])[-1]
            row = {"status": "crash", "error": last[:300]}
    except subprocess.TimeoutExpired:
        row = {"status": "timeout"}
    return {**row, "seconds": round(time.perf_counter() - t0, 1), "commit": commit()}


def commit() -> str:
    """The checkout's commit (a row records the code that produced it; --update mixes commits)."""
    res = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(rows: list[dict]) -> dict:
    """Counts and medians; with Torch-Pruning beside it, both medians over the models where both work."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("exact", "refused", "crash", "wrong", "timeout")}
    out = {"machine": platform.platform(), "ratio": 0.3, "counts": counts,
           "median_mac_reduction": median([r["mac_reduction"] for r in rows if "mac_reduction" in r])}
    if any("torch_pruning" in r for r in rows):
        tp = [r["torch_pruning"] for r in rows if "torch_pruning" in r]
        both = [r for r in rows if r["status"] == "exact" and r.get("torch_pruning", {}).get("status") == "works"]
        out["torch_pruning"] = {
            "version": torch_pruning_version(),
            "counts": {s: sum(t["status"] == s for t in tp) for s in ("works", "crash", "timeout")},
            "both_work": len(both),
            "median_mac_reduction_where_both_work": {
                "sparsepipe": median([r["mac_reduction"] for r in both]),
                "torch_pruning": median([r["torch_pruning"]["mac_reduction"] for r in both])}}
    return {**out, "rows": rows}


def torch_pruning_version() -> str:
    from importlib.metadata import version
    return version("torch-pruning")


if __name__ == "__main__":
    main()
