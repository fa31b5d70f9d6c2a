"""data.placement in real training runs: the set resident on the device trains the generator the
stream trains, bit for bit, with the default config, train.grad_accum and a stop and resume; the run
says where its pixels live."""

from __future__ import annotations

import json

from helpers.training import assert_same_weights, final_weights, train


def test_device_placement_trains_what_the_stream_trains_across_a_resume(scenes_data, tmp_path):
    common = ["train.max_steps=2", "train.checkpoint_every=100", "data.num_workers=1", "train.grad_accum=2"]
    streamed = train(scenes_data, tmp_path / "stream", *common, "data.placement=stream")
    assert "data streamed from the shards (data.placement=stream)" in streamed.stderr
    first = train(scenes_data, tmp_path / "device", *common, "data.placement=device", "train.stop_after=1")
    line = next(x for x in first.stderr.splitlines() if "data resident on cpu (data.placement=device)" in x)
    assert " held (budget " in line and "loaded in" in line, line
    state = json.loads((tmp_path / "device" / "checkpoints" / "step-0000001" / "trainer_state.json").read_text())
    assert state["data_batches"] == 2
    assert "resumed from" in train(scenes_data, tmp_path / "device", *common, "data.placement=device").stderr
    assert_same_weights(final_weights(tmp_path / "stream"), final_weights(tmp_path / "device"))
