"""The report as a typed object: what validate writes to report.json and what gate, the Markdown
report and the CLI read. `Report.from_dict` checks every field they read, so a report with a missing
or wrongly typed value is a one-line error naming the field, never a traceback."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from compress.errors import UserError


def _number(value, path: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{source}: field {path!r}: expected a finite number, got {value!r:.80}")
    return value


def _fraction(value, path: str, source: str) -> float:
    """A number in [0, 1] (an accuracy, an agreement, a sparsity): anything else is bad input."""
    value = _number(value, path, source)
    if not 0 <= value <= 1:
        raise UserError(f"{source}: field {path!r}: {value!r} is outside [0, 1]")
    return value


def _classes(value, source: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
        raise UserError(f"{source}: field 'classes': expected an integer >= 2, got {value!r}")
    return value


FRACTIONS = ("accuracy", "torch_accuracy", "agreement_with_torch")


def _table(value, path: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{source}: field {path!r}: expected an object, got {type(value).__name__}")
    return value


@dataclass
class Scores:
    """One model's accuracy on the test set, in onnxruntime and in PyTorch."""
    accuracy: float
    torch_accuracy: float
    agreement_with_torch: float
    max_abs_diff_vs_torch: float
    mean_abs_diff_vs_torch: float
    samples: int
    source: str | None = None  # dense only: "weights" (the given model, not retrained) or "trained"


@dataclass
class Sparsity:
    global_: float  # "global" in JSON
    per_layer: dict[str, float]
    layers_pruned: int
    counted_from: str = ""  # how the fractions were counted (which files, against which sizes)


@dataclass
class GateResult:
    passed: bool
    failures: list[str]
    checks: list[dict]
    thresholds: dict


@dataclass
class Report:
    run: str
    method: str
    model: str
    data: str
    dense: Scores
    sparse: Scores
    variants: dict[str, dict]   # other ONNX variants: their Scores fields plus "latency"
    sparsity: Sparsity
    pruner: dict
    structure: dict | None      # channels cut at freeze (None when nothing was harvested)
    latency: dict               # per model summaries, batch_size, threads, and "ratio" (sparse / dense p50)
    size: dict
    export: dict
    training: dict
    versions: dict
    machine: dict
    preprocessing: dict = field(default_factory=dict)  # raw input → model input (also in every ONNX file)
    warnings: list[str] = field(default_factory=list)
    spiking: dict | None = None
    gate: GateResult | None = None
    artifacts: dict = field(default_factory=dict)
    classes: int | None = None  # of the test data: what chance accuracy is (1 / classes)

    @property
    def latency_ratio(self) -> float:
        return self.latency["ratio"]

    @property
    def macs_ratio(self) -> float:
        st = self.structure or {}
        return st["macs_after"] / st["macs_before"] if st.get("macs_before") else 1.0

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["sparsity"] = {"global": out["sparsity"].pop("global_"), **out["sparsity"]}
        if out["spiking"] is None:
            del out["spiking"]
        for key in ("dense", "sparse"):
            if out[key]["source"] is None:
                del out[key]["source"]
        return out

    @classmethod
    def from_dict(cls, d: dict, source: str = "report") -> "Report":
        """A Report from parsed JSON, checking every field the gate and the summaries read."""
        _table(d, "(top level)", source)

        def scores(key: str) -> Scores:
            t = _table(d.get(key, {}), key, source)
            values = {}
            for f in dataclasses.fields(Scores):
                if f.name == "source":
                    values["source"] = t.get("source")
                    continue
                if f.name not in t:
                    raise UserError(f"{source}: missing field {key + '.' + f.name!r}")
                check = _fraction if f.name in FRACTIONS else _number
                values[f.name] = check(t[f.name], f"{key}.{f.name}", source)
                if f.name not in FRACTIONS and values[f.name] < 0:
                    raise UserError(f"{source}: field {key + '.' + f.name!r}: {values[f.name]!r} is negative")
            return Scores(**values)

        dense, sparse = scores("dense"), scores("sparse")  # first: what every gate check reads
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in d]
        if missing:
            raise UserError(f"{source}: missing field {missing[0]!r}")
        sp = _table(d["sparsity"], "sparsity", source)
        if "global" not in sp:
            raise UserError(f"{source}: missing field 'sparsity.global'")
        per_layer = _table(sp.get("per_layer", {}), "sparsity.per_layer", source)
        for name, value in per_layer.items():
            _fraction(value, f"sparsity.per_layer.{name}", source)
        counted_from = sp.get("counted_from", "")
        if not isinstance(counted_from, str):
            raise UserError(f"{source}: field 'sparsity.counted_from': expected text, found {counted_from!r:.80}")
        sparsity = Sparsity(_fraction(sp["global"], "sparsity.global", source), per_layer,
                            int(_number(sp.get("layers_pruned", 0), "sparsity.layers_pruned", source)),
                            counted_from[:1000])
        latency = _table(d["latency"], "latency", source)
        if "ratio" in latency and not _number(latency["ratio"], "latency.ratio", source) > 0:
            raise UserError(f"{source}: field 'latency.ratio': {latency['ratio']!r} is not positive")
        structure = d["structure"]
        if structure is not None:
            _table(structure, "structure", source)
            # what the report and the gate read: all four counts once channels were cut, or with macs_before
            needed = ("macs_before", "macs_after", "params_before", "params_after") \
                if structure.get("channels_removed") else ("macs_after",) if "macs_before" in structure else ()
            for k in ("macs_before", "macs_after", "params_before", "params_after", "channels_removed"):
                if k not in structure and k in needed:
                    raise UserError(f"{source}: missing field 'structure.{k}'")
                if k in structure and _number(structure[k], f"structure.{k}", source) < 0:
                    raise UserError(f"{source}: field 'structure.{k}': {structure[k]!r} is negative")
            if structure.get("channels_removed"):
                widths = _table(structure.get("widths", {}), "structure.widths", source)
                if not all(isinstance(v, list) and len(v) == 2 for v in widths.values()):
                    raise UserError(f"{source}: field 'structure.widths': expected [before, after] per group")
        gate = d.get("gate")
        if gate is not None:
            g = _table(gate, "gate", source)
            lists = {k: g.get(k, []) for k in ("failures", "checks")}
            for k, v in lists.items():
                if not isinstance(v, list):
                    raise UserError(f"{source}: field 'gate.{k}': expected a list, got {type(v).__name__}")
            gate = GateResult(bool(g.get("passed")), lists["failures"], lists["checks"],
                              dict(_table(g.get("thresholds", {}), "gate.thresholds", source)))
        for key in ("variants", "pruner", "size", "export", "training", "versions", "machine"):
            _table(d[key], key, source)
        return cls(run=str(d["run"]), method=str(d["method"]), model=str(d["model"]), data=str(d["data"]),
                   dense=dense, sparse=sparse, variants=d["variants"], sparsity=sparsity,
                   pruner=d["pruner"], structure=structure, latency=latency, size=d["size"], export=d["export"],
                   training=d["training"], versions=d["versions"], machine=d["machine"],
                   preprocessing=_table(d.get("preprocessing", {}), "preprocessing", source),
                   warnings=[str(w) for w in d.get("warnings", [])] if isinstance(d.get("warnings"), list) else [],
                   spiking=d.get("spiking"),
                   gate=gate, artifacts=_table(d.get("artifacts", {}), "artifacts", source),
                   classes=_classes(d.get("classes"), source))
