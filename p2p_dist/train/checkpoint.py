"""Run checkpoints: `OUTPUT/checkpoints/step-NNNNNNN/`, written atomically, the newest K kept.

`Checkpointer` owns everything on disk about a run (docs/architecture.md, `checkpoint.py`). A
checkpoint holds the engine's state (models, optimizers, RNG per rank), `trainer_state.json` (step,
data position, counters) and the exported generator (`generator.safetensors` + `generator.json`).
Every rank writes into `.step-NNNNNNN.tmp/`; when all are done, rank 0 writes `trainer_state.json`
last and renames the folder, so a folder named `step-*` is always complete; a `.tmp` folder left by
a killed run is removed at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from p2p_dist.errors import StorageError, UserError
from p2p_dist.fsutil import atomic_write_text, check_writable_dir, fsync_dir
from p2p_dist.train.monitor import METRICS_FILE

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")


@dataclass
class TrainerState:
    step: int = 0  # optimisation steps done
    data_batches: int = 0  # micro-batches this rank's stream delivered: step x train.grad_accum
    world_size: int = 1
    num_workers: int = 0
    seed: int = 0
    images_seen: int = 0
    nonfinite_steps: int = 0
    bad_samples: int = 0
    settings: dict = field(default_factory=dict)  # RESUME_SETTINGS of the config that wrote it
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


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """The step of a `step-NNNNNNN` folder (None for another name)."""
    m = _STEP_DIR.match(Path(folder).name)
    return int(m.group(1)) if m else None


def last_before(output_dir: str | os.PathLike, step: int) -> Path | None:
    """The newest complete checkpoint written at or before `step`."""
    kept = [c for c in list_checkpoints(output_dir) if checkpoint_step(c) <= step]
    return kept[-1] if kept else None


def truncate_metrics(output_dir: Path, step: int) -> None:
    """On resume, drop metric lines a killed run wrote after the checkpoint it resumes from."""
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def find_resume_point(output_dir: str | os.PathLike, resume: str) -> Path | None:
    """`auto`: newest complete checkpoint (None if there is none); `none`: None; else that path."""
    if resume == "none":
        return None
    if resume == "auto":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    return explicit_checkpoint(resume)


def explicit_checkpoint(resume: str) -> Path:
    """train.resume=PATH: a complete checkpoint folder, or one line saying what it is not."""
    path = Path(resume)
    if not path.exists():
        raise UserError(f"train.resume={resume}: no such checkpoint folder (use auto, none or a step-* folder)")
    if not (path / STATE_FILE).is_file():
        raise UserError(f"train.resume={resume}: not a complete checkpoint (no {STATE_FILE} in it)")
    return path


def read_state(folder: str | os.PathLike) -> TrainerState:
    data = json.loads((Path(folder) / STATE_FILE).read_text())
    known = TrainerState.__dataclass_fields__
    data.setdefault("data_batches", data.get("step", 0))  # written before train.grad_accum: one batch a step
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


# --- resuming into the same architecture, and writes that fail ------------------------------------

_ARCH_KEYS = {
    "name": "model.generator",
    "ngf": "model.ngf",
    "norm": "model.norm",
    "in_channels": "data.task or the shards (input channels)",
    "out_channels": "data.task or the shards (output channels)",
    "input_range": "data.normalize or the shards (input pixel range)",
    "output_range": "data.normalize or the shards (output pixel range)",
}


def check_architecture(folder: str | os.PathLike, expected: dict) -> None:
    """Refuse to resume a checkpoint whose generator (its generator.json) differs from `expected`
    (a GeneratorSpec dict): loading it would fail with a wall of tensor-shape errors."""
    try:
        saved = json.loads((Path(folder) / "generator.json").read_text())
    except (OSError, ValueError):
        return  # no readable spec: the state load reports any mismatch itself
    if not isinstance(saved, dict):
        return
    diff = [
        f"{key} {saved.get(k)!r} (this config: {expected.get(k)!r})"
        for k, key in _ARCH_KEYS.items()
        if saved.get(k) != expected.get(k)
    ]
    if diff:
        raise UserError(
            f"checkpoint {folder} was written for another generator: {'; '.join(diff)}; "
            "use a new train.output_dir, or train.resume=none to start over"
        )


RESUME_SETTINGS = ("data.train", "data.task", "data.direction", "train.batch_size", "train.seed")
RNG_FILES = ("random_states_{rank}.pkl", "rng_state_{rank}.pt")  # Accelerate's, the DeepSpeed engine's


def run_settings(cfg) -> dict:
    """The settings a resumed run must share with the checkpoint (train.resume_mismatch)."""
    flat = cfg.flat_dict()
    return {key: flat[key] for key in RESUME_SETTINGS}


def check_resume(folder: Path, cfg, spec: dict, world_size: int, max_steps: int) -> list[str]:
    """Rank 0, before the run writes anything: refuse (one line) a checkpoint of another generator, one
    past the run's last step, or, unless train.resume_mismatch=accept, one written with other
    RESUME_SETTINGS or missing a rank's RNG state; returns the warnings of an accepted mismatch."""
    check_architecture(folder, spec)
    state = read_state(folder)
    if state.step > max_steps:
        steps = (
            f"train.max_steps={max_steps}"
            if cfg.train.max_steps
            else f"train.epochs={cfg.train.epochs:g} ({max_steps} steps)"
        )
        raise UserError(
            f"{steps} is below the {state.step} steps checkpoint {folder} has done: raise it to train on, "
            "or use a new train.output_dir (train.resume=none starts over)"
        )
    saved, now = state.settings or {"train.seed": state.seed}, run_settings(cfg)  # older: the seed only
    problems = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in RESUME_SETTINGS if k in saved and saved[k] != now[k]]
    no_rng = [
        r
        for r in range(min(state.world_size, world_size))  # a new rank of a bigger run starts from its seed
        if not any((folder / name.format(rank=r)).is_file() for name in RNG_FILES)
    ]
    if no_rng:
        problems.append(f"no RNG state for rank {', '.join(map(str, no_rng))} (dropout and jitter would not continue)")
    if not problems:
        return []
    if cfg.train.resume_mismatch == "accept":
        return [
            f"resuming {folder} with this config (train.resume_mismatch=accept), not exactly: {'; '.join(problems)}"
        ]
    raise UserError(
        f"checkpoint {folder} does not match this config: {'; '.join(problems)}; pass train.resume_mismatch=accept "
        "to resume it anyway (not an exact continuation), or use a new train.output_dir (train.resume=none starts over)"
    )


def load_failure(folder: str | os.PathLike, exc: BaseException) -> UserError:
    """One line for a checkpoint whose saved state does not fit the models of this config."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()] or [type(exc).__name__]
    detail = next((x for x in lines if x.startswith(("size mismatch", "Missing key", "Unexpected key"))), lines[0])
    return UserError(
        f"cannot resume from {folder}: its saved state does not fit the models of this config "
        f"({detail[:200]}); model.* and loss.* must match the run that wrote it: use a new "
        "train.output_dir, or train.resume=none to start over"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or 'I/O error'} ({name}){where}"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "inline_container" in first or "PytorchStreamWriter" in first:  # torch.save's zip writer
        return f"a file could not be written completely (torch: {first[:160]})"
    return first[:200]


def _free_space(folder: Path) -> str:
    for p in (folder, *folder.parents):
        if p.exists():
            free = shutil.disk_usage(p).free
            return f"{free / 2**30:.1f} GiB" if free >= 2**30 else f"{free / 2**20:.1f} MiB"
    return "unknown"


@contextlib.contextmanager
def write_errors(output_dir: str | os.PathLike, what: str, temp: Path | None = None) -> Iterator[None]:
    """Turn a failed write of `what` into StorageError (one line, exit code EXIT_STORAGE) that names
    the reason, the free space and the newest complete checkpoint, which stays as it was; `temp`
    (the half-written folder) is removed. torch, safetensors and the OS report a failed write as
    RuntimeError, SafetensorError and OSError respectively."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError, StorageError) as exc:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        root = checkpoint_root(output_dir)
        kept = list_checkpoints(output_dir)
        raise StorageError(
            f"could not write {what}: {_reason(exc)}; free space in {root}: {_free_space(root)}; "
            f"the last complete checkpoint ({kept[-1] if kept else 'none'}) is intact: make room and "
            "run again (train.resume=auto continues from it)"
        ) from None


# --- the run's checkpoints, on every rank ----------------------------------------------------------

NOT_SHARED = (
    "rank {rank} does not see checkpoint {path} that rank 0 resumes from: train.output_dir must be on "
    "a filesystem shared by all processes (or every machine needs the same copy)"
)


class Checkpointer:
    """The run's checkpoints as all ranks see them. `engine` agrees across ranks; `export(folder)`
    writes the generator into a checkpoint (rank 0) before the folder is renamed into place."""

    def __init__(
        self,
        engine,
        output_dir: str | os.PathLike,
        *,
        every: int,
        keep: int,
        export: Callable[[Path], None] | None = None,
    ):
        self.engine = engine
        self.out = Path(output_dir)
        self.every, self.keep = every, keep
        self.export = export

    # --- start ------------------------------------------------------------------------------
    def resume_point(self, resume: str, check: Callable[[Path], None] | None = None) -> Path | None:
        """Rank 0 chooses (train.resume: auto, none or a path), runs `check(folder)` on it (a
        UserError stops every rank) and tells the others; a rank that does not see that folder stops
        every rank, naming a missing shared filesystem."""
        e = self.engine
        error, chosen = None, None
        if e.is_main:
            try:
                found = find_resume_point(self.out, resume)
                if found is not None and check is not None:
                    check(found)
                chosen = None if found is None else str(found)
            except UserError as exc:
                error = str(exc)
        chosen, error = e.broadcast_object((chosen, error))
        if error is not None:
            raise UserError(error) if e.is_main else _quiet(UserError(error))
        if chosen is None:
            return None
        missing = not (Path(chosen) / STATE_FILE).is_file()
        if e.any_rank(missing):
            if missing:
                raise UserError(NOT_SHARED.format(rank=e.rank, path=chosen))
            raise _quiet(UserError(f"another process does not see checkpoint {chosen} (its error line says which)"))
        return Path(chosen)

    def prepare_folder(self, config_yaml: str) -> None:
        """Rank 0: the folder is writable, temp folders of a killed run are gone, config.yaml written."""
        if self.engine.is_main:
            check_writable_dir(self.out, "train.output_dir")
            remove_stale_temps(self.out)
            atomic_write_text(self.out / "config.yaml", config_yaml)
        self.engine.barrier()

    def restore(self, folder: Path) -> TrainerState:
        """The trainer state of `folder`; metrics.jsonl cut back to its step (rank 0)."""
        state = read_state(folder)
        if self.engine.is_main:
            truncate_metrics(self.out, state.step)
        return state

    # --- policy -----------------------------------------------------------------------------
    def due(self, step: int, *, final: bool, stop: bool, pause: bool, in_streak: Callable[[], bool]) -> bool:
        """On a stop request, on pause, at the end, and periodically, but never during a non-finite
        streak (`in_streak()`, asked only then): it would only save the failing state and rotate the
        last good checkpoint away."""
        if stop or pause or final:
            return True
        return bool(self.every) and step % self.every == 0 and not in_streak()

    def last_good_before(self, step: int) -> Path | None:
        return last_before(self.out, step)

    # --- writing ----------------------------------------------------------------------------
    def save(self, state: TrainerState) -> Path | None:
        """Every rank writes its part into the temp folder, rank 0 the rest, then the rename and the
        rotation. Returns the checkpoint on rank 0 (None elsewhere)."""
        e, step = self.engine, state.step
        tmp = temp_dir_for(self.out, step)
        what = f"checkpoint {checkpoint_root(self.out) / step_dir_name(step)}"
        final: list[Path] = []
        self._write_together(what, tmp, lambda: tmp.mkdir(parents=True, exist_ok=True), main_only=True)
        self._write_together(
            what,
            tmp,
            lambda: e.save_state(str(tmp)),  # disk full etc.: temp folder removed
            collectives_inside=e.save_state_has_collectives,
        )

        def rank0_files_and_rename() -> None:
            if self.export:
                self.export(tmp)
            final.append(finalize(self.out, step, state, self.keep))

        self._write_together(what, tmp, rank0_files_and_rename, main_only=True)
        return final[0] if final else None

    def _write_together(
        self, what: str, tmp: Path, write, *, main_only: bool = False, collectives_inside: bool = False
    ) -> None:
        """`write` on every rank (or rank 0 only); when it fails anywhere, every rank stops together
        with exit code 74: the rank that failed names the reason, the others say where to look.
        A write with collectives inside (DeepSpeed's save) cannot wait for the others when it fails
        half way: that rank stops at once and the launcher ends the rest."""
        e = self.engine
        error = None
        if e.is_main or not main_only:
            try:
                with write_errors(self.out, what, tmp):
                    write()
            except StorageError as exc:
                if collectives_inside:
                    raise
                error = exc
        if e.any_rank(error is not None):  # also the barrier between the phases
            if error is None:
                shutil.rmtree(tmp, ignore_errors=True)
                error = StorageError(
                    f"could not write {what}: another process failed to (its error line "
                    "names the reason); the last complete checkpoint is intact"
                )
                error.quiet = not e.is_main  # one line from the ranks that did not fail, not one per rank
            raise error


def _quiet(error: UserError) -> UserError:
    error.quiet = True  # p2p_dist/errors.py: printed by rank 0 only
    return error
