"""Reference checkpoints: the key mapping, identical outputs, legacy keys, and clear errors.

The reference networks are re-implemented below (test only) with the reference's nesting and
module order, so that their state dicts have the reference's key layout and their outputs are
the reference's outputs for the same weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.reference import RefUnet, make_reference  # noqa: F401
from p2p_dist.errors import UserError
from p2p_dist.models import (
    ConversionReport,
    build_generator,
    load_generator,
    load_reference_generator,
    reference_key_map,
    to_reference_state_dict,
)
from p2p_dist.models.cli import main as convert_main
from p2p_dist.models.convert import from_reference_state_dict


def _set_dropout(model, on):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train(on)


def _compare(ref, ours, x):
    """Outputs in eval mode, in train mode with dropout off, and in train mode with the same
    dropout masks (same seed: both draw them in the same order)."""
    with torch.no_grad():
        ref.eval(), ours.eval()
        assert (ref(x.clone()) - ours(x)).abs().max() < 1e-5
        ref.train(), ours.train()
        _set_dropout(ref, False), _set_dropout(ours, False)
        assert (ref(x.clone()) - ours(x)).abs().max() < 1e-5
        _set_dropout(ref, True), _set_dropout(ours, True)
        torch.manual_seed(1)
        a = ref(x.clone())
        torch.manual_seed(1)
        b = ours(x)
        assert (a - b).abs().max() < 1e-5


CASES = [
    # arch, norm, in, out, dropout, size
    ("unet_256", "batch", 3, 3, True, 256),
    ("unet_128", "instance", 3, 3, True, 128),
    ("unet_128", "batch", 1, 2, True, 128),  # colorization
    ("resnet_9blocks", "batch", 3, 3, True, 64),  # pix2pix: dropout in the blocks
    ("resnet_9blocks", "instance", 3, 3, False, 64),  # CycleGAN: --no_dropout
]


@pytest.mark.parametrize("arch, norm, cin, cout, dropout, size", CASES)
def test_key_map_covers_the_reference_layout_exactly(arch, norm, cin, cout, dropout, size):
    ref = make_reference(arch, norm, cin, cout, dropout=dropout)
    mapping = reference_key_map(arch, norm, cin, cout, ngf=8, dropout=dropout)
    ours = build_generator(arch, cin, cout, ngf=8, norm=norm, dropout=dropout)
    assert set(mapping) == set(ours.state_dict())
    assert sorted(mapping.values()) == sorted(ref.state_dict())
    assert len(set(mapping.values())) == len(mapping)  # one-to-one


def test_unet_256_batch_norm_has_82_reference_keys_with_the_documented_names():
    mapping = reference_key_map("unet_256", "batch", ngf=64)
    assert len(mapping) == 82
    assert mapping["down.0.0.weight"] == "model.model.0.weight"
    assert mapping["down.1.1.weight"] == "model.model.1.model.1.weight"
    assert mapping["up.0.1.bias"] == "model.model.3.bias"
    assert mapping["up.7.2.running_mean"] == "model.model.1." + "model.3." * 6 + "model.4.running_mean"
    assert "down.0.0.bias" not in mapping  # BatchNorm: the convs carry no bias...
    assert "up.0.1.bias" in mapping  # ...except the outermost up conv


@pytest.mark.parametrize("arch, norm, cin, cout, dropout, size", CASES)
def test_reference_file_gives_identical_outputs(tmp_path, arch, norm, cin, cout, dropout, size):
    ref = make_reference(arch, norm, cin, cout, dropout=dropout)
    path = tmp_path / "latest_net_G.pth"
    torch.save(ref.state_dict(), path)
    ours = load_reference_generator(path, arch, norm, cin, cout, ngf=8, dropout=dropout)
    x = torch.randn(2, cin, size, size)
    _compare(ref, ours, x)


def test_dataparallel_prefix_is_stripped(tmp_path):
    ref = make_reference("unet_128")
    path = tmp_path / "net_G.pth"
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, path)
    ours = load_reference_generator(path, "unet_128", ngf=8)
    _compare(ref, ours, torch.randn(1, 3, 128, 128))


def test_legacy_instance_norm_statistics_are_dropped_explicitly(tmp_path):
    ref = make_reference("unet_128", "instance")
    sd = dict(ref.state_dict())
    # an old PyTorch saved running statistics for InstanceNorm layers; the reference deletes them
    legacy = {}
    for name, m in ref.named_modules():
        if isinstance(m, nn.InstanceNorm2d):
            legacy[f"{name}.running_mean"] = torch.zeros(m.num_features)
            legacy[f"{name}.running_var"] = torch.ones(m.num_features)
            legacy[f"{name}.num_batches_tracked"] = torch.tensor(0)
    assert legacy
    path = tmp_path / "net_G.pth"
    torch.save({**sd, **legacy}, path)
    report = ConversionReport()
    ours = load_reference_generator(path, "unet_128", "instance", ngf=8, report=report)
    assert sorted(report.dropped) == sorted(legacy)
    _compare(ref, ours, torch.randn(1, 3, 128, 128))


def test_missing_batchnorm_counters_of_old_files_are_filled(tmp_path):
    ref = make_reference("resnet_9blocks")
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    converted, report = from_reference_state_dict(sd, "resnet_9blocks", ngf=8)
    assert len(report.filled) == sum(isinstance(m, nn.BatchNorm2d) for m in ref.modules())
    assert all(converted[k].item() == 0 for k in converted if k.endswith("num_batches_tracked"))


def test_our_model_exported_to_the_reference_layout_runs_in_the_reference(tmp_path):
    ours = build_generator("unet_256", ngf=8)
    ref = make_reference("unet_256", seed=5)
    ref.load_state_dict(to_reference_state_dict(ours, "unet_256", ngf=8))
    _compare(ref, ours, torch.randn(1, 3, 256, 256))


# --- errors -------------------------------------------------------------------------------------------
def _save(tmp_path, sd, name="net_G.pth"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def test_a_missing_key_is_named(tmp_path):
    sd = make_reference("unet_128").state_dict()
    gone = "model.model.1.model.3.model.1.weight"
    del sd[gone]
    with pytest.raises(UserError, match=f"missing key '{gone}'"):
        load_reference_generator(_save(tmp_path, sd), "unet_128", ngf=8)


def test_an_unexpected_key_is_named(tmp_path):
    sd = make_reference("unet_128").state_dict()
    sd["model.extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="unexpected key 'model.extra.weight'"):
        load_reference_generator(_save(tmp_path, sd), "unet_128", ngf=8)


def test_another_architecture_is_refused_with_a_hint(tmp_path):
    path = _save(tmp_path, make_reference("unet_256").state_dict())
    with pytest.raises(UserError, match=r"unexpected key .*looks like unet_256 with batch norm"):
        load_reference_generator(path, "unet_128", ngf=8)
    with pytest.raises(UserError, match="looks like unet_256"):
        load_reference_generator(path, "resnet_9blocks", ngf=8)
    with pytest.raises(UserError, match="has shape"):  # right layout, wrong width
        load_reference_generator(path, "unet_256", ngf=16)
    with pytest.raises(UserError, match="looks like resnet with batch norm, dropout=on"):
        load_reference_generator(
            _save(tmp_path, make_reference("resnet_9blocks").state_dict(), "r.pth"),
            "resnet_9blocks",
            ngf=8,
            dropout=False,
        )


def test_wrong_norm_is_refused(tmp_path):
    path = _save(tmp_path, make_reference("unet_128", "batch").state_dict())
    with pytest.raises(
        UserError,
        match=r"missing key 'model.model.0.bias'.*unexpected key "
        r"'model.model.1.model.2.weight'.*looks like unet_128 with batch norm",
    ):
        load_reference_generator(path, "unet_128", "instance", ngf=8)


def test_unreadable_files_are_refused(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="cannot read .* as a PyTorch state dict"):
        load_reference_generator(junk, "unet_256")
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        load_reference_generator(_save(tmp_path, [torch.zeros(1)], "list.pth"), "unet_256")
    with pytest.raises(UserError, match="does not exist"):
        load_reference_generator(tmp_path / "nope.pth", "unet_256")
    with pytest.raises(UserError, match="no encoder-decoder"):
        load_reference_generator(junk, "encoder_decoder_256")
    with pytest.raises(UserError, match="batch or instance"):
        load_reference_generator(junk, "unet_256", norm="none")


def test_convert_command_writes_our_format(tmp_path, capsys):
    ref = make_reference("resnet_9blocks", "instance", dropout=False)
    path = _save(tmp_path, ref.state_dict())
    rc = convert_main(
        [
            str(path),
            str(tmp_path / "converted"),
            "--arch",
            "resnet_9blocks",
            "--norm",
            "instance",
            "--ngf",
            "8",
            "--no-dropout",
            "--direction",
            "BtoA",
        ]
    )
    assert rc == 0
    ours, spec = load_generator(tmp_path / "converted")
    assert (spec.name, spec.norm, spec.ngf, spec.dropout, spec.direction) == (
        "resnet_9blocks",
        "instance",
        8,
        False,
        "BtoA",
    )
    _compare(ref, ours, torch.randn(1, 3, 32, 32))
    assert "wrote" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        convert_main([str(path), str(tmp_path / "bad"), "--arch", "unet_256"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "does not match" in err[0]


def test_convert_refuses_bad_numbers_garbage_files_and_unwritable_outputs(tmp_path, capsys):
    ref = make_reference("unet_128", ngf=8)
    path = _save(tmp_path, ref.state_dict())

    def error(*argv):
        with pytest.raises(SystemExit) as exc:
            convert_main([str(a) for a in argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err)
        return err[-1]

    assert "--ngf: expected a number >= 1, got 0" in error(path, tmp_path / "o", "--arch", "unet_128", "--ngf", "0")
    assert "--in-channels" in error(path, tmp_path / "o", "--arch", "unet_128", "--in-channels", "-1")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"garbage")
    line = error(garbage, tmp_path / "o", "--arch", "unet_128")
    assert "not a PyTorch state-dict file" in line and "weights_only" not in line, line
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    line = error(path, a_file, "--arch", "unet_128", "--ngf", "8")
    assert line.startswith("error: output folder") and "not writable" in line, line
