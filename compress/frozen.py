"""The frozen folder: plain weights with exact zeros (safetensors) and `model.json`, which says how
to rebuild each variant (model config, input shape, classes, channel structure) without the run's
config, data or checkpoints."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from . import atomic
from .config.model import ModelConfig
from .errors import UserError
from .limits import load_json
from .schema import parse
from .weights import check_finite

FORMAT, VERSION = "sparsepipe-frozen", 1


def write_spec(folder: Path, model: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
               variants: dict[str, dict]) -> None:
    """frozen/model.json. `variants`: name → {"weights": file, "structure": file or None}."""
    atomic.write_json(folder / "model.json", {
        "format": FORMAT, "version": VERSION, "model": asdict(model), "input_shape": list(input_shape),
        "num_classes": num_classes, "variants": variants})


def read_spec(folder: Path) -> dict:
    path = folder / "model.json"
    spec = load_json(path, "the frozen model description")
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise UserError(f"{path}: expected format {FORMAT!r} version {VERSION}")
    shape, classes, variants = spec.get("input_shape"), spec.get("num_classes"), spec.get("variants")
    ok = (isinstance(shape, list) and 1 <= len(shape) <= 4
          and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1 << 16 for d in shape)
          and isinstance(classes, int) and not isinstance(classes, bool) and 2 <= classes <= 1 << 20
          and isinstance(spec.get("model"), dict) and isinstance(variants, dict)
          and all(isinstance(v, dict) and isinstance(v.get("weights"), str) and "/" not in v["weights"]
                  and (v.get("structure") is None or (isinstance(v["structure"], str) and "/" not in v["structure"]))
                  for v in variants.values()))
    if not ok:
        raise UserError(f"{path}: not a frozen model description as sparsepipe writes it (input_shape, "
                        f"num_classes, model and variants with their files); re-run freeze")
    return spec


def load_frozen(folder: str | Path, variant: str) -> nn.Module:
    """The frozen model `variant` (e.g. dense, sparse) in eval mode, physically cut where recorded."""
    from .models import build_model
    from .structured import apply_structure

    folder = Path(folder)
    spec = read_spec(folder)
    entry = spec["variants"].get(variant)
    if entry is None:
        raise UserError(f"{folder / 'model.json'}: no variant {variant!r} (has: {', '.join(spec['variants'])})")
    shape = tuple(spec["input_shape"])
    model = build_model(parse(ModelConfig, spec["model"], f"{folder / 'model.json'}: model"), shape,
                        spec["num_classes"])
    if entry.get("structure"):
        structure_path = folder / entry["structure"]
        try:
            apply_structure(model, load_json(structure_path, "channel structure"), shape)
        except (OSError, ValueError, TypeError, AttributeError) as e:  # a damaged or crafted record
            raise UserError(f"{structure_path}: {str(e).strip().splitlines()[0][:200]}") from None
    path = folder / entry["weights"]
    try:
        state = load_file(str(path))
        for key, value in state.items():
            check_finite(value, key, str(path))
        model.load_state_dict(state)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: does not fit model {spec['model']['name']!r} "
                        f"({str(e).strip().splitlines()[0][:200]})") from None
    return model.eval()
