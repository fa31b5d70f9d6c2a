"""Run checkpoints: `OUTPUT/checkpoints/step-NNNNNNN/`, written atomically, the newest K kept.

A checkpoint holds the engine's state (models, optimizers, RNG per rank), `trainer_state.json`
(step, data position, counters) and the exported generator (`generator.safetensors` +
`generator.json`), loadable without this package's training code.

Atomicity: every rank writes into `.step-NNNNNNN.tmp/`; when all are done, rank 0 writes
`trainer_state.json` last and renames the folder. A folder named `step-*` is therefore always
complete; a `.tmp` folder left by a killed run is removed at the next start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from p2p_dist.errors import UserError
from p2p_dist.fsutil import atomic_write_text, fsync_dir

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")


@dataclass
class TrainerState:
    step: int = 0  # optimisation steps done; also the data position in batches
    world_size: int = 1
    num_workers: int = 0
    seed: int = 0
    images_seen: int = 0
    nonfinite_steps: int = 0
    bad_samples: int = 0
    extra: dict = field(default_factory=dict)


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_resume_point(output_dir: str | os.PathLike, resume: str) -> Path | None:
    """`auto`: newest complete checkpoint (None if there is none); `none`: None; else that path."""
    if resume == "none":
        return None
    if resume == "auto":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"train.resume={resume}: not a complete checkpoint (no {STATE_FILE} in it)")
    return path


def read_state(folder: str | os.PathLike) -> TrainerState:
    data = json.loads((Path(folder) / STATE_FILE).read_text())
    known = TrainerState.__dataclass_fields__
    return TrainerState(**{k: v for k, v in data.items() if k in known})


def remove_stale_temps(output_dir: str | os.PathLike) -> list[Path]:
    """Remove `.step-*.tmp` folders that a killed run left behind (rank 0, before training)."""
    root = checkpoint_root(output_dir)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-") and p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def temp_dir_for(output_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_root(output_dir) / f".{step_dir_name(step)}.tmp"


def finalize(output_dir: str | os.PathLike, step: int, state: TrainerState, keep: int) -> Path:
    """Rank 0, after every rank has written into the temp folder: state file, rename, rotation."""
    tmp = temp_dir_for(output_dir, step)
    atomic_write_text(tmp / STATE_FILE, json.dumps(asdict(state), indent=2))
    fsync_dir(tmp)
    final = checkpoint_root(output_dir) / step_dir_name(step)
    if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    rotate(output_dir, keep)
    return final


def rotate(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    ckpts = list_checkpoints(output_dir)
    doomed = ckpts[:-keep] if keep > 0 else []
    for p in doomed:
        # rename first so that a kill mid-delete never leaves a partial `step-*` folder
        trash = p.with_name(f".{p.name}.deleting.tmp")
        os.replace(p, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed
