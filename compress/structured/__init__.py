"""Structured pruning that physically removes channels.

graph.py finds which channels are coupled (a dependency graph traced with torch.fx); remove.py
cuts them out of every coupled module, giving a smaller dense model; importance.py scores
channels and budget.py decides how many each group keeps; harvest.py cuts what pruning left dead.
"""
from .budget import drop_lowest, group_key, group_keep_count, keep_count, keep_counts, macs_with_widths, widths_for_latency, ratio_for_macs
from .graph import ChannelGroup, channel_groups
from .harvest import Harvest, harvest_channels
from .importance import channel_importance
from .remove import remove_channels, zero_channels
from .structure import apply_structure, harvest

__all__ = ["ChannelGroup", "channel_groups", "remove_channels", "zero_channels", "Harvest", "harvest_channels",
           "channel_importance", "drop_lowest", "group_keep_count", "keep_count", "group_key", "macs_with_widths", "ratio_for_macs", "keep_counts", "widths_for_latency",
           "harvest", "apply_structure"]
