"""The channel rule of EfficientViT's linear attention (timm's `efficientvit_mit.LiteMLA`).

LiteMLA makes q, k and v with one 1x1 conv (`qkv`, 3·dim rows per head, side by side), adds
multi-scale copies of them (`aggreg`: a depthwise conv, then a 1x1 conv grouped by dim rows, three
groups per head), lays each scale's heads side by side, and runs ReLU linear attention per head:
out = q (k^T [v 1]) normalised by its last column. A head whose rows are zero has q = k = 0, so its
output is 0 / eps = 0 exactly: whole heads can go. Its forward sizes everything from its input
(`reshape(B, -1, 3 * dim, H * W)`), so the cut model runs with smaller convs alone: `qkv` produces the
heads, the aggregation convs pass them through (the grouped one losing whole groups), and `proj`
reads each head once per scale.
"""
from __future__ import annotations

from torch import nn

from .rules import register_module_rule_by_name

def _plain(m) -> bool:
    """timm's ConvNormAct without an activation (a norm, if any, is checked by its exact type: timm's
    BatchNormAct2d is a BatchNorm2d holding an activation)."""
    return isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "act", None), nn.Identity)


def lite_mla(w, node, m) -> None:
    name, x = node.target, w.first(node)
    dim, qkv, proj, aggreg = m.dim, m.qkv, m.proj, m.aggreg
    rows = 3 * dim  # a head's q, k and v rows
    heads = qkv.conv.out_channels // rows if _plain(qkv) else 0
    scales = 1 + len(aggreg)
    ok = _plain(qkv) and isinstance(qkv.norm, nn.Identity) and qkv.conv.groups == 1 and heads > 0 \
        and qkv.conv.out_channels == heads * rows and isinstance(m.kernel_func, nn.ReLU) \
        and _plain(proj) and proj.conv.groups == 1 and proj.conv.in_channels == scales * heads * dim \
        and type(proj.norm) in (nn.Identity, nn.BatchNorm2d) \
        and all(isinstance(op, nn.Sequential) and len(op) == 2 and all(isinstance(c, nn.Conv2d) for c in op)
                and op[0].groups == op[0].in_channels == op[0].out_channels == heads * rows
                and op[1].in_channels == op[1].out_channels == heads * rows and op[1].groups == 3 * heads
                and op[0].bias is None and op[1].bias is None for op in aggreg)
    if not ok or (x in w.label and (w.axis[x] != 1 or any(per != 1 for _, per in w.label[x]))):
        why = f"{name} ({type(m).__name__}): a linear attention layout this rule does not know"
        w.block(node, why)
        w.start(node, node.meta["tensor_meta"].shape[1], blocker=why)
        return
    if x in w.label:
        w.join(f"{name}.qkv.conv", w.label[x], "consumer", x)
    group = w.g.get(w.g.new(heads))
    group.producers.append(f"{name}.qkv.conv")
    group.layout[f"{name}.qkv.conv"] = (rows, 1)
    for i in range(len(aggreg)):
        for j in (0, 1):  # depthwise, then grouped by dim rows: a head is whole groups of both
            group.passthrough.append(f"{name}.aggreg.{i}.{j}")
            group.passthrough_per[f"{name}.aggreg.{i}.{j}"] = rows
    w.join(f"{name}.proj.conv", ((group.id, dim),) * scales, "consumer")  # each head once per scale
    w.start(node, proj.conv.out_channels, producer=f"{name}.proj.conv")
    if isinstance(proj.norm, nn.BatchNorm2d):
        w.g.get(w.label[node][0][0]).passthrough.append(f"{name}.proj.norm")


register_module_rule_by_name("timm.models.efficientvit_mit.LiteMLA", lite_mla)
