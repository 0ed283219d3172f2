"""Structured pruning that physically removes channels.

graph.py finds which channels are coupled (a dependency graph traced with torch.fx); remove.py
cuts them out of every coupled module, giving a smaller dense model.
"""
from .graph import ChannelGroup, channel_groups
from .remove import harvest_zero_channels, remove_channels, zero_channels

__all__ = ["ChannelGroup", "channel_groups", "remove_channels", "zero_channels", "harvest_zero_channels"]
