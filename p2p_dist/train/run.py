"""A training run: build everything from the config, resume, loop over steps, checkpoint, export.

The step itself (the paper's algorithm) is `p2p_dist.train.loop.train_step`; the engine
(`p2p_dist.train.engines`) owns processes and devices, the `Checkpointer`
(`p2p_dist.train.checkpoint`) everything on disk, `accounting.py` the loss window, the step flags
that reach the host a step late and the non-finite guard. This module tells the story of a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from p2p_dist.config import Config, ConfigError, require_training_inputs
from p2p_dist.models.statedict import unwrap_module
from p2p_dist.train import checkpoint as ckpt
from p2p_dist.train import cuda_graph
from p2p_dist.train.accounting import LossWindow, NonFiniteGuard, StepFlags
from p2p_dist.train.build import build_models, generator_spec
from p2p_dist.train.engines import Engine, build_engine, resolve_engine_name
from p2p_dist.train.extras import RunExtras
from p2p_dist.train.host_memory import keep_freed_memory
from p2p_dist.train.inputs import check_run_inputs
from p2p_dist.train.lock import hold_output_dir, release_held
from p2p_dist.train.loop import train_step
from p2p_dist.train.monitor import Monitor, sample_grid
from p2p_dist.train.signals import StopRequest, exit_code_for, stopped_message


def lr_factor(step: int, max_steps: int, schedule: str, decay_start: float) -> float:
    """Constant, or the reference's linear decay to zero over the last (1 - decay_start) of training."""
    if schedule == "constant":
        return 1.0
    start = int(round(decay_start * max_steps))
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(1, max_steps - start))


def resolve_max_steps(cfg: Config, world_size: int) -> int:
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    samples = cfg.data.epoch_samples
    if samples == 0:
        from p2p_dist.data.index import read_index

        index = read_index(cfg.data.train)
        if not index or not index.get("total"):
            raise ConfigError(
                "train.epochs needs the shard count: no index.json with 'total' found; set data.epoch_samples"
            )
        samples = int(index["total"])
    return max(1, math.ceil(cfg.train.epochs * samples / global_batch(cfg, world_size)))


def global_batch(cfg: Config, world_size: int) -> int:
    """Images per optimizer step over all ranks: batch per process x train.grad_accum x processes."""
    return cfg.train.batch_size * cfg.train.grad_accum * world_size


def configure_determinism(deterministic: bool) -> None:
    """train.deterministic: strict deterministic kernels (an op without one raises) and no cudnn
    autotuning; else cudnn.benchmark on CUDA (fastest kernels, not bitwise repeatable)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's dropout and other per-rank randomness (distinct per rank). The data
    order does not use it: it is a pure function of (seed, rank, world size, worker, position)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Run:
    def __init__(self, cfg: Config):
        require_training_inputs(cfg)
        keep_freed_memory()  # before the loader's workers fork: they inherit it
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.engine: Engine = build_engine(cfg)  # checks train.log_with first
        e = self.engine
        check_run_inputs(cfg, e)  # shards, data.val, train.resume on every rank: before anything is written
        self.lock = hold_output_dir(e, self.out)  # one run per folder (p2p_dist/train/lock.py)
        self.checkpoints = ckpt.Checkpointer(
            e, self.out, every=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints, export=self._export_into
        )
        self.max_steps = resolve_max_steps(cfg, e.world_size)
        # the checkpoint checked (ckpt.check_resume) before config.yaml is written
        self.resumed_from = self.checkpoints.resume_point(cfg.train.resume, check=self._check_resume)
        start_batch = ckpt.read_state(self.resumed_from).data_batches if self.resumed_from is not None else 0
        self.loader = self._make_loader(start_batch)
        self.checkpoints.prepare_folder(self._config_yaml())
        configure_determinism(cfg.train.deterministic)
        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        self.deadline: float | None = None  # rank 0's clock at which train.time_limit ends the run
        self.time_limited = False  # the run ended at train.time_limit, before max_steps
        self.models = e.prepare(*build_models(cfg))
        self.extras = RunExtras(cfg, e, unwrap_module(self.models.G))  # EMA, alarms, validation, best
        seed_everything(rank_seed(cfg.train.seed, e.rank))  # dropout masks differ per rank
        self.state = ckpt.TrainerState(
            world_size=e.world_size,
            num_workers=cfg.data.num_workers,
            seed=cfg.train.seed,
            settings=ckpt.run_settings(cfg),
        )
        self.layout_note = ""
        if self.resumed_from is not None:
            self._resume(self.resumed_from)

    def _config_yaml(self) -> str:
        engine = resolve_engine_name(self.cfg.train.engine)
        ran = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, engine=engine))
        return f"# train.engine={self.cfg.train.engine} ran as {engine}\n" + ran.to_yaml()

    def _check_resume(self, folder: Path) -> None:
        spec = generator_spec(self.cfg).to_dict()
        for line in ckpt.check_resume(folder, self.cfg, spec, self.engine.world_size, self.max_steps):
            print(f"warning: {line}", file=sys.stderr, flush=True)

    def _resume(self, folder: Path) -> None:
        e, cfg = self.engine, self.cfg
        try:
            e.load_state(str(folder))
        except (RuntimeError, KeyError, ValueError) as exc:  # shapes or keys of another D / optimizer
            raise ckpt.load_failure(folder, exc) from None
        self.state = self.checkpoints.restore(folder)
        self.extras.restore(folder, self.state.extra)
        before = (self.state.world_size, self.state.num_workers)
        if before != (e.world_size, cfg.data.num_workers):
            # the stream position is exact only for the same process/worker layout
            self.state.extra["layout_changed_at"] = self.state.step
            self.layout_note = (
                f"data order changes from step {self.state.step} on: the checkpoint was written by "
                f"{before[0]} process(es) x {before[1]} worker(s), this run has {e.world_size} x "
                f"{cfg.data.num_workers}"
            )
        self.state.world_size, self.state.num_workers = e.world_size, cfg.data.num_workers
        self.state.seed, self.state.settings = cfg.train.seed, ckpt.run_settings(cfg)  # what runs from here

    # --- pieces of the loop -------------------------------------------------------------------
    def _make_loader(self, start_batch: int):
        """This rank's stream of training (micro-)batches, positioned after `start_batch` of them: the
        set resident on the device (p2p_dist/data/resident.py) when data.placement allows, else the
        shard stream. Its one line (placement, bytes held, load time) is `self.data_note`."""
        from p2p_dist.console import make_console, make_progress
        from p2p_dist.data.loader import make_train_loader
        from p2p_dist.data.resident import make_resident_loader
        from p2p_dist.train.engines.base import uses_channels_last

        e, cfg = self.engine, self.cfg
        layout = dict(batch_size=cfg.train.batch_size, seed=cfg.train.seed, rank=e.rank, world_size=e.world_size)
        with make_progress(console=make_console(), disable=not e.is_main, transient=True) as progress:
            loader, self.data_note = make_resident_loader(
                cfg.data,
                placement=cfg.data.placement,
                device=e.device,
                local_processes=e.world_size // e.num_machines,
                start_batch=start_batch,
                channels_last=uses_channels_last(cfg, e.device),
                progress=progress,
                **layout,
            )
        self.resident = loader is not None
        return loader or make_train_loader(cfg.data, start_batch=start_batch, **layout)

    def _batches(self):
        from p2p_dist.data.prefetch import prefetch

        with torch.random.fork_rng(devices=[]):  # creating worker iterators must not consume the training RNG
            return prefetch(self.loader, self.engine.device)  # staged on the device ahead of the step

    def _next_step_batch(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's (real_A, real_B): train.grad_accum micro-batches, each jittered on the training
        device (p2p_dist/data/jitter.py; the resident set's come jittered), stacked."""
        from p2p_dist.data.jitter import jitter_batch
        from p2p_dist.train.engines.base import uses_channels_last

        device, n = self.engine.device, self.cfg.train.grad_accum
        channels_last = uses_channels_last(self.cfg, device)

        def ready(batch):  # jittered before the next is asked for: the prefetcher then reuses its buffer
            return batch if self.resident else jitter_batch(batch, device, channels_last=channels_last)

        micro = [ready(next(batches)) for _ in range(n)]
        self.state.data_batches += len(micro)
        if len(micro) == 1:
            return micro[0]["A"], micro[0]["B"]
        return torch.cat([m["A"] for m in micro]), torch.cat([m["B"] for m in micro])

    def _sample_batch(self, fallback):
        cfg = self.cfg
        if cfg.data.val:
            from p2p_dist.data.loader import make_eval_loader

            for batch in make_eval_loader(
                cfg.data.val,
                task=cfg.data.task,
                direction=cfg.data.direction,
                size=cfg.data.crop_size,
                batch_size=4,
                device=self.engine.device,
                scale=cfg.pixel_ranges,
            ):
                return batch["A"], batch["B"]
        return fallback[0][:4], fallback[1][:4]

    @torch.no_grad()
    def _write_samples(self, step: int, batch) -> None:
        """Sample grid with G as the paper tests it (p2p_dist/inference/forward.py: paper mode, seeded per
        sample position); training RNG, BN statistics and G's train flag untouched."""
        from p2p_dist.inference import translate_batch

        G = self.engine.inference_view(self.extras.generator())  # under the run's autocast, as it trains
        A, B = batch
        fake = translate_batch(G, A, mode="paper", seed=self.cfg.train.seed)
        self.monitor.save_samples(step, sample_grid(A.cpu(), fake.cpu(), B.cpu(), self.cfg.data.task))

    def _export_into(self, folder: Path) -> None:
        """Rank 0: the generator(s) (EMA and online when EMA is on) and the extras' state."""
        self.extras.into_state(self.state.extra)
        self.extras.save(folder)
        self.extras.export(generator_spec(self.cfg), folder)

    def save_checkpoint(self) -> Path | None:
        return self.checkpoints.save(self.state)

    def export_final(self) -> None:
        if self.engine.is_main:
            with ckpt.write_errors(self.out, f"the final generator {self.out / 'final'}"):
                self.extras.export(generator_spec(self.cfg), self.out / "final")

    def _start_monitor(self) -> None:
        cfg, e, state = self.cfg, self.engine, self.state
        e.init_trackers(cfg.flat_dict())
        self.global_batch = global_batch(cfg, e.world_size)
        accum = f" x {cfg.train.grad_accum} micro-batches (train.grad_accum)" if cfg.train.grad_accum > 1 else ""
        self.monitor = Monitor(
            enabled=e.is_main,
            output_dir=self.out,
            max_steps=self.max_steps,
            start_step=state.step,
            images_per_step=self.global_batch,
            trackers=e.log_trackers,
        )
        self.monitor.message(
            f"pix2pix {cfg.model.generator} + {cfg.model.discriminator if cfg.loss.gan != 'none' else 'no D'}, "
            f"{e.world_size} process(es) on {e.num_machines} machine(s), {e.kind}, device {e.device.type}; "
            f"global batch {self.global_batch} = {cfg.train.batch_size} per process{accum} x {e.world_size}; "
            f"steps {state.step} -> {self.max_steps}"
            + (f"; resumed from {self.resumed_from}" if self.resumed_from else "")
            + (f"; {self.extras.describe()}" if self.extras.describe() else "")
        )
        self.monitor.message(self.data_note)
        if self.layout_note:
            self.monitor.message(self.layout_note)
        if state.step >= self.max_steps:  # a step past max_steps was refused (ckpt.check_resume)
            self.monitor.message(
                f"nothing to train: {self.resumed_from} is at step {state.step}, the run's last "
                "(train.max_steps); the generator is exported again"
            )

    def _step(self, real_A, real_B, stop: StopRequest) -> float:
        """One optimisation step with no host read: the step's device work (`_step_body`; one CUDA
        graph replay with train.cuda_graph), then its flags (the stop request, rank 0's time-limit
        verdict, the non-finite flag) agreed across ranks on the device and queued for the host
        (`StepFlags`: read a step late, see `_settle`). Returns the step's learning rate."""
        cfg, e, state = self.cfg, self.engine, self.state
        lr = cfg.optim.lr * lr_factor(state.step, self.max_steps, cfg.optim.schedule, cfg.optim.decay_start)
        e.set_lr(lr)
        result = self.device_step(real_A, real_B)
        time_up = e.rank == 0 and self.deadline is not None and time.perf_counter() >= self.deadline
        state.step += 1
        self.flags.push(state.step, stop.requested, time_up, result.skipped)
        state.images_seen += self.global_batch
        state.bad_samples = self.loader.bad_samples
        return lr

    def _step_body(self, real_A, real_B, window: LossWindow):
        """The step's device work, the same every step: `train_step`, then the loss window and the EMA
        masked by the non-finite flag (what p2p_dist/train/cuda_graph.py captures)."""
        result = train_step(
            self.engine, self.models, self.cfg.loss, real_A, real_B, micro_batches=self.cfg.train.grad_accum
        )
        window.add(result.losses, result.skipped)
        self.extras.after_step(result.skipped)  # EMA update
        return result

    def _settle(self, guard: NonFiniteGuard, sync: bool) -> tuple[bool, bool]:
        """The flags that reached the host: the previous step's, and this step's too when `sync`
        (`_reads_at`) or when a stop or the time limit arrives, so the run ends on a step whose flags
        every rank has read. The guard counts their skipped steps (and may stop the run); returns
        (stop, time_up) as every rank agreed them."""
        arrived = self.flags.read(drain=sync)
        if any(a.stop or a.time_up for _, a in arrived):
            arrived += self.flags.read(drain=True)
        for step, agreed in arrived:
            guard.after_step(step, skipped=agreed.skipped)
        self.state.nonfinite_steps = self.nonfinite_before + guard.total
        return any(a.stop for _, a in arrived), any(a.time_up for _, a in arrived)

    def _reads_at(self, step: int, pause: bool) -> bool:
        """Whether step `step` reads its own flags at once: it logs, validates (a new best is
        checkpointed), may checkpoint, pauses or is the last; the same on every rank."""
        t = self.cfg.train
        return (
            step % t.log_every == 0
            or step == self.max_steps
            or pause
            or (bool(t.val_every) and step % t.val_every == 0)
            or self.checkpoints.due(step, final=False, stop=False, pause=False, in_streak=lambda: False)
        )

    def _log(self, window: LossWindow, lr: float) -> None:
        means = window.means()
        if means is not None:
            self.monitor.log(self.state.step, means, lr, {"nonfinite_steps": self.state.nonfinite_steps})
            self.extras.at_log(self.state.step, means, self.monitor)  # health alarms

    def _maybe_samples(self, batch) -> None:
        every, step = self.cfg.train.sample_every, self.state.step
        last = step >= self.max_steps or self.time_limited
        if every and step % every == 0 and not last:  # the last grid comes after the export
            if self.fixed_samples is None:
                self.fixed_samples = self._sample_batch(batch)
            self._write_samples(step, self.fixed_samples)

    # --- the loop -----------------------------------------------------------------------------
    def train(self) -> int:
        t, e, state = self.cfg.train, self.engine, self.state
        self._start_monitor()
        batches, stop = self._batches(), StopRequest().install()
        guard = NonFiniteGuard(
            t.max_nonfinite,
            self.monitor.message,
            self.checkpoints.last_good_before,
            causes=f"learning rate too high (optim.lr={self.cfg.optim.lr}), fp16 overflow "
            f"(train.mixed_precision={t.mixed_precision}), or corrupt input data",
        )
        window, self.fixed_samples, self.nonfinite_before = LossWindow(e), None, state.nonfinite_steps
        self.flags = StepFlags(e)
        body = functools.partial(self._step_body, window=window)
        self.device_step = cuda_graph.step_runner(e, body, message=self.monitor.message)  # train.cuda_graph
        self.models.G.train()
        if self.models.D is not None:
            self.models.D.train()
        t0, start_step, exit_code = time.perf_counter(), state.step, 0
        self.deadline = t0 + 60 * t.time_limit if t.time_limit else None
        batch, self.time_limited, stopped = None, False, False
        try:
            while state.step < self.max_steps and not self.time_limited:
                batch = self._next_step_batch(batches)  # (real_A, real_B), jittered on the device
                lr = self._step(*batch, stop)
                pause = bool(t.stop_after) and state.step - start_step >= t.stop_after
                stop_agreed, time_up = self._settle(guard, sync=self._reads_at(state.step, pause))
                self.time_limited = time_up and state.step < self.max_steps
                if self.time_limited:
                    self.monitor.message(
                        f"time limit reached (train.time_limit={t.time_limit:g} min) at step {state.step} of "
                        f"{self.max_steps}: the run ends here as at train.max_steps; run again to continue"
                    )
                final = state.step == self.max_steps or self.time_limited
                if state.step % t.log_every == 0 or final:
                    self._log(window, lr)
                else:
                    self.monitor.advance(state.step)
                self._maybe_samples(batch)
                new_best = self.extras.validate(state.step, final, self.monitor)
                pause = pause and not final
                if (
                    self.checkpoints.due(
                        state.step, final=final, stop=stop_agreed, pause=pause, in_streak=lambda: guard.in_streak
                    )
                    or new_best
                ):
                    self._checkpoint(new_best)
                if stop_agreed or pause:
                    exit_code, stopped = self._stopped(stop, pause), True
                    break
            else:
                self.export_final()
                if t.sample_every and batch is not None:  # after the export: a failing grid cannot cost it
                    self._write_samples(state.step, self.fixed_samples or self._sample_batch(batch))
        finally:
            stop.uninstall()
            self.extras.close()
            self.monitor.close()
        self._summary(time.perf_counter() - t0, state.step - start_step, exit_code, finished=not stopped)
        return self._end(exit_code)

    def _checkpoint(self, new_best: bool = False) -> None:
        path = self.save_checkpoint()
        if path is not None:
            self.monitor.message(f"checkpoint {path}")
            if new_best:
                self.monitor.message(f"new best {self.cfg.train.best_metric}: {self.extras.keep_best(path)}")

    def _stopped(self, stop: StopRequest, pause: bool) -> int:
        if not pause:
            code = exit_code_for("SIGINT" if self.engine.any_rank(stop.interrupted) else stop.signal_name)
            self.monitor.message(stopped_message(stop.signal_name, self.state.step, code))
            return code
        self.monitor.message(
            f"paused after {self.cfg.train.stop_after} steps (train.stop_after) at step "
            f"{self.state.step}; run again to continue"
        )
        return 0

    def _summary(self, elapsed: float, done: int, exit_code: int, finished: bool) -> None:
        """`finished`: the loop ran out (max_steps or train.time_limit) and the generator was exported;
        a stop or pause in the last step leaves it unexported, whatever the step."""
        t, e, state = self.cfg.train, self.engine, self.state
        self.monitor.summary(
            {
                "steps": f"{state.step} / {self.max_steps} ({done} this run)",
                "global batch": f"{self.global_batch} ({t.batch_size} x "
                + (f"{t.grad_accum} micro-batches x " if t.grad_accum > 1 else "")
                + f"{e.world_size} processes)",
                "throughput": f"{done * self.global_batch / max(elapsed, 1e-9):.2f} images/s",
                "wall time": f"{elapsed:.1f} s",
                **{f"loss {k}": f"{v:.4f}" for k, v in self.monitor.last.items()},
                "non-finite steps": str(state.nonfinite_steps),
                "corrupt samples skipped": str(state.bad_samples),
                **self.extras.summary_rows(),
                "checkpoints": str(ckpt.checkpoint_root(self.out)),
                "generator": str(self.out / "final") if finished else "(not exported yet: run stopped early)",
            },
            title="pix2pix training "
            + (
                "finished" + (" (train.time_limit)" if self.time_limited else "")
                if finished
                else "paused"
                if exit_code == 0
                else "interrupted"
                if exit_code == exit_code_for("SIGINT")
                else "preempted"
            ),
        )

    def _end(self, exit_code: int) -> int:
        self.engine.barrier()
        self.models = None  # released before the process group goes (Engine.end)
        self.engine.end()
        return exit_code

    def end_after_error(self) -> None:
        """The error path's `_end`, without its barrier (another rank may be gone): the DDP wrappers
        released, then the process group destroyed. Left to interpreter shutdown, a DDP object that
        outlives its gloo group could abort the process ("terminate called without an active
        exception", SIGABRT instead of the error's exit code: seen once in a fresh-clone run of
        tests/system/test_reliability_storage.py)."""
        self.models = None
        with contextlib.suppress(Exception):  # the error that brought us here is the one to report
            self.engine.end()


def train(cfg: Config) -> int:
    run = None
    try:
        run = Run(cfg)
        return run.train()
    except BaseException as exc:
        if run is not None:
            traceback.clear_frames(exc.__traceback__)  # the frames' locals hold the DDP modules too
            run.end_after_error()
        raise
    finally:
        release_held()  # the folder's lock (a process that dies drops it anyway)
