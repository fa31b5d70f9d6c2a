"""Hand-written WebDataset shards (PNG members) for tests."""

from __future__ import annotations

import io
import tarfile

from PIL import Image


def write_png_shard(path, samples):
    with tarfile.open(path, "w") as tf:
        for key, fields in samples:
            for ext, arr in fields.items():
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="PNG")
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = buf.tell()
                buf.seek(0)
                tf.addfile(info, buf)
