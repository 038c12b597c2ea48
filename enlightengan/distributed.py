"""What the training step needs from ``torch.distributed`` (plain PyTorch, no Ray).

The reference trained with ``DataParallel``: one process saw the whole batch, so its
relativistic means and its random draws covered the global batch. Under DDP every worker holds
a share; these helpers let the step behave as that one process would. Outside
``torch.distributed`` (or with one worker) they change nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_batch(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``local`` (equal shapes) along dim 0, in rank order.

    Differentiable: the backward sums the gradient of the gathered tensor over all ranks and
    hands each rank the slice of its own rows. So when every rank computes the same loss on
    the gathered batch, each local row receives world-size times its full-batch gradient, and
    DDP's average over the world size restores exactly the single-process gradient.
    """
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return local
    return _GatherBatch.apply(local)


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        rank, world_size = rank_and_world_size()
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local)
        ctx.rows = (rank * local.shape[0], (rank + 1) * local.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # all_reduce rather than reduce_scatter: gloo (CPU workers) has no reduce_scatter, and
        # score maps are small enough that sending the whole gradient costs nothing.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, stop = ctx.rows
        return grad[start:stop]
