"""A 4th-order directional derivative of a small softplus network, three ways, and how far apart they are.

    python examples/fourth_order.py
"""

import torch

from fdsm import central_stencil, directional_derivative

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Softplus(), torch.nn.Linear(32, 1), torch.nn.Flatten(0))
net = net.double()
x = torch.randn(16, 8, dtype=torch.float64)  # (B, d)
v = torch.randn(16, 8, dtype=torch.float64)
v = 0.2 * v / v.norm(dim=1, keepdim=True)  # |v| = 0.2 is the FD step

exact = directional_derivative(net, x, v, 4, method="exact-reverse")  # 4 nested autograd.grad
forward = directional_derivative(net, x, v, 4, method="exact-forward")  # 4 nested torch.func.jvp
fd = directional_derivative(net, x, v, 4, method="fd-batched", stencil=central_stencil(4, accuracy=4))  # 7 points
assert exact.shape == forward.shape == fd.shape == (16,)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


print(f"(v.grad)^4 f(x), sample 0: exact-reverse {exact[0]:.9e}, exact-forward {forward[0]:.9e}, "
      f"fd-batched {fd[0]:.9e}")
print(f"relative difference exact-forward vs exact-reverse: {rel(forward, exact):.1e}")
print(f"relative difference fd-batched    vs exact-reverse: {rel(fd, exact):.1e}  (O(|v|^4) truncation)")
