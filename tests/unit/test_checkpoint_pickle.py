"""Resuming a DeepSpeed checkpoint reads every file weights-only (issue 26 item 5): DeepSpeed's own
load_checkpoint asks torch.load for weights_only=False, which `_weights_only_loads` overrides, so a
file with a pickled payload is refused in one line and its code never runs."""

from __future__ import annotations

import os

import pytest
import torch

from p2p_dist.errors import UserError
from p2p_dist.train.engines.deepspeed import _rng_state, _weights_only_loads


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # creates the marker file when unpickled


def test_a_payload_is_refused_even_where_deepspeed_asks_for_full_pickle(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    marker = tmp_path / "pwned"
    evil = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, evil)
    refused = pytest.raises(
        UserError, match=r"checkpoint .*ckpt holds an object that could run code when loaded \(io.open\)"
    )
    with refused, _weights_only_loads(tmp_path / "ckpt"):
        torch.load(evil, map_location="cpu", weights_only=False)  # as deepspeed's TorchCheckpointEngine.load
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored


def test_our_rng_state_loads_weights_only(tmp_path):
    state = _rng_state()
    torch.save(state, tmp_path / "rng_state_0.pt")
    with _weights_only_loads(tmp_path):
        back = torch.load(tmp_path / "rng_state_0.pt", map_location="cpu", weights_only=True)
    assert back["python"] == state["python"] and torch.equal(back["torch"], state["torch"])
    assert all((a == b).all() if hasattr(a, "all") else a == b for a, b in zip(back["numpy"], state["numpy"]))
