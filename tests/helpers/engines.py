"""An Engine on one process without Accelerate, for in-process step tests."""

from __future__ import annotations

from p2p_dist.config import load_config
from p2p_dist.train.engines.base import Engine


class LocalEngine(Engine):
    """The Engine interface on one process without Accelerate: lets the test see each phase."""

    def __init__(self, optimizers, D=None):
        super().__init__(load_config(None, []))
        self.optimizers = optimizers
        self.D = D
        self.calls = []
        self.d_grads_in_g_step = None

    def backward_step(self, name, loss, skip=None):
        if skip is not None and self.to_host(skip)[0]:
            self.optimizers[name].zero_grad(set_to_none=True)  # the inner micro-batches' gradients
            return
        loss.backward()
        if name == "G" and self.D is not None:
            self.d_grads_in_g_step = [p.grad for p in self.D.parameters()]
        self.calls.append(name)
        self.optimizers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)
