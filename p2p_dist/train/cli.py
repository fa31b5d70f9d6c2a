"""`p2p-train` / `python -m p2p_dist.train`: train pix2pix from a YAML recipe plus key=value overrides."""

from __future__ import annotations

import argparse
import sys

from p2p_dist.config import describe_keys, load_config
from p2p_dist.errors import console_entry

EPILOG = """\
Launch on several processes, GPUs or machines with Accelerate and a built-in accelerate config
(python -m p2p_dist.train.launch_config NAME prints its path; recipes/accelerate/NAME.yaml in a clone):
  accelerate launch --config_file "$(python -m p2p_dist.train.launch_config cpu_2proc)" -m p2p_dist.train \\
      --config demo train.max_steps=200
DeepSpeed (G and D each a ZeRO-1/2 engine): the deepspeed_zero2 (or _zero1) accelerate config
(train.engine=auto picks DeepSpeed from that config; train.engine=ddp|deepspeed names it).

Exit codes: 0 done, 2 bad input (one line says what), 3 too many non-finite losses,
74 a checkpoint could not be written (disk full, quota; the previous one is intact),
75 stopped by SIGUSR1/SIGTERM after writing a checkpoint (resume with train.resume=auto),
130 stopped by Ctrl-C after writing a checkpoint (a second Ctrl-C exits at once; the last complete
checkpoint is kept). A train.output_dir in use by another run is refused (its run.lock names the holder).

Configuration keys (section.key=default {choices}):
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="p2p-train",
        description="Train pix2pix (Isola et al. 2017) on WebDataset shards: one CPU, GPUs or nodes.",
        epilog=EPILOG + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        "-c",
        help="YAML recipe file, or a built-in recipe by name (demo, facades_label2photo, ablations/l1, ...; "
        "recipes/ in a clone); defaults apply to missing keys",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="dotted overrides, applied after the file"
    )
    return parser.parse_args(argv)


@console_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(cfg.to_yaml())
        return 0
    from p2p_dist.train.run import train

    return train(cfg)
