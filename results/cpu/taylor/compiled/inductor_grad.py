"""Inductor's training-mode compile of the flat Taylor graph, against the eager pass.

The same flat aten graph of one Taylor pass (fdsm.taylor.propagate.taylor_graph: the trained deep EBM, cpu preset,
batch 2, T = 5, float32) is run four ways, and D^5 compared with the eager pass: as it is; compiled by inductor
under no_grad; compiled by inductor with the parameters requiring grad (AOTAutograd's joint graph); and with
backend "aot_eager" (the same joint graph, no inductor). At commit 03fcc94, whose flat graph composed the
elementwise rules by horner's in-place updates of slices, inductor with the parameters requiring grad returned D^5
off by 1.1e5 (relative) and aot_eager was exact; since the row form (compose.horner_rows, 00977e9) it agrees. The
compiled rows stay evaluations under no_grad all the same (fdsm/compiled.py): the gradients of a compiled pass
are not checked anywhere in this project. Run from the repository root:
    PYTHONPATH=. python results/cpu/taylor/compiled/inductor_grad.py > results/cpu/taylor/compiled/inductor_grad.log
"""

import warnings

import torch

from fdsm.models import build
from fdsm.taylor.propagate import taylor_graph

warnings.filterwarnings("ignore")
torch.manual_seed(0)
model = build("deep-ebm", size="cpu")
model.load_state_dict(torch.load("results/cpu/checkpoints/deep-ebm-DSM.pt", weights_only=True))
model.eval()
x = torch.rand(2, *model.event_shape)
v = torch.randn_like(x)
v = v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
order = 5
graph, leaves = taylor_graph(model.log_density, x, v, order)
with torch.no_grad():
    eager = graph(x, v, *leaves)[order]


def worst(d):
    return f"max |D - eager| / |eager| = {((d.detach() - eager).abs() / eager.abs()).max().item():.1e}"


print(f"torch {torch.__version__}, D^{order} of the deep EBM, batch 2, float32")
print("flat graph, eager:           ", worst(graph(x, v, *leaves)[order]))
with torch.no_grad():
    print("inductor, no_grad:           ", worst(torch.compile(graph)(x, v, *leaves)[order]))
print("inductor, parameters grad:   ", worst(torch.compile(graph)(x, v, *leaves)[order]))
print("aot_eager, parameters grad:  ", worst(torch.compile(graph, backend="aot_eager")(x, v, *leaves)[order]))
