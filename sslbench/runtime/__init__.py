"""The training runtime every loop shares (pretraining, the SGD linear probe, fine-tuning, extraction).

Each module holds one part of the plumbing, so that a loop keeps only its protocol:

* :mod:`.process`: this process's place in a ``torchrun`` launch (rank, world, device), the process
  group (NCCL on GPUs, Gloo on the CPU), DDP wrapping and the collectives the loops use.
* :mod:`.precision`: bf16 autocast and channels_last on CUDA; float32 on the CPU.
* :mod:`.sampling`: batches and augmentation that depend only on (seed, epoch, sample index), never
  on the world size or the worker count.
* :mod:`.resume`: reading a saved state (a damaged file is one clear error), the fingerprint check
  with ``--allow-config-change``, RNG state.
* :mod:`.signals`: SIGTERM / SIGUSR1 -> save and exit with status 143, so that a requeued job resumes.
* :mod:`.progress`: a progress bar on a terminal, plain lines elsewhere (cluster logs),
  ``OUT/metrics.jsonl`` and optional TensorBoard scalars.

Why our own small module and not Lightning Fabric or Accelerate: the loops need bit-for-bit resume
(RNG state, mid-epoch data position), a sampler that ignores the world size, shuffle BN and an
all_gather that keeps the local gradient; both libraries own the sampler, the RNG seeding and the
checkpoint format, and would move the protocols' numbers or need most of their defaults turned off.
"""
