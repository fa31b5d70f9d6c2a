"""`python -m p2p_dist.models REF.pth OUT --arch unet_256` (the same as `p2p-convert`): convert a reference
generator file into our format (see p2p_dist.models.cli)."""

from p2p_dist.models.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
