"""Two levers on eager Taylor mode's cost, measured before building either (neither is in the code):

1. **An elementwise rule in fewer, bigger ops.** Eagerly, a rule is about 40 small ops (``compose.horner`` and the
   coefficients); at batch 2 each costs about what a launch costs. Faà di Bruno's formula can instead be one
   gather over the partitions of k:

   .. math::
       y_k = \\sum_{\\lambda \\vdash k} c_{|\\lambda|}\\, \\frac{|\\lambda|!}{\\prod_i a_i!}
       \\prod_{p \\in \\lambda} \\delta_p,

   with :math:`a_i` the multiplicities of the parts of λ: the products of all partitions (18 at K = 5, 29 at
   K = 6) in one gather and one ``prod``, then one matmul for the sums. About 8 ops whatever K, but
   :math:`K \\cdot P(K)` multiplies per element where Horner's rule takes :math:`K^3/6`. Timed against
   ``horner`` (both with softplus' coefficients, no autograd node) on the deep EBM's activation shapes, beside one
   ``mul`` over the same series (a launch) and FD's activation (one softplus over the stacked points).
2. **Skipping the zero rows.** The input series is (x, v, 0, ..., 0); a linear op keeps rows 2..K zero, so the
   first convolution, the pool and the shortcut convolution of the first block, and the first activation's rule,
   see a series of degree 1. Skipped, the convolutions and the pool would act on 2 of the K+1 rows, and the rule
   would be :math:`y_k = c_k \\delta_1^k`. Each of those four ops is timed on the whole series and on what the lever
   would leave, beside the whole Taylor pass, to bound the saving before writing it.

    PYTHONPATH=. python results/cpu/taylor/levers/levers.py > results/cpu/taylor/levers/levers.log

The deep EBM (``cpu`` preset, seeded weights), float32, with the suite's steady malloc; the calls of one line
alternate round by round in one process (``bench.timing.measure_interleaved``).
"""

from __future__ import annotations

import collections
import functools
import math

import torch
import torch.nn.functional as F

from bench.environment import metadata, prepare_process
from bench.timing import fix_cpu_threads, measure_interleaved, paired_ratio
from fdsm import directional_derivative
from fdsm.models import build
from fdsm.taylor import compose
from fdsm.taylor.rules.elementwise import _softplus_coefficients
from fdsm.taylor.trace import traced

prepare_process()
fix_cpu_threads(2)
torch.manual_seed(0)
CPU = torch.device("cpu")
model = build("deep-ebm", size="cpu")


def partitions(k: int, largest: int | None = None):
    """The partitions of k, parts in decreasing order."""
    if k == 0:
        yield ()
        return
    for part in range(min(k, largest or k), 0, -1):
        for rest in partitions(k - part, part):
            yield (part, *rest)


@functools.lru_cache
def partition_tables(order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every partition λ of k = 1..K: its parts (padded with 0, the index of a row of ones), |λ|, and the
    (K, P) matrix of multinomial weights that sums the products into y_1..y_K."""
    table = [lam for k in range(1, order + 1) for lam in partitions(k)]
    parts = torch.zeros(len(table), order, dtype=torch.long)
    weights = torch.zeros(order, len(table))
    for i, lam in enumerate(table):
        parts[i, :len(lam)] = torch.tensor(lam)
        weights[sum(lam) - 1, i] = math.factorial(len(lam)) / math.prod(
            math.factorial(a) for a in collections.Counter(lam).values())
    return parts, torch.tensor([len(lam) for lam in table]), weights


def monomials(c, z: torch.Tensor) -> torch.Tensor:
    """Faà di Bruno by one gather over the partitions: the composition ``compose.horner`` computes."""
    order = z.shape[0] - 1
    parts, sizes, weights = partition_tables(order)
    c = torch.stack(list(c))
    rows = torch.cat([torch.ones_like(z[:1]), z[1:]])  # row 0: the padding's 1
    products = rows[parts].prod(1) * c[sizes]  # (P, *s)
    return torch.cat([c[:1], (weights @ products.flatten(1)).view(order, *z.shape[1:])])


def softplus_coefficients(z0: torch.Tensor, order: int):
    return _softplus_coefficients(z0, order, beta=1.0, threshold=20.0)


def degree_one(z: torch.Tensor) -> torch.Tensor:
    """The composition of a series of degree 1 (rows 2..K zero): y_0 = c_0, y_k = c_k z_1^k."""
    order = z.shape[0] - 1
    c = softplus_coefficients(z[0], order)
    powers = [z[1]]
    for _ in range(order - 1):
        powers.append(powers[-1] * z[1])
    return torch.cat([c[0].unsqueeze(0), torch.stack(c[1:]) * torch.stack(powers)])


def line(name: str, calls: dict, repeats: int) -> None:
    timings = measure_interleaved(list(calls.values()), CPU, warmup=2, repeats=repeats)
    cells = []
    for label, timing in zip(calls, timings, strict=True):
        ratio = paired_ratio(timing, timings[0])
        cells.append(f"{label} {timing.median_ms:.3f} ms ({ratio.median:.2f} [{ratio.q1:.2f}, {ratio.q3:.2f}])")
    print(f"  {name}: " + "; ".join(cells))


print(metadata(CPU))
print("1. An elementwise rule: median ms (per-round ratio to horner [quartiles]), 30 rounds")
with torch.no_grad():
    for batch in (2, 64):
        for order in (5, 6):
            for shape in ((8, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4)):
                z = torch.randn(order + 1, batch, *shape)
                c = softplus_coefficients(z[0], order)
                error = (monomials(c, z) - compose.horner(c, z)).abs().max() / compose.horner(c, z).abs().max()
                assert error < 1e-5, error  # the same composition
                stacked = z.flatten(0, 1)
                line(f"batch {batch}, K = {order}, {shape}", {
                    "horner": lambda z=z, k=order: compose.horner(softplus_coefficients(z[0], k), z),
                    "monomials": lambda z=z, k=order: monomials(softplus_coefficients(z[0], k), z),
                    "one mul": lambda z=z: z * 2.0,
                    "FD's softplus": lambda s=stacked: F.softplus(s)}, repeats=30)

print("2. The ops that see a degree-1 series: whole series against rows 0..1 (the lever), T = 5, 30 rounds")
ORDER = 5


def degree_one_lines(batch: int, order: int = ORDER) -> None:
    """Part 2 at one batch."""
    x = torch.rand(batch, 1, 32, 32)
    v = torch.randn_like(x)
    graph, leaves = traced(model.log_density, x)
    args = dict(zip((n for n in graph.graph.nodes if n.op == "placeholder"), [x, *leaves], strict=True))
    nodes = {n.name: n for n in graph.graph.nodes}
    w0, b0 = (args[a] for a in nodes["convolution"].args[1:3])
    w3, b3 = (args[a] for a in nodes["convolution_3"].args[1:3])
    pad0, pad3 = nodes["convolution"].args[4], nodes["convolution_3"].args[4]
    with torch.no_grad():
        x_rows = torch.cat([x, v, x.new_zeros((order - 1) * batch, *x.shape[1:])])  # ((K+1)·B, 1, 32, 32)
        h_rows = F.conv2d(x_rows, w0, padding=pad0)
        h_rows[:batch] += b0.view(-1, 1, 1)  # the bias enters the primal only
        z = h_rows.unflatten(0, (order + 1, batch))
        p_rows = F.avg_pool2d(h_rows, 2)
        two = 2 * batch  # rows 0 and 1 of the stacked series
        assert torch.allclose(degree_one(z), compose.horner(softplus_coefficients(z[0], order), z), rtol=1e-4,
                              atol=1e-6)
    with torch.no_grad():
        line(f"batch {batch}, first conv", {"whole": lambda: F.conv2d(x_rows, w0, b0, padding=pad0),
                                             "rows 0..1": lambda: F.conv2d(x_rows[:two], w0, b0, padding=pad0)}, 30)
        line(f"batch {batch}, its softplus rule", {
            "horner": lambda: compose.horner(softplus_coefficients(z[0], order), z),
            "c_k δ_1^k": lambda: degree_one(z)}, 30)
        line(f"batch {batch}, shortcut pool", {"whole": lambda: F.avg_pool2d(h_rows, 2),
                                                "rows 0..1": lambda: F.avg_pool2d(h_rows[:two], 2)}, 30)
        line(f"batch {batch}, shortcut conv", {"whole": lambda: F.conv2d(p_rows, w3, b3, padding=pad3),
                                                "rows 0..1": lambda: F.conv2d(p_rows[:two], w3, b3, padding=pad3)}, 30)
    line(f"batch {batch}, the whole Taylor pass (parameters requiring grad, as in derivatives)", {
        "exact-taylor": lambda: directional_derivative(model.log_density, x, v, order, method="exact-taylor")}, 30)


for batch_size in (2, 64):
    degree_one_lines(batch_size)
