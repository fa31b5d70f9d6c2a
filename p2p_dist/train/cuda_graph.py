"""`train.cuda_graph`: the whole training step captured once as one CUDA graph, then replayed.

What the graph holds, how it is captured and what it needs of the step: docs/architecture.md
("The graph step"). In short: the step's body runs over static input buffers (the batch is copied
into them before each replay); a few warm-up steps run eagerly on a side stream (cuDNN autotuning,
the Adam state, compilation happen there), then the next step is captured on that same stream and
every step from there on is one `replay()`. A capture that fails says why in one line and the run
goes on with the eager step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from p2p_dist.config import Config, ConfigError

WARMUP_STEPS = 3  # eager steps before the capture (PyTorch's CUDA graphs notes use 3)


def unavailable(cfg: Config, engine: str, device_type: str) -> str | None:
    """Why the graph step cannot run with this config, engine (`ddp`, `deepspeed`) and device type; None when it can."""
    if engine != "ddp":
        return (
            "the DeepSpeed engines step and reduce gradients outside PyTorch's capturable optimizers (DDP engine only)"
        )
    if device_type != "cuda":
        return f"CUDA graphs need a CUDA GPU and this process trains on {device_type}"
    if not cfg.optim.fused:
        return (
            "the graph steps with the fused Adam (optim.fused=true), whose kernel reads the learning rate "
            "and the skip flag on the GPU"
        )
    if cfg.train.mixed_precision == "fp16":
        return "fp16's gradient scaler decides on the host; use train.mixed_precision=bf16 or no"
    return None


def resolve(cfg: Config, engine: str, device_type: str) -> bool:
    """train.cuda_graph: auto is on where the graph can run, off elsewhere; `on` where it cannot is a ConfigError."""
    mode = cfg.train.cuda_graph
    if mode == "off":
        return False
    reason = unavailable(cfg, engine, device_type)
    if reason is not None and mode == "on":
        raise ConfigError(f"train.cuda_graph=on: {reason}; set train.cuda_graph=auto or off")
    return reason is None


def learning_rate(value: float, device: torch.device) -> torch.Tensor:
    """The learning rate as a device tensor that capturable Adam reads at each replay: float32 on CUDA (the
    fused kernel reads a float), float64 elsewhere (the CPU kernel reads a double: the float's exact value)."""
    return torch.tensor(value, dtype=torch.float32 if device.type == "cuda" else torch.float64, device=device)


class GraphStep:
    """`body(*inputs)` captured as one CUDA graph after `warmup` eager calls, then replayed.

    Each call copies `inputs` into the static buffers and returns the body's outputs: from the
    capture on, the same tensors every step, overwritten by each replay. The body must not read
    device values on the host, and what it keeps across steps it must update in place.
    """

    def __init__(self, body: Callable, *, warmup: int = WARMUP_STEPS, message: Callable[[str], None] = print):
        if warmup < 1:
            raise ValueError("the graph step needs at least one warm-up step")
        self.body, self.warmup, self.message = body, warmup, message
        self.static: list[torch.Tensor] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs = None
        self.calls = 0
        self.eager = False  # the capture failed: the body runs eagerly from then on
        self.stream = torch.cuda.Stream() if torch.cuda.is_available() else None

    def __call__(self, *inputs: torch.Tensor):
        if self.static is None:
            self.static = [torch.empty_like(x) for x in inputs]  # the inputs' memory format too
        for buffer, x in zip(self.static, inputs, strict=True):
            if x.shape != buffer.shape:  # copy_ would broadcast a smaller batch without a word
                raise ValueError(
                    f"the graph step takes batches of one shape: {tuple(buffer.shape)}, got {tuple(x.shape)}"
                )
            buffer.copy_(x, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        self.calls += 1
        if self.eager or self.stream is None:
            return self._eager()
        if self.calls <= self.warmup:
            return self._on_side_stream()
        return self._capture()

    def _eager(self):
        with warnings.catch_warnings():  # the capturable Adams warn when they step uncaptured: here they must
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            return self.body(*self.static)

    def _on_side_stream(self):
        """A warm-up step on the stream the capture will use (PyTorch's CUDA graphs notes)."""
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = self._eager()
        current.wait_stream(self.stream)
        return out

    def _capture(self):
        graph = torch.cuda.CUDAGraph()
        self.stream.wait_stream(torch.cuda.current_stream())  # the batch copied in (the capture synchronizes too)
        try:
            # thread_local: the data loader's pin-memory thread may allocate pinned memory meanwhile
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                outputs = self.body(*self.static)
        except Exception as exc:  # an op that cannot be captured on this setup: keep training eagerly
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self.message(
                f"train.cuda_graph: the step could not be captured ({type(exc).__name__}: {first}); "
                "training goes on with the eager step"
            )
            self.eager = True
            return self._eager()  # the captured step never ran: run it now
        self.graph, self.outputs = graph, outputs
        graph.replay()
        return outputs


def step_runner(engine, body: Callable, *, message: Callable[[str], None] = print) -> Callable:
    """The step as the run calls it: `body` captured and replayed when the engine trains with the
    graph (`engine.graphed`, from train.cuda_graph), else `body` itself."""
    return GraphStep(body, message=message) if getattr(engine, "graphed", False) else body
