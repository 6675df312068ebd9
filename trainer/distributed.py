"""Data-parallel training under `torchrun`: the ranks of one update and what passes between them.

`flywheel trainer` started by `torchrun --nproc_per_node N` runs N processes. Rank 0 is the trainer
as it runs alone: it alone talks to the backend (episodes, the live adapter, status, the upload),
selects, gates and uploads. The other ranks only help with the policy update: for each update rank
0 sends them a `Job` (the training episodes, the objective, the adapter weights and optimizer state
it starts from), and every rank then runs the same `train_on_episodes` over the same minibatches,
each on its share of every minibatch's episodes, the gradients summed across ranks before each step.

Why rank 0 sends the episodes rather than every rank fetching the page: the cycle's episodes are
what rank 0 kept after the guards and the held-out split, and the weights it starts from may be a
version the backend no longer serves (a candidate the gate refused is restored in memory, not
fetched); sending both keeps one source of truth and one backend client, and the other ranks need
no token. The episodes of one cycle are a few MB, sent once per update.

The maths: the PG loss is a mean over a minibatch's episodes of a sum over their tokens, so rank r's
loss on its share, weighted by its share of the minibatch (len(mine) / len(minibatch)), sums over
the ranks to the whole minibatch's loss, and the summed gradients are the one-process gradient.
The same holds for the replay windows; the correction term is a mean over wanted tokens, so each
rank divides its sum by the tokens counted on all ranks. Clipping and the AdamW step then run on the
same summed gradients on every rank, so the weights stay equal without being sent again. With one
process every collective here is the identity and the update is the one-process update exactly.

Two process groups: the default one (NCCL on GPUs, gloo on CPU) carries the gradients; a gloo group
carries the jobs, CPU-side and with a long timeout, since rank 0 may wait hours for new episodes
while the others wait for their next job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a rank waits for rank 0's next job (or for the others at a collective of the jobs'
# group): longer than any quiet spell between cycles.
JOB_WAIT = timedelta(days=30)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks; the default is one process alone."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # The gloo group the jobs travel in; None alone.
    jobs: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share: every size-th item from its rank on (all of them alone)."""
        return list(items[self.rank :: self.size])

    def sum(self, values: Sequence[float]) -> list[float]:
        """The values summed element-wise over the ranks (in float64, so counts stay exact)."""
        if self.size == 1:
            return list(values)
        summed = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(summed)
        return summed.tolist()

    def sum_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Each parameter's gradient summed over the ranks, in one flat float32 all-reduce; a rank
        whose share was empty contributes zeros."""
        if self.size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad = g.view_as(p).to(p.dtype)

    def gather(self, items: list[T]) -> list[T]:
        """Every rank's items, concatenated in rank order (picklable, CPU-side objects)."""
        if self.size == 1:
            return items
        parts: list[list[T] | None] = [None] * self.size
        dist.all_gather_object(parts, items, group=self.jobs)
        return [item for part in parts for item in part or []]

    def send(self, job: Job | None) -> None:
        """Rank 0: the next job to the other ranks (None: stop)."""
        if self.size > 1:
            dist.broadcast_object_list([job], src=0, group=self.jobs)

    def receive(self) -> Job | None:
        """Ranks above 0: wait for rank 0's next job (None: stop)."""
        box: list[Job | None] = [None]
        dist.broadcast_object_list(box, src=0, group=self.jobs)
        return box[0]


ALONE = World()


@dataclass
class Job:
    """One policy update, as rank 0 runs it: every rank runs `train_on_episodes(**kwargs)` on a
    policy of `base_model` whose adapter weights and optimizer state are set to these first."""

    base_model: str
    # The adapter's peft LoraConfig: the other ranks build the same adapter.
    lora: Any
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    kwargs: dict[str, Any]


def join(device_name: str) -> World:
    """The world `torchrun` started this process in (WORLD_SIZE, RANK, LOCAL_RANK and the rendezvous
    in the environment); one process alone without it. On CUDA each rank takes GPU LOCAL_RANK and
    the gradients go over NCCL; on CPU over gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device_name != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if on_gpu else "gloo")
    jobs = dist.new_group(backend="gloo", timeout=JOB_WAIT)
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    log.info("rank %d of %d on %s", rank, size, device)
    return World(rank, size, device, jobs)


def leave(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def to_cpu(value: Any) -> Any:
    """Tensors anywhere in nested dicts, lists and tuples moved to the CPU: what is pickled to the
    other ranks must not name this rank's GPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value
