r"""Our Taylor mode (``exact-taylor``) side by side with the published PyTorch one, ``jet`` (Dangel et al.,
``jet-for-pytorch``), on the same network: the deep EBM (size cpu) with tanh, an activation both support (``jet``
has no rule for softplus, ELU or SiLU).

    PYTHONPATH=.:/path/to/jet python scripts/compare_jet.py --batches 2,64 --orders 1,2,3,4,5,6 \
        --out results/cpu/taylor/vs-jet/vs_jet.csv

``jet`` is not a dependency of this project and is not committed: put it on ``PYTHONPATH`` (results/cpu/taylor/
vs-jet/README.md says how it was installed here). For each batch and order T, both compute the T-th directional
derivative :math:`(v^\top\nabla)^T \log \tilde p(x)` of the same model, points and direction in float32; they are
timed alternately, round by round (``bench.timing.measure_interleaved``), on one torch thread, after an untimed call
that traces each (its trace time is not in the timed calls). Each result is compared with the float64 reference
(``fdsm.float64_reference`` by nested reverse mode, which is neither of them). ``jet``'s T-th output coefficient is
the derivative itself (its coefficients are those of the jet :math:`f(x + tv)` in derivative form, checked here
against the reference), so both are read the same way. One row per (batch, T): both medians, the paired ratio
jet / ours (above 1: ours is faster) with its quartiles, and both errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

import fdsm
from bench.accuracy import relative_error
from bench.config import comma_ints
from bench.environment import metadata, prepare_process
from bench.timing import fix_cpu_threads, measure_interleaved, paired_ratio
from fdsm.models import build


def jet_call(model, x: torch.Tensor, v: torch.Tensor, order: int):
    """``jet``'s T-th coefficient of log p along v: the jet (x, v, 0, ..., 0) pushed through the traced model."""
    import jet

    jet_f = jet.jet(model.log_density, (x,))
    zeros = tuple(torch.zeros_like(x) for _ in range(order - 1))
    return lambda: jet_f((x, v, *zeros))[order]


def compare(batch: int, order: int, *, repeats: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build("deep-ebm", size="cpu", activation="tanh").eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *model.event_shape, generator=g)  # (B, C, H, W) in [0, 1]
    u = torch.randn(batch, *model.event_shape, generator=g)
    v = u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # unit directions
    ours = lambda: fdsm.directional_derivative(model.log_density, x, v, order, method="exact-taylor")  # noqa: E731
    theirs = jet_call(model, x, v, order)
    reference = fdsm.float64_reference(model, x.double(), v.double(), order,  # independent of both: no norms here
                                       fn=lambda m, inputs: m.log_density(inputs), method="exact-reverse")
    errors = {name: relative_error(call(), reference).median for name, call in (("ours", ours), ("jet", theirs))}
    t_ours, t_jet = measure_interleaved([ours, theirs], torch.device("cpu"), warmup=1, repeats=repeats)
    ratio = paired_ratio(t_jet, t_ours)
    return {"model": "deep-ebm", "activation": "tanh", "size": "cpu", "batch": batch, "order": order,
            "dtype": "float32", "time_ms_ours": t_ours.median_ms, "time_ms_jet": t_jet.median_ms,
            "jet_over_ours": ratio.median, "jet_over_ours_q1": ratio.q1, "jet_over_ours_q3": ratio.q3,
            "rel_error_ours": errors["ours"], "rel_error_jet": errors["jet"], "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=comma_ints, default=(2, 64))
    parser.add_argument("--orders", type=comma_ints, default=(1, 2, 3, 4, 5, 6))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("results/local/vs_jet.csv"))
    args = parser.parse_args(argv)
    try:
        import jet  # noqa: F401
    except ImportError as err:
        print(f"compare_jet: cannot import jet ({err}); put jet-for-pytorch on PYTHONPATH", file=sys.stderr)
        return 2
    prepare_process()
    fix_cpu_threads(1)
    rows = []
    for batch in args.batches:
        for order in args.orders:
            row = {**compare(batch, order, repeats=args.repeats), **metadata(torch.device("cpu"))}
            print(f"B={batch} T={order}: ours {row['time_ms_ours']:.2f} ms, jet {row['time_ms_jet']:.2f} ms, "
                  f"jet/ours {row['jet_over_ours']:.2f}x; errors {row['rel_error_ours']:.1e} / "
                  f"{row['rel_error_jet']:.1e}", flush=True)
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
