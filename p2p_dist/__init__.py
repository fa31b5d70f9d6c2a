"""p2p-dist: pix2pix (Isola et al., arXiv 1611.07004) at cluster scale."""

__version__ = "0.1.0"
