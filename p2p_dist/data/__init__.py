"""The data layer: build WebDataset-style tar shards (`pack`, `demo`), read them as deterministic,
resumable streams of batches (`loader`, over `order` and `reader`), the one jitter (`jitter`) and the
image transforms both sides share (`transforms`).

Submodules are imported on demand; nothing heavy happens at package import.
"""
