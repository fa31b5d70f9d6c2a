"""`python -m p2p_dist.models REF.pth OUT --arch unet_256` (the same as `p2p-convert`): convert a reference generator file into
our format (see p2p_dist.models.convert)."""

from p2p_dist.models.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
