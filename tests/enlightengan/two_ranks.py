"""Two CPU ranks of a gloo process group (``torch.multiprocessing``, no Ray), and the code the
data-parallel tests run on them and in one process to compare.

Kept apart from the test files so the spawned processes import only torch and enlightengan.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from enlightengan.config import EnlightenGANConfig
from enlightengan.distributed import rank_and_world_size
from enlightengan.losses import RelativisticAverageLSGAN
from enlightengan.training import build_modules, build_optimizers, step_generator, training_step

WORLD_SIZE = 2


def run_on_two_ranks(function, directory: Path, *args) -> None:
    """Call ``function(rank, directory, *args)`` on ranks 0 and 1; results go to files."""
    directory.mkdir(parents=True, exist_ok=True)
    mp.spawn(_entry, args=(function, str(directory), args), nprocs=WORLD_SIZE, join=True)


def _entry(rank: int, function, directory: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{directory}/rendezvous",
        rank=rank,
        world_size=WORLD_SIZE,
    )
    try:
        function(rank, Path(directory), *args)
    finally:
        dist.destroy_process_group()


def share(batch: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank ``rank``'s rows of a global batch split evenly over the two ranks."""
    rows = batch.shape[0] // WORLD_SIZE
    return batch[rank * rows : (rank + 1) * rows]


def score_maps() -> tuple[torch.Tensor, torch.Tensor]:
    """Global-D (real, fake) score maps of a global batch of 4."""
    rng = torch.Generator().manual_seed(5)
    return torch.randn(4, 1, 3, 3, generator=rng), torch.randn(4, 1, 3, 3, generator=rng) - 1


def relativistic_terms(real: torch.Tensor, fake: torch.Tensor, gather: bool) -> dict:
    """D and G relativistic losses and the gradients of D + 2 G with respect to the scores."""
    real, fake = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
    loss = RelativisticAverageLSGAN(gather_means=gather)
    d_loss, g_loss = loss.discriminator_loss(real, fake), loss.generator_loss(real, fake)
    (d_loss + 2 * g_loss).backward()
    return {"d": d_loss.detach(), "g": g_loss.detach(), "real": real.grad, "fake": fake.grad}


def relativistic_worker(rank: int, directory: Path) -> None:
    real, fake = score_maps()
    results = {
        gather: relativistic_terms(share(real, rank), share(fake, rank), gather)
        for gather in (True, False)
    }
    torch.save(results, directory / f"rank{rank}.pt")


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (low, normal) global batch of 4 crops of 32 x 32 in [-1, 1]. Rank 1's half is
    darker and flatter than rank 0's, so per-rank score means differ from the global ones."""
    rng = torch.Generator().manual_seed(3)
    low = torch.rand(4, 3, 32, 32, generator=rng) * 0.5 - 1.0
    normal = torch.rand(4, 3, 32, 32, generator=rng) * 2.0 - 1.0
    low[2:] = low[2:] * 0.2 - 0.8
    normal[2:] = normal[2:] * 0.2 - 0.6
    return low, normal


def train(config: EnlightenGANConfig, low, normal, steps: int, data_parallel: bool) -> dict:
    """``steps`` training steps of a freshly seeded tiny model; returns the rank-averaged
    losses of every step and the final weights.

    The self-feature-preserving loss gets a small frozen stand-in for VGG: its maths does
    not depend on which network it is, and every process builds the same one. The
    discriminators get Kaiming-normal conv weights, the last layer scaled up to give scores
    of order one: with the reference's N(0, 0.02) weights a tiny D gives every image nearly
    the same score, and where the relativistic means are taken would hardly matter.
    """
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.2))
    modules = build_modules(config, features.requires_grad_(False).eval())
    with torch.no_grad():
        for discriminator in (modules.global_d, modules.patch_d):
            for module in discriminator.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, a=0.2)
            discriminator.layers[-1].weight.mul_(10.0)
    if data_parallel:
        modules.generator = DistributedDataParallel(modules.generator)
        modules.global_d = DistributedDataParallel(modules.global_d)
        modules.patch_d = DistributedDataParallel(modules.patch_d)
    optimizers = build_optimizers(modules, config.optim)
    _, world_size = rank_and_world_size()
    history = []
    for step in range(steps):
        rng = step_generator(config.seed, step)
        losses = training_step(modules, optimizers, low, normal, config, rng)
        values = torch.tensor(list(losses.values()), dtype=torch.float64)
        if world_size > 1:
            dist.all_reduce(values)
        history.append(dict(zip(losses, (values / world_size).tolist(), strict=True)))
    # After a step G holds the gradients of its update and both Ds those of theirs
    # (DDP-averaged), since the D update's backward stops at the detached output.
    networks = {
        name: getattr(network, "module", network) for name, network in modules.trainable().items()
    }
    weights = {
        name: {key: value.detach().clone() for key, value in network.state_dict().items()}
        for name, network in networks.items()
    }
    gradients = {
        name: {key: value.grad.clone() for key, value in network.named_parameters()}
        for name, network in networks.items()
    }
    return {"losses": history, "weights": weights, "gradients": gradients}


def training_worker(rank: int, directory: Path, config_json: str, steps: int) -> None:
    config = EnlightenGANConfig.from_json(config_json)
    low, normal = global_batch()
    results = {}
    for gather in (True, False):
        setting = config.with_overrides({"loss.gather_relativistic_means": gather})
        results[gather] = train(setting, share(low, rank), share(normal, rank), steps, True)
    torch.save(results, directory / f"rank{rank}.pt")
