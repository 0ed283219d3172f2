"""Stage manifests (STAGE/stage.json) and the skip rule: a stage is up to date when its fingerprint
(config sections it reads + upstream outputs' hashes) matches and its outputs hash as recorded."""
from __future__ import annotations

import hashlib
import json
import time

from compress import atomic
from compress.errors import UserError
from compress.limits import load_json

from ..config import CONFIG_VERSION
from .provenance import stage_inputs, versions
from .run import Run
from .stage import Stage


def read_manifest(run: Run, stage: Stage) -> dict | None:
    path = run.dir / stage.folder / "stage.json"
    try:
        manifest = load_json(path, "stage manifest")
    except UserError:
        return None  # missing, oversized or corrupt: the stage is not done
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("outputs"), dict) else None


def config_read(table: dict, keys: tuple[str, ...]) -> dict:
    """The parts of the resolved config `keys` name: whole sections, or 'section.field'."""
    out = {}
    for key in keys:
        section, _, field = key.partition(".")
        out[key] = table[section][field] if field else table[section]
    return out


def fingerprint(run: Run, stage: Stage, upstream: list[Stage]) -> str:
    """Hash of what decides the stage's result: its config sections and its upstream stages' outputs."""
    outputs = {}
    for up in upstream:
        manifest = read_manifest(run, up)
        if manifest is None:
            raise UserError(f"{run.dir}: stage '{stage.name}' needs stage '{up.name}' first "
                            f"(no {up.folder}/stage.json)")
        outputs[up.name] = manifest["outputs"]
    blob = {"stage": stage.name, "config_version": CONFIG_VERSION,
            "config": config_read(run.table, stage.config), "upstream": outputs, "inputs": stage_inputs(run, stage)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def up_to_date(run: Run, stage: Stage, fp: str) -> bool:
    manifest = read_manifest(run, stage)
    if manifest is None or manifest.get("fingerprint") != fp:
        return False
    for rel, digest in manifest["outputs"].items():
        path = run.dir / rel
        if not path.is_file() or atomic.sha256_file(path) != digest:
            return False
    return True


def write_manifest(run: Run, stage: Stage, fp: str, outputs: list[str], upstream: list[Stage],
                   seconds: float) -> None:
    atomic.write_json(run.dir / stage.folder / "stage.json", {
        "stage": stage.name, "fingerprint": fp, "wall_time_s": round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config_read(run.table, stage.config),
        "inputs": {up.name: (read_manifest(run, up) or {}).get("fingerprint") for up in upstream},
        "outputs": {rel: atomic.sha256_file(run.dir / rel) for rel in outputs},
        "versions": versions()})
