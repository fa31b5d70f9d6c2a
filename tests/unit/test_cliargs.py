"""Option dataclasses come from the parsed arguments once (p2p_dist.cliargs.options_from_args)."""

import dataclasses

import pytest

from p2p_dist.cliargs import options_from_args
from p2p_dist.data import cli as data_cli
from p2p_dist.data.pack import PackOptions
from p2p_eval import cli as eval_cli
from p2p_eval.evaluate import ScoreOptions
from p2p_eval.fcn_train import FCNTrainOptions


def test_pack_options_from_the_data_cli():
    args = data_cli.build_parser().parse_args(
        [
            "pack",
            "aligned",
            "src",
            "out",
            "--shard-size",
            "7",
            "--workers",
            "3",
            "--resize",
            "64",
            "--keep-aspect",
            "--quality",
            "80",
            "--format",
            "png",
            "--name",
            "x",
            "--overwrite",
        ]
    )
    assert options_from_args(PackOptions, args) == PackOptions(
        shard_size=7,
        workers=3,
        resize=64,
        keep_aspect=True,
        quality=80,
        format="png",
        overwrite=True,
        resume=False,
        name="x",
    )


def test_eval_options_from_the_eval_cli():
    parser = eval_cli.build_parser()
    score = options_from_args(
        ScoreOptions,
        parser.parse_args(
            [
                "score",
                "--out",
                "o",
                "--pred",
                "p",
                "--shards",
                "s",
                "--batch-size",
                "2",
                "--eval-mode",
                "--seed",
                "5",
                "--metrics",
                "l1,psnr",
                "--num-workers",
                "1",
            ]
        ),
    )
    assert (
        score.out,
        score.pred,
        score.shards,
        score.batch_size,
        score.eval_mode,
        score.seed,
        score.metrics,
        score.num_workers,
        score.task,
        score.grid,
    ) == ("o", "p", "s", 2, True, 5, ["l1", "psnr"], 1, "auto", 6)
    fcn = options_from_args(
        FCNTrainOptions,
        parser.parse_args(["fcn-train", "--shards", "s", "--out", "o", "--lr", "0.01", "--photo-side", "B"]),
    )
    assert fcn == FCNTrainOptions(shards="s", out="o", photo_side="B", lr=0.01)


def test_a_field_without_an_argument_is_a_programming_error():
    @dataclasses.dataclass
    class Opts:
        out: str
        extra: int = 0

    args = data_cli.build_parser().parse_args(["inspect", "src", "--out", "sheet.png"])
    with pytest.raises(TypeError, match="Opts.extra has no command-line argument"):
        options_from_args(Opts, args)
    assert options_from_args(Opts, args, extra=3) == Opts(out="sheet.png", extra=3)
