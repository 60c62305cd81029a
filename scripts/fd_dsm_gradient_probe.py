r"""How far FD-DSM's parameter gradient is from DSM's on the deep EBM of ``fdsm-bench train`` (8x8 digits, n_chan 8),
on the same batch, along DSM's own training run: the cosine and the norm ratio, in float32 and float64.

    PYTHONPATH=. python scripts/fd_dsm_gradient_probe.py > results/cpu/after-review/fd_dsm_gradient_probe.log

FD-DSM estimates DSM through one random projection v per sample (eq. (10)), so even where the finite difference is
exact the two gradients differ by that projection's noise; ``fdsm-bench grad-agreement`` instead compares FD-DSM
with the sliced DSM on the same v, which isolates the finite difference. The run trains by DSM as ``train`` does
(its batches, seed and learning rate) and probes at steps 1, 51 and 101.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from bench.commands.train import DEFAULT
from fdsm.data import digits
from fdsm.recipes import RECIPES
from fdsm.training import batches, make_optimizer, training_step

PROBE_STEPS = (1, 51, 101)


def flat_gradient(model: torch.nn.Module, loss_fn, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The parameter gradient of ``loss_fn(model, x)`` as one vector (zeros for a parameter it does not reach)."""
    torch.manual_seed(seed)  # the same noise and directions for both objectives
    model.zero_grad()
    loss_fn(model, x).backward()
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in model.parameters()])


def main() -> None:
    torch.set_num_threads(2)
    data = digits((1, 8, 8))
    data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))][200:]  # train's split
    dsm, fd_dsm = RECIPES.get("deep-ebm/DSM"), RECIPES.get("deep-ebm/FD-DSM")
    recipe = dataclasses.replace(dsm, batch=DEFAULT.ebm_batch, optim=dataclasses.replace(dsm.optim, lr=DEFAULT.ebm_lr))
    torch.manual_seed(0)
    model = recipe.build_model("cpu", image_size=8, n_chan=DEFAULT.ebm_width)
    optimizer, scheduler = make_optimizer(model, recipe.optim, DEFAULT.ebm_steps)
    stream = batches(data, recipe.batch, torch.Generator().manual_seed(0))
    print("step dtype   cosine(FD-DSM, DSM)  |grad FD-DSM| / |grad DSM|")
    for step in range(1, max(PROBE_STEPS) + 1):
        x = next(stream)
        if step in PROBE_STEPS:
            state = torch.random.get_rng_state()  # probing must not move the training run's draws
            for dtype in (torch.float32, torch.float64):
                model.to(dtype)
                exact, fd = (flat_gradient(model, r.loss, x.to(dtype), seed=123) for r in (dsm, fd_dsm))
                cosine = torch.nn.functional.cosine_similarity(fd, exact, dim=0).item()
                ratio = (fd.norm() / exact.norm()).item()
                print(f"{step:4d} {str(dtype).removeprefix('torch.'):7s} {cosine:20.5f}  {ratio:.3f}")
            model.float()
            torch.random.set_rng_state(state)
        training_step(model, functools.partial(recipe.loss, model, x), optimizer, clip=recipe.optim.clip,
                      scheduler=scheduler, step=step)


if __name__ == "__main__":
    main()
