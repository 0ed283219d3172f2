"""Which channel widths onnxruntime runs fast: ResNet-20 cut to several stage widths, timed side by side.

No training is needed (latency does not depend on the weights): the model is cut to each set of
stage widths, exported, and all variants are timed in interleaved rounds (1 thread, batch 1 and
32). Writes results/widths/results.json.

    .venv/bin/python tools/bench_widths.py
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress import atomic  # noqa: E402
from compress.models import ModelConfig, build_model  # noqa: E402
from compress.structured import channel_groups, remove_channels  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from compress.flops import count_macs  # noqa: E402
from deploy.latency import compare_latency, make_session  # noqa: E402

SHAPE = (1, 28, 28)
WIDTHS = [(16, 32, 64), (8, 16, 32), (16, 16, 32), (8, 16, 48), (8, 24, 40), (12, 24, 48), (16, 32, 32),
          (16, 32, 48), (8, 32, 64)]


def cut_to(model: torch.nn.Module, stage_widths: tuple[int, int, int]) -> torch.nn.Module:
    """ResNet-20 with every channel group of stage i cut to stage_widths[i] (its first channels)."""
    model = copy.deepcopy(model)
    full = {16: 0, 32: 1, 64: 2}
    for g in [g for g in channel_groups(model, torch.zeros(2, *SHAPE)) if g.prunable]:
        remove_channels(model, g, torch.arange(stage_widths[full[g.size]]))
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--out", type=Path, default=Path("results/widths"))
    args = p.parse_args(argv)
    base = build_model(ModelConfig(name="resnet20"), SHAPE, 10).eval()
    x = torch.randn(32, *SHAPE)
    sessions, macs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in WIDTHS:
            name = "/".join(map(str, w))
            model = cut_to(base, w)
            path = Path(tmp) / f"{name.replace('/', '_')}.onnx"
            export_onnx(model, x[:4], path)
            sessions[name], macs[name] = make_session(path, threads=1), count_macs(model, SHAPE)["dense"]
        rows = []
        for batch in (1, 32):
            lat = compare_latency(sessions, np.ascontiguousarray(x[:batch].numpy()), warmup=10, runs=30,
                                  seconds=args.seconds)
            dense = lat["16/32/64"]["p50_ms"]
            for name in sessions:
                rows.append({"widths": name, "batch": batch, "macs_ratio": macs[name] / macs["16/32/64"],
                             "p50_ms": lat[name]["p50_ms"], "latency_ratio": lat[name]["p50_ms"] / dense})
                print(f"{name:10s} b{batch:<3} MACs x{rows[-1]['macs_ratio']:.3f} latency x{rows[-1]['latency_ratio']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(args.out / "results.json", {"model": "resnet20", "input": list(SHAPE), "threads": 1,
                                                  "machine": platform.platform(), "onnxruntime": ort.__version__,
                                                  "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
