"""Config sections of the training half, as plain dataclasses in light modules.

Nothing here imports torch: validating a TOML file or printing the config reference stays fast.
The modules that do the work (data, models, pruners, train) import their section from here.
"""
