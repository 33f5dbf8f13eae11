"""One training loop for phases 4-7: samples streamed segment by segment through the bounded cache, so the
memories learn to carry what the cache evicts. `objective` (one sample's losses), `loop` (optimizer steps,
accelerate, checkpoints, resume), `phases` (what each phase trains on which data)."""
