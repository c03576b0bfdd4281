"""GPU slots of a local sweep: ``--gpus 0,1,2,3 --runs-per-gpu 2`` -> one worker per slot.

A *slot* is one GPU id taken ``runs_per_gpu`` times; each slot is one worker
process whose ``CUDA_VISIBLE_DEVICES`` is that id, so inside the run the GPU is
``cuda:0`` and no run ever sees another run's GPU. A worker runs one run at a
time and takes the next as soon as its run ends, so a slot is never idle while
runs wait and never holds two runs at once (the community's habit of one run
per GPU: NLPrompt's ``parallel_main.sh``, PTNL's per-GPU scripts; data-parallel
training of prompt learners is slower than one GPU, CoOp issue #14).

Ids are checked against ``torch.cuda.device_count()`` (of the physical GPUs
this process may use, i.e. after its own ``CUDA_VISIBLE_DEVICES``). Tests on a
machine without a GPU give fake ids: they set the environment variable
:data:`FAKE_GPUS_ENV` (tests only; a count of pretend GPUs), or pass
``device_count`` to :func:`check_gpus` directly. The runs of such a test must
use ``backbone.device: cpu``; only the placement is exercised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from visprompt.errors import VispromptError

#: Tests only: pretend this many GPUs exist (a CPU machine exercises placement with it).
FAKE_GPUS_ENV = "VISPROMPT_FAKE_GPU_COUNT"


def parse_gpus(text: str) -> list[int]:
    """``"0,1,3"`` -> ``[0, 1, 3]``; a malformed or repeated id is a one-line error."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise VispromptError(
                f"--gpus {text!r} is not a list of GPU ids; write e.g. --gpus 0,1,2,3"
            )
        if int(part) in ids:
            raise VispromptError(
                f"--gpus {text!r} names GPU {part} twice; use --runs-per-gpu for more runs per GPU"
            )
        ids.append(int(part))
    return ids


def visible_gpu_count() -> int:
    """GPUs this process can use (``torch.cuda.device_count()``; the fake count in tests)."""
    fake = os.environ.get(FAKE_GPUS_ENV)
    if fake:
        return int(fake)
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(ids: Sequence[int], device_count: Callable[[], int] = visible_gpu_count) -> None:
    """Every id names a GPU of this machine; otherwise a one-line error naming the fix."""
    count = device_count()
    if count == 0:
        raise VispromptError(
            "--gpus given but this machine has no CUDA GPU visible to torch; drop --gpus "
            "(use --jobs N on CPU) or run where the GPUs are"
        )
    missing = [i for i in ids if i >= count]
    if missing:
        raise VispromptError(
            f"--gpus names GPU {missing[0]}, but this machine has {count} "
            f"(ids 0-{count - 1}); check nvidia-smi and give existing ids"
        )


def gpu_slots(ids: Sequence[int], runs_per_gpu: int = 1) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each slot, GPU-major: 0,0,1,1 for 2 runs per GPU.

    Slots are interleaved across GPUs when workers start (see
    :func:`slot_order`), so the first runs of a sweep spread over all GPUs.
    """
    if runs_per_gpu < 1:
        raise VispromptError(f"--runs-per-gpu must be at least 1, got {runs_per_gpu}")
    return [str(i) for i in ids for _ in range(runs_per_gpu)]


def slot_order(slots: Sequence[str]) -> list[int]:
    """Slot indices in start order: one per GPU first, then the second of each, ..."""
    seen: dict[str, int] = {}
    rank = []
    for index, gpu in enumerate(slots):
        rank.append((seen.get(gpu, 0), index))
        seen[gpu] = seen.get(gpu, 0) + 1
    return [index for _, index in sorted(rank)]
