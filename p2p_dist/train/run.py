"""A training run: build everything from the config, resume, loop over steps, checkpoint, export.

The step itself (the paper's algorithm) is `p2p_dist.train.loop.train_step`; this module is the
bookkeeping around it.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from p2p_dist.config import Config, ConfigError, require_training_inputs
from p2p_dist.data.device import prepare_batch
from p2p_dist.errors import EXIT_NONFINITE, EXIT_PREEMPTED, UserError
from p2p_dist.fsutil import atomic_write_text, check_writable_dir
from p2p_dist.train import checkpoint as ckpt
from p2p_dist.train.engine import Engine, build_engine
from p2p_dist.train.loop import StepModels, train_step
from p2p_dist.train.monitor import Monitor, sample_grid, truncate_metrics
from p2p_dist.train.signals import StopRequest
from p2p_dist.train.speed import apply_speed_options, compile_step_models


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
            raise ConfigError("train.epochs needs the shard count: no index.json with 'total' found; set data.epoch_samples")
        samples = int(index["total"])
    return max(1, math.ceil(cfg.train.epochs * samples / (cfg.train.batch_size * world_size)))


def build_models(cfg: Config):
    from p2p_dist.models import build_discriminator, build_generator

    m = cfg.model
    G = build_generator(m.generator, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                        ngf=m.ngf, norm=m.norm, dropout=m.dropout, init_gain=m.init_gain)
    D = None
    if cfg.loss.gan != "none":
        d_in = cfg.d_in_channels
        D = build_discriminator(m.discriminator, in_channels=d_in, ndf=m.ndf, norm=m.norm, init_gain=m.init_gain)
    return G, D


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    kernels = {"fused": True} if o.fused else {"foreach": o.foreach}  # fused: one pass per tensor (bench/README.md)
    return torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), **kernels)


def generator_spec(cfg: Config):
    from p2p_dist.models import GeneratorSpec

    m = cfg.model
    return GeneratorSpec(name=m.generator, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                         ngf=m.ngf, norm=m.norm, dropout=m.dropout, task=cfg.data.task,
                         direction=cfg.data.direction, image_size=cfg.data.crop_size)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


class Run:
    def __init__(self, cfg: Config):
        require_training_inputs(cfg)
        if cfg.train.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.engine: Engine = build_engine(cfg)
        e = self.engine
        # the data first: missing shards or shards of another task fail before anything is written
        self.resumed_from = ckpt.find_resume_point(self.out, cfg.train.resume)
        start_step = ckpt.read_state(self.resumed_from).step if self.resumed_from is not None else 0
        self.loader = self._make_loader(start_step)
        if e.is_main:
            check_writable_dir(self.out, "train.output_dir")
            ckpt.remove_stale_temps(self.out)
            atomic_write_text(self.out / "config.yaml", cfg.to_yaml())
        e.barrier()
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.max_steps = resolve_max_steps(cfg, e.world_size)

        G, D = build_models(cfg)
        G, D, _ = apply_speed_options(cfg, G, D, e.device)  # channels_last, CPU conv kernels
        opt_G = build_optimizer(G, cfg)
        opt_D = build_optimizer(D, cfg) if D is not None else None
        p = e.prepare(G, D, opt_G, opt_D)
        self.models = StepModels(G=p.G, D=p.D, D_frozen=e.unwrap(p.D) if p.D is not None else None)
        if cfg.train.compile:
            self.models = compile_step_models(self.models)  # G, D and the frozen D

        self.state = ckpt.TrainerState(world_size=e.world_size, num_workers=cfg.data.num_workers, seed=cfg.train.seed)
        if self.resumed_from is not None:
            ckpt.check_architecture(self.resumed_from, generator_spec(cfg).to_dict())
            try:
                e.load_state(str(self.resumed_from))
            except (RuntimeError, KeyError, ValueError) as exc:  # shapes or keys of another D / optimizer
                raise ckpt.load_failure(self.resumed_from, exc) from None
            self.state = ckpt.read_state(self.resumed_from)
            if self.state.world_size != e.world_size or self.state.num_workers != cfg.data.num_workers:
                # the stream position is exact only for the same process/worker layout
                self.state.extra["layout_changed_at"] = self.state.step
            if e.is_main:
                truncate_metrics(self.out, self.state.step)
        self.state.world_size, self.state.num_workers = e.world_size, cfg.data.num_workers

    # --- pieces of the loop -------------------------------------------------------------------
    def _make_loader(self, start_step: int):
        """This rank's stream of training batches, positioned after `start_step` steps."""
        from p2p_dist.data.stream import make_train_loader

        e = self.engine
        return make_train_loader(self.cfg.data, batch_size=self.cfg.train.batch_size, seed=self.cfg.train.seed,
                                 rank=e.rank, world_size=e.world_size, start_batch=start_step)

    def _batches(self):
        with torch.random.fork_rng(devices=[]):  # creating worker iterators must not consume the training RNG
            return iter(self.loader)

    def _sample_batch(self, fallback):
        cfg = self.cfg
        if cfg.data.val:
            from p2p_dist.data.stream import make_eval_loader

            for batch in make_eval_loader(cfg.data.val, task=cfg.data.task, direction=cfg.data.direction,
                                          size=cfg.data.crop_size, batch_size=4):
                return batch["A"], batch["B"]
        return fallback["A"][:4], fallback["B"][:4]

    @torch.no_grad()
    def _write_samples(self, step: int, batch) -> None:
        """Sample grid with G as the paper tests it (p2p_dist/inference/forward.py, paper mode, seeded per
        sample position); training RNG, BN statistics and G's train flag untouched."""
        from p2p_dist.inference import translate_batch

        A, B = (t.to(self.engine.device) for t in batch)
        with self.engine.autocast():
            fake = translate_batch(self.engine.unwrap(self.models.G), A, mode="paper", seed=self.cfg.train.seed)
        self.monitor.save_samples(step, sample_grid(A.cpu(), fake.cpu(), B.cpu(), self.cfg.data.task))

    def _write_together(self, what: str, tmp: Path, write, *, main_only: bool = False,
                        collectives_inside: bool = False) -> None:
        """`write` on every rank (or rank 0 only); when it fails anywhere, every rank stops together
        with exit code 74: the rank that failed names the reason, the others say where to look.
        A write with collectives inside (DeepSpeed's save) cannot wait for the others when it fails
        half way: that rank stops at once and the launcher ends the rest."""
        e = self.engine
        error = None
        if e.is_main or not main_only:
            try:
                with ckpt.write_errors(self.out, what, tmp):
                    write()
            except ckpt.StorageError as exc:
                if collectives_inside:
                    raise
                error = exc
        if e.any_rank(error is not None):  # also the barrier between the phases
            if error is None:
                shutil.rmtree(tmp, ignore_errors=True)
                error = ckpt.StorageError(f"could not write {what}: another process failed to (its error line "
                                          "names the reason); the last complete checkpoint is intact")
                error.quiet = not e.is_main  # one line from the ranks that did not fail, not one per rank
            raise error

    def save_checkpoint(self) -> Path | None:
        from p2p_dist.models import save_generator

        e, step = self.engine, self.state.step
        tmp = ckpt.temp_dir_for(self.out, step)
        what = f"checkpoint {ckpt.checkpoint_root(self.out) / ckpt.step_dir_name(step)}"
        final: list[Path] = []
        self._write_together(what, tmp, lambda: tmp.mkdir(parents=True, exist_ok=True), main_only=True)
        self._write_together(what, tmp, lambda: e.save_state(str(tmp)),  # disk full etc.: temp folder removed
                             collectives_inside=e.save_state_has_collectives)

        def export_and_rename() -> None:
            save_generator(e.unwrap(self.models.G), generator_spec(self.cfg), tmp)
            final.append(ckpt.finalize(self.out, step, self.state, self.cfg.train.keep_checkpoints))

        self._write_together(what, tmp, export_and_rename, main_only=True)
        return final[0] if final else None

    def export_final(self) -> None:
        from p2p_dist.models import save_generator

        if self.engine.is_main:
            with ckpt.write_errors(self.out, f"the final generator {self.out / 'final'}"):
                save_generator(self.engine.unwrap(self.models.G), generator_spec(self.cfg), self.out / "final")

    # --- the loop -----------------------------------------------------------------------------
    def train(self) -> int:
        cfg, e, state = self.cfg, self.engine, self.state
        t = cfg.train
        global_batch = t.batch_size * e.world_size
        if e.accelerator.log_with:
            e.accelerator.init_trackers("p2p-dist", config={f"{s}.{k}": v for s, d in cfg.to_dict().items() for k, v in d.items()})
        self.monitor = Monitor(enabled=e.is_main, output_dir=self.out, max_steps=self.max_steps, start_step=state.step,
                               images_per_step=global_batch, accelerator=e.accelerator, use_trackers=bool(e.accelerator.log_with))
        self.monitor.message(
            f"pix2pix {cfg.model.generator} + {cfg.model.discriminator if cfg.loss.gan != 'none' else 'no D'}, "
            f"{e.world_size} process(es) on {e.num_machines} machine(s), {e.kind}, device {e.device.type}; "
            f"global batch {global_batch} = {t.batch_size} per process x {e.world_size}; "
            f"steps {state.step} -> {self.max_steps}"
            + (f"; resumed from {self.resumed_from}" if self.resumed_from else "")
        )
        loader, batches = self.loader, self._batches()
        stop = StopRequest().install()
        G, D = self.models.G, self.models.D
        G.train()
        if D is not None:
            D.train()
        sum_losses: torch.Tensor | None = None
        loss_names: list[str] = []
        window = 0
        consecutive_bad = 0
        fixed_samples = None
        t0 = time.perf_counter()
        start_step = state.step
        exit_code = 0
        try:
            while state.step < self.max_steps:
                batch = next(batches)
                real_A, real_B = prepare_batch(batch, e.device, channels_last=t.channels_last)
                lr = cfg.optim.lr * lr_factor(state.step, self.max_steps, cfg.optim.schedule, cfg.optim.decay_start)
                e.set_lr(lr)
                losses = train_step(e, self.models, cfg.loss, real_A, real_B,
                                    fused_d_forward=t.fused_d_forward and cfg.model.norm != "batch")
                state.step += 1
                state.images_seen += global_batch
                state.bad_samples = loader.bad_samples
                if losses is None:
                    state.nonfinite_steps += 1
                    consecutive_bad += 1
                    self.monitor.message(f"step {state.step}: non-finite loss, step skipped ({consecutive_bad} in a row)")
                    if consecutive_bad >= t.max_nonfinite:
                        # the newest checkpoint written before this streak began holds finite weights
                        last = [c for c in ckpt.list_checkpoints(self.out)
                                if int(c.name.split("-")[1]) <= state.step - consecutive_bad]
                        raise NonFiniteError(
                            f"stopped at step {state.step}: {consecutive_bad} consecutive non-finite losses; "
                            f"last good checkpoint: {last[-1] if last else 'none'}; likely causes: learning rate "
                            f"too high (optim.lr={cfg.optim.lr}), fp16 overflow (train.mixed_precision="
                            f"{t.mixed_precision}), or corrupt input data"
                        )
                else:
                    consecutive_bad = 0
                    stacked = torch.stack([losses[k].float() for k in sorted(losses)])
                    if sum_losses is None or loss_names != sorted(losses):
                        loss_names, sum_losses, window = sorted(losses), torch.zeros_like(stacked), 0
                    sum_losses += stacked
                    window += 1
                if state.step % t.log_every == 0 or state.step == self.max_steps:
                    # the only host sync for logging: mean over the window and over ranks
                    if sum_losses is not None and window:
                        means = e.mean_over_ranks(sum_losses / window).tolist()
                        self.monitor.log(state.step, dict(zip(loss_names, means)), lr,
                                         {"nonfinite_steps": state.nonfinite_steps})
                        sum_losses.zero_()
                        window = 0
                else:
                    self.monitor.advance(state.step)
                if t.sample_every and (state.step % t.sample_every == 0 or state.step == self.max_steps):
                    if fixed_samples is None:
                        fixed_samples = self._sample_batch({"A": real_A, "B": real_B})
                    self._write_samples(state.step, fixed_samples)
                stop_now = e.any_rank(stop.requested)
                pause = t.stop_after and state.step - start_step >= t.stop_after and state.step < self.max_steps
                # no periodic checkpoint during a non-finite streak: it would only save the failing
                # state and rotate the last good checkpoint away
                periodic = t.checkpoint_every and state.step % t.checkpoint_every == 0 and consecutive_bad == 0
                if periodic or stop_now or pause or state.step == self.max_steps:
                    path = self.save_checkpoint()
                    if path is not None:
                        self.monitor.message(f"checkpoint {path}")
                if stop_now:
                    self.monitor.message(f"stopped by {stop.signal_name or 'a signal on another rank'} at step "
                                         f"{state.step}; resume with train.resume=auto")
                    exit_code = EXIT_PREEMPTED
                    break
                if pause:
                    self.monitor.message(f"paused after {t.stop_after} steps (train.stop_after) at step {state.step}; "
                                         "run again to continue")
                    break
            else:
                self.export_final()
        finally:
            stop.uninstall()
            self.monitor.close()
        elapsed = time.perf_counter() - t0
        done = state.step - start_step
        finished = state.step >= self.max_steps
        self.monitor.summary({
            "steps": f"{state.step} / {self.max_steps} ({done} this run)",
            "global batch": f"{global_batch} ({t.batch_size} x {e.world_size} processes)",
            "throughput": f"{done * global_batch / max(elapsed, 1e-9):.2f} images/s",
            "wall time": f"{elapsed:.1f} s",
            **{f"loss {k}": f"{v:.4f}" for k, v in self.monitor.last.items()},
            "non-finite steps": str(state.nonfinite_steps),
            "corrupt samples skipped": str(state.bad_samples),
            "checkpoints": str(ckpt.checkpoint_root(self.out)),
            "generator": str(self.out / "final") if finished else "(not exported yet: run stopped early)",
        }, title="pix2pix training " + ("finished" if finished else "paused" if exit_code == 0 else "preempted"))
        e.barrier()
        del G, D
        self.models = None  # released before the process group goes (Engine.end)
        e.end()
        return exit_code


class NonFiniteError(UserError):
    exit_code = EXIT_NONFINITE


def train(cfg: Config) -> int:
    return Run(cfg).train()
