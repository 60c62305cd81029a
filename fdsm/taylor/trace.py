r"""Tracing f once to an aten-level graph, with the tensors it closes over lifted to graph inputs, and a cache.

``traced(f, x)`` returns ``(graph, leaves)``: an ``fx.GraphModule`` whose placeholders are x and then every
``leaves`` tensor, so that ``graph(x, *leaves)`` computes f(x). The graph comes from
``torch.fx.experimental.proxy_tensor.make_fx`` over ``torch.func.functionalize`` (no in-place ops reach the rules),
with ``DECOMPOSITIONS`` keeping the op set small: the normalizations, variances and softmaxes become the means,
products, rsqrt and exp that have rules, and the composites without a rule of their own (mish, hardswish, addcmul,
lerp, masked_fill, a vector norm, max pooling, attention, ...) become torch's own decompositions of them
(``torch._decomp``).

An in-place op that torch implements in C++ (circular padding's slice copies, a channels-last pool's
``as_strided_``, a ``clamp_min_`` inside ``F.normalize``) can survive the first functionalization; such a graph is
functionalized once more (``_functional``), so that no rule ever sees a mutation. f that writes into x itself, or
that reads a tensor's values into Python or NumPy while it is traced (``.numpy()``, ``.tolist()``,
``np.asarray``: the trace would keep whatever those values were), or that draws random numbers (the trace's replay
would draw others), raises ``NotSupported`` saying so.

NOTE [lifting the tensors f closes over]
The objectives pass closures over per-batch tensors (DKEF's alpha, NCSN's labels), ``directional_derivative`` wraps
f anew on every call, and a training step changes the parameters in place. A trace that baked any of them in as
constants would return stale numbers. So before tracing, ``closure_leaves`` walks f: a function's closure cells,
defaults and the globals its code names, a bound method's ``__self__``, a ``functools.partial``'s arguments, the
items of tuples, lists and dicts, and each ``nn.Module`` met on the way. The tensors in closure cells, in lists and
dicts (``torch.func.functional_call``'s parameters, a config object's attributes) and the modules' parameters and
buffers become graph inputs, swapped in for the duration of the trace (cells rebound, items assigned, modules
reparametrized) and passed again, at their current values, on every call: a new alpha each batch reuses the graph.

The cache key is everything else the trace may depend on: the code objects; every non-tensor value met on the walk
(floats, ints, strings, each module's own plain attributes such as ``training`` or a softplus' ``beta``); each
submodule's class, its other attributes (a function it calls, a list of numbers) and its forward hooks, walked; the
identity of every other tensor met (a global, a default, a tuple's item: ``make_fx`` keeps the very tensor object
in the graph, so its in-place updates are seen, and rebinding the name to a new tensor traces again); the identity
of any object the walk cannot see into (a new one traces again); and the shapes, dtypes and devices of x and of
every input. Lists, tuples and dicts are keyed by their contents, so a list of scales mutated in place traces again
(one longer than ``CONTAINER_ITEMS`` is data, keyed by identity, its in-place changes not seen); so are objects
with a ``__dict__`` (a config object, a callable object: its attributes and its class), the classes of the modules
met (their methods, ``forward`` among them, walked as functions, and their class attributes), the attributes of a
user's module-level namespace that the code names (``config.scale``), the global module hooks
(``register_module_forward_hook``) and the default dtype. torch's own Python functions are keyed by identity, not
walked. Tensors that f creates itself (``torch.tensor(2.0)`` in its body) are constants of the graph, rebuilt the
same way on every call. A plain tensor *attribute* of a module (not a parameter or buffer) is kept by reference
like a global: in-place updates are seen, a reassignment is not (register it as a buffer if it is reassigned
between calls).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
import threading
import time
import types
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch._decomp import get_decompositions
from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.modules import module as module_hooks
from torch.nn.utils import stateless
from torch.overrides import TorchFunctionMode

from fdsm.registry import NotSupported

aten = torch.ops.aten

# What a user does where Taylor mode does not apply, in the messages of its ``NotSupported``.
INSTEAD = ("or use nested reverse mode instead: method 'exact-reverse' (method='reverse' in an objective: the SSM "
           "or SSMVR row of train-steps in place of SSM-Taylor or SSMVR-Taylor)")


# ---- decompositions: composite ops into the ops the rules cover ------------------------------------------------



def _reduce_dims(x: Tensor, dims: list[int] | None) -> list[int]:
    return list(range(x.dim())) if dims is None or len(dims) == 0 else [d % x.dim() for d in dims]


def _count(x: Tensor, dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= x.shape[d]
    return n


def _centered_moments(x: Tensor, dims: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    r"""(mean, x - mean, mean of (x - mean)^2) over dims, kept: the biased variance of a normalization."""
    mean = aten.mean.dim(x, dims, True)
    centered = aten.sub.Tensor(x, mean)
    return mean, centered, aten.mean.dim(aten.mul.Tensor(centered, centered), dims, True)


def _var(x: Tensor, dim: list[int] | None = None, *, correction: float | None = None, keepdim: bool = False
         ) -> Tensor:
    r""":math:`\frac{1}{N - c}\sum (x - \bar x)^2` over dim (c = correction, default 1)."""
    dims = _reduce_dims(x, dim)
    _, centered, _ = _centered_moments(x, dims)
    total = aten.sum.dim_IntList(aten.mul.Tensor(centered, centered), dims, keepdim)
    return aten.div.Tensor(total, _count(x, dims) - (1 if correction is None else correction))


def _var_mean(x: Tensor, dim: list[int] | None = None, *, correction: float | None = None, keepdim: bool = False
              ) -> tuple[Tensor, Tensor]:
    return _var(x, dim, correction=correction, keepdim=keepdim), aten.mean.dim(x, _reduce_dims(x, dim), keepdim)


def _std(x: Tensor, dim: list[int] | None = None, *, correction: float | None = None, keepdim: bool = False
         ) -> Tensor:
    return aten.sqrt.default(_var(x, dim, correction=correction, keepdim=keepdim))


def _affine(out: Tensor, weight: Tensor | None, bias: Tensor | None, shape: list[int]) -> Tensor:
    if weight is not None:
        out = aten.mul.Tensor(out, aten.view.default(weight, shape))
    if bias is not None:
        out = aten.add.Tensor(out, aten.view.default(bias, shape))
    return out


class CoupledSamplesWarning(UserWarning):
    """f's samples are not independent (a batch norm with batch statistics): its derivatives along v are not the
    per-sample ones that ``directional_derivative`` promises, and the methods disagree."""


def _batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, training: bool, momentum: float, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    r"""Batch (and, through its reshape, instance) norm: :math:`(x - \mu)\,(\sigma^2 + \epsilon)^{-1/2}`, then the
    affine map, with the batch's statistics in training and the running ones otherwise. In training the running
    statistics are updated as the op updates them, from the batch's primal statistics (detached: a side effect, not
    a value that f returns), so that one Taylor pass leaves the norm as one call of f does. Batch statistics over
    more than one sample couple the samples (instance norm reaches here with a batch of 1):
    ``CoupledSamplesWarning`` says so."""
    shape = [1, x.shape[1], *([1] * (x.dim() - 2))]  # per channel
    if (training or running_mean is None) and x.shape[0] > 1:
        warnings.warn("exact-taylor: f normalizes by its batch's statistics (a batch norm in training mode, or one "
                      "without running statistics), so its samples are not independent: Taylor mode differentiates "
                      "f with every sample moved along v at once, which nested reverse mode and fd-batched do not "
                      "compute (each gives another number); call model.eval() for per-sample derivatives",
                      CoupledSamplesWarning, stacklevel=2)
    if training or running_mean is None:
        mean, centered, var = _centered_moments(x, [0, *range(2, x.dim())])
    else:
        mean, var = aten.view.default(running_mean, shape), aten.view.default(running_var, shape)
        centered = aten.sub.Tensor(x, mean)
    if training and running_mean is not None:
        count = x.numel() // x.shape[1]
        unbiased = aten.mul.Tensor(var, count / max(count - 1, 1))
        for running, batch in ((running_mean, mean), (running_var, unbiased)):
            batch = aten.detach.default(aten.view.default(batch, [-1]))
            aten.copy_.default(running, aten.add.Tensor(aten.mul.Tensor(running, 1 - momentum),
                                                        aten.mul.Tensor(batch, momentum)))
    rstd = aten.rsqrt.default(aten.add.Tensor(var, eps))
    out = _affine(aten.mul.Tensor(centered, rstd), weight, bias, shape)
    return out, aten.view.default(mean, [-1]), aten.view.default(rstd, [-1])


def _batch_norm_no_stats(x: Tensor, weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
                         eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return _batch_norm(x, weight, bias, None, None, True, momentum, eps)


def _layer_norm(x: Tensor, normalized_shape: list[int], weight: Tensor | None, bias: Tensor | None, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    r"""Layer norm over the last len(normalized_shape) dims: :math:`(x - \mu)(\sigma^2 + \epsilon)^{-1/2}`, affine."""
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    mean, centered, var = _centered_moments(x, dims)
    rstd = aten.rsqrt.default(aten.add.Tensor(var, eps))
    return _affine(aten.mul.Tensor(centered, rstd), weight, bias, list(normalized_shape)), mean, rstd


def _group_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, n: int, c: int, hw: int, groups: int,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Group norm: the layer norm of each group of c/groups channels, then the per-channel affine map."""
    grouped = aten.view.default(x, [n, groups, -1])
    mean, centered, var = _centered_moments(grouped, [2])
    rstd = aten.rsqrt.default(aten.add.Tensor(var, eps))
    out = aten.view.default(aten.mul.Tensor(centered, rstd), list(x.shape))
    shape = [1, c, *([1] * (x.dim() - 2))]
    return _affine(out, weight, bias, shape), aten.view.default(mean, [n, groups]), aten.view.default(rstd, [n, groups])


def _celu(x: Tensor, alpha: float = 1.0) -> Tensor:
    r"""CELU: :math:`\max(0, x) + \min(0, \alpha (e^{x/\alpha} - 1))`, the ELU of input scale 1/alpha."""
    return aten.elu.default(x, alpha, 1.0, 1.0 / alpha)


def _softmax(x: Tensor, dim: int, half_to_float: bool) -> Tensor:
    r""":math:`e^{x - m} / \sum e^{x - m}` with m the detached max: any constant shift gives the same value."""
    e = aten.exp.default(aten.sub.Tensor(x, aten.detach.default(aten.amax.default(x, [dim], True))))
    return aten.div.Tensor(e, aten.sum.dim_IntList(e, [dim], True))


def _log_softmax(x: Tensor, dim: int, half_to_float: bool) -> Tensor:
    shifted = aten.sub.Tensor(x, aten.detach.default(aten.amax.default(x, [dim], True)))
    return aten.sub.Tensor(shifted, aten.log.default(aten.sum.dim_IntList(aten.exp.default(shifted), [dim], True)))


def _logsumexp(x: Tensor, dim: list[int], keepdim: bool = False) -> Tensor:
    r""":math:`m + \log\sum e^{x - m}` with m the detached max."""
    m = aten.detach.default(aten.amax.default(x, dim, True))
    out = aten.add.Tensor(aten.log.default(aten.sum.dim_IntList(aten.exp.default(aten.sub.Tensor(x, m)), dim, True)),
                          m)
    return out if keepdim else aten.squeeze.dims(out, dim)


def _cdist(x1: Tensor, x2: Tensor, p: float, compute_mode: int | None = None) -> Tensor:
    r"""cdist: :math:`\|x_1[..., i, :] - x_2[..., j, :]\|_p` for every pair (i, j) of rows, the vector norm of the
    broadcast difference (``compute_mode``, torch's choice of a matmul form for p = 2, reaches ``_euclidean_dist``
    instead, which is this too)."""
    diff = aten.sub.Tensor(aten.unsqueeze.default(x1, -2), aten.unsqueeze.default(x2, -3))
    return aten.linalg_vector_norm.default(diff, p, [-1])


def _pdist(x: Tensor, p: float = 2.0) -> Tensor:
    r"""pdist: :math:`\|x_i - x_j\|_p` for the rows i < j of x (n, d), in the row-major order of the upper triangle."""
    i, j = torch.triu_indices(x.shape[0], x.shape[0], 1, device=x.device)
    diff = aten.sub.Tensor(aten.index_select.default(x, 0, i), aten.index_select.default(x, 0, j))
    return aten.linalg_vector_norm.default(diff, p, [-1])


def _trilinear(i1: Tensor, i2: Tensor, i3: Tensor, expand1: list[int], expand2: list[int], expand3: list[int],
               sumdim: list[int], unroll_dim: int = 1) -> Tensor:
    r"""``nn.Bilinear``'s op: the three inputs unsqueezed at their ``expand`` dims, multiplied (broadcast) and summed
    over ``sumdim``, :math:`\sum_{sumdim} i_1 i_2 i_3` (``unroll_dim`` only orders ATen's loop)."""

    def unsqueezed(t: Tensor, dims: list[int]) -> Tensor:
        for d in sorted(dims):
            t = aten.unsqueeze.default(t, d)
        return t

    product = aten.mul.Tensor(aten.mul.Tensor(unsqueezed(i1, expand1), unsqueezed(i2, expand2)),
                              unsqueezed(i3, expand3))
    return aten.sum.dim_IntList(product, sumdim) if sumdim else product


def _euclidean_dist(x1: Tensor, x2: Tensor) -> Tensor:
    """cdist's p = 2 matmul form (``compute_mode`` "use_mm_for_euclid_dist", and the default's choice above 25
    rows): the same distances as ``_cdist``."""
    return _cdist(x1, x2, 2.0)


def _x_log(log: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """xlogy (log) and xlog1py (log1p): x log(y). torch's decompositions take 0 wherever x = 0 (a constant, to a
    Jet, so D^1 along x was 0, not log y); this keeps the product wherever log(y) is finite, with its derivatives
    x_1 log(y_0), ..., as autograd's. Where x = 0 and log(y) is not finite (y = 0, y = inf, y < 0; not a NaN y) the
    value is torch's 0, as a constant: derivatives 0 where the true ones are infinite or undefined."""

    def decomposition(x: Tensor, y: Tensor | float) -> Tensor:
        if not isinstance(y, Tensor):  # the Scalar_Other / other_scalar overloads: y a Python number
            y = aten.scalar_tensor.default(y, dtype=x.dtype, device=x.device)
        log_y = log(y)
        zero = aten.logical_and(aten.eq.Scalar(x, 0), aten.logical_not(aten.isfinite(log_y)))
        zero = aten.logical_and(zero, aten.logical_not(aten.isnan(y)))
        return aten.where.self(zero, aten.zeros_like(log_y), aten.mul.Tensor(x, log_y))

    return decomposition


def _rrelu_in_eval(x: Tensor, noise: Tensor, lower: float = 0.125, upper: float = 1 / 3, training: bool = False,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor] | object:
    """RReLU in eval mode is leaky ReLU with the mean slope (lower + upper) / 2, as ATen computes it, and leaves the
    noise as it is; in training mode it draws its slopes (the op stays, and is refused as random)."""
    if training:
        return NotImplemented
    return aten.leaky_relu.default(x, (lower + upper) / 2), noise


# Composites with no rule of their own whose torch decompositions reach ops that have one (each is tested against
# nested autograd in tests/test_taylor.py). Not here: the elementwise ops that torch decomposes into prims of their
# own (sinh, tan, exp2, ...), which have rules or none.
TORCH_DECOMPOSED = (
    aten.mish, aten.hardswish, aten.hardsigmoid, aten._prelu_kernel, aten.log_sigmoid_forward, aten.softshrink,
    aten.hardshrink, aten.glu, aten.logaddexp, aten.logaddexp2, aten.logit, aten.xlogy, aten.special_xlog1py,
    aten.mvlgamma, aten.deg2rad, aten.frac, aten.nan_to_num, aten.addcmul, aten.addcdiv,
    aten.lerp, aten.baddbmm, aten.addmv, aten.masked_fill, aten.clamp.Tensor, aten.clamp_min.Tensor,
    aten.clamp_max.Tensor, aten.threshold, aten.linalg_vector_norm, aten.norm, aten.dist, aten.renorm,
    aten.std_mean, aten.linalg_cross, aten.max_pool2d_with_indices, aten.max_pool3d_with_indices,
    aten.grid_sampler_2d, aten.affine_grid_generator, aten._safe_softmax, aten.mse_loss, aten.huber_loss,
    aten.smooth_l1_loss, aten.dot, aten.trace, aten.binary_cross_entropy, aten.soft_margin_loss,
    aten._scaled_dot_product_flash_attention_for_cpu,  # attention on the CPU; its CUDA kernels have no decomposition
)

DECOMPOSITIONS: dict = {
    **get_decompositions(TORCH_DECOMPOSED),
    aten.var.correction: _var,
    aten.var_mean.correction: _var_mean,
    aten.std.correction: _std,
    aten.native_batch_norm.default: _batch_norm,
    aten._native_batch_norm_legit.default: _batch_norm,  # the same signature
    aten._native_batch_norm_legit.no_stats: _batch_norm_no_stats,
    aten._native_batch_norm_legit_no_training.default:
        lambda x, w, b, rm, rv, momentum, eps: _batch_norm(x, w, b, rm, rv, False, momentum, eps),
    aten.native_layer_norm.default: _layer_norm,
    aten.native_group_norm.default: _group_norm,
    aten.celu.default: _celu,
    aten._softmax.default: _softmax,
    aten._log_softmax.default: _log_softmax,
    aten.logsumexp.default: _logsumexp,
    aten._cdist_forward.default: _cdist,
    aten._euclidean_dist.default: _euclidean_dist,
    aten.xlogy.Tensor: _x_log(aten.log.default),
    aten.special_xlog1py.default: _x_log(aten.log1p.default),
    aten.xlogy.Scalar_Other: _x_log(aten.log.default),  # torch.xlogy(z, 3.0): else torch's, 0 along x at x = 0
    aten.special_xlog1py.other_scalar: _x_log(aten.log1p.default),
    aten._pdist_forward.default: _pdist,
    aten._trilinear.default: _trilinear,
    aten.rrelu_with_noise_functional.default: _rrelu_in_eval,
}


# ---- lifting: every tensor f closes over becomes a graph input ------------------------------------------------

_PLAIN = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)
_MODULE_STATE = frozenset(vars(nn.Module())) - {"training"}  # nn.Module's own bookkeeping in an instance's __dict__
_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks")
CONTAINER_ITEMS = 256  # a longer list or dict is data, keyed by identity


@dataclass
class _Walk:
    """What ``closure_leaves`` found: the leaves, how to swap each in, and the cache key."""

    leaves: list[Tensor] = field(default_factory=list)
    leaf_index: dict[int, int] = field(default_factory=dict)  # id(tensor) -> its index in leaves
    cells: list[tuple[types.CellType, int]] = field(default_factory=list)  # (cell, leaf index)
    items: list[tuple[list | dict, object, int]] = field(default_factory=list)  # (list or dict, index or key, leaf)
    modules: list[tuple[nn.Module, dict[str, int]]] = field(default_factory=list)  # (module, its name -> leaf index)
    every_module: list[nn.Module] = field(default_factory=list)  # with parameters or buffers or not
    key: list[object] = field(default_factory=list)
    seen: dict[int, int] = field(default_factory=dict)  # id -> order of first visit (the walk holds f alive)

    def leaf(self, t: Tensor) -> int:
        if id(t) not in self.leaf_index:  # the walk holds f, so an id cannot be reused meanwhile
            self.leaf_index[id(t)] = len(self.leaves)
            self.leaves.append(t)
            self.key.append(("leaf", t.shape, t.dtype, t.device))
        return self.leaf_index[id(t)]

    def visit(self, obj: object) -> None:
        if isinstance(obj, _PLAIN):
            self.key.append(obj)
            return
        if id(obj) in self.seen:
            self.key.append(("again", self.seen[id(obj)]))
            return
        self.seen[id(obj)] = len(self.seen)
        if isinstance(obj, Tensor):  # met outside a closure cell (a default, a partial's argument, a global)
            self.key.append(("constant", _identity(obj), tuple(obj.shape), obj.dtype))
        elif isinstance(obj, nn.Module):
            self._module(obj)
        elif isinstance(obj, types.MethodType):
            self.visit(obj.__self__)
            self.visit(obj.__func__)
        elif isinstance(obj, types.FunctionType):
            self._function(obj)
        elif isinstance(obj, functools.partial):
            for item in (obj.func, *obj.args, *obj.keywords.values()):
                self.visit(item)
            self.key.append(tuple(obj.keywords))
        elif isinstance(obj, (tuple, list, dict)):
            self._container(obj)
        elif isinstance(obj, type):
            self._class(obj)
        elif isinstance(obj, (types.BuiltinFunctionType, types.ModuleType, torch._ops.OpOverloadPacket,
                              torch._ops.OpOverload)):
            self.key.append(("global", _identity(obj)))
        elif hasattr(obj, "__dict__") and not _is_library(type(obj)):  # a config object, a callable object
            self.key.append(("object", _identity(obj)))
            self.visit(type(obj))  # its methods (__call__ among them) and class attributes
            self._container(vars(obj))
        else:  # an object the walk cannot see into: keyed by identity (a new one traces again)
            self.key.append(("opaque", type(obj).__qualname__, _identity(obj)))

    def _container(self, items: tuple | list | dict) -> None:
        """A tuple, list or dict by its contents (a list or dict mutated in place keys anew); one longer than
        ``CONTAINER_ITEMS`` by its identity and length only (data, not settings: its in-place changes are not seen)."""
        if len(items) > CONTAINER_ITEMS:
            self.key.append(("long", type(items), len(items), _identity(items)))
            return
        self.key.append((type(items), len(items)))
        if isinstance(items, tuple):  # immutable: its tensors are constants
            for item in items:
                self.visit(item)
            return
        for k, item in (enumerate(items) if isinstance(items, list) else items.items()):
            if isinstance(items, dict):
                self.visit(k)
            if isinstance(item, Tensor):  # a leaf, swapped in by item assignment (torch.func.functional_call's
                self.items.append((items, k, self.leaf(item)))  # dict of parameters among them)
                self.key.append(("item", self.items[-1][2]))
            else:
                self.visit(item)

    def _class(self, cls: type) -> None:
        """A user's class, once per walk: the methods it and its bases up to torch's define (their code, globals
        and defaults, walked as functions) and their other class attributes by value or walked; a class of torch
        or another library by identity."""
        self.key.append(("class", _identity(cls)))
        if _is_library(cls):
            return
        for base in cls.__mro__:
            if _is_library(base) or base is object:
                continue
            for name, value in vars(base).items():
                if name.startswith("__") and name != "__call__":
                    continue  # Python's own (__module__, __dict__, __init__, ...): not read by forward
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                elif isinstance(value, property):
                    value = value.fget
                self.key.append(name)
                self.visit(value)

    def _module(self, module: nn.Module) -> None:
        """One pass over the submodules, in the order of ``named_modules`` (this runs on every call). Into the key
        go each one's class (its methods, ``forward`` among them, walked as functions: ``_class``), its plain
        attributes by value (training, a softplus' beta, a conv's stride, ...), its other attributes walked (a list of
        scales, a config object, a function it calls; all but nn.Module's own bookkeeping), and its forward hooks,
        walked; its parameters and buffers become leaves (a tensor held under two names, a tied weight, is one
        leaf). Which attribute is which is read from the module's ``_Layout`` (NOTE [a module's layout])."""
        self.key.append(("module", _identity(module)))
        pending, met = [module], set()
        while pending:
            m = pending.pop()
            if m is None or id(m) in met:  # an unset submodule (None), or one met before
                continue
            met.add(id(m))
            self.every_module.append(m)
            attributes = vars(m)
            self.visit(type(m))
            layout = _layout(m, attributes)
            self.key.append((layout.plain, layout.values(attributes)))
            for k in layout.walked:
                self.key.append(k)
                self.visit(attributes[k])
            for hooks in (attributes["_forward_pre_hooks"], attributes["_forward_hooks"]):
                if hooks:
                    self._container(tuple(hooks.values()))
            parameters, buffers = attributes["_parameters"], attributes["_buffers"]
            if parameters or buffers:
                names = {name: self.leaf(t) for tensors in (parameters, buffers) for name, t in tensors.items()
                         if t is not None}
                self.modules.append((m, names))
            if children := attributes["_modules"]:
                pending.extend(reversed(children.values()))

    def _function(self, fn: types.FunctionType) -> None:
        self.key.append(fn.__code__)
        for cell in fn.__closure__ or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell (a name not yet bound)
                self.key.append("empty cell")
                continue
            if isinstance(content, Tensor):
                self.cells.append((cell, self.leaf(content)))
                self.key.append(("cell", self.cells[-1][1]))
            else:
                self.visit(content)
        for default in (*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()):
            self.visit(default)
        names = _global_names(fn.__code__)
        for name in names:
            if name not in fn.__globals__:
                continue  # a builtin, or an attribute name
            value = fn.__globals__[name]
            self.key.append(name)
            if isinstance(value, types.FunctionType) and _is_library(value):
                self.key.append(("library", _identity(value)))  # torch's own Python functions: not walked
            elif isinstance(value, types.ModuleType) and not _is_library(value):  # config.scale: its attributes
                self.key.append(("namespace", _identity(value)))  # that the code names
                for attribute in names:
                    if attribute in vars(value):
                        self.key.append(attribute)
                        self.visit(vars(value)[attribute])
            else:
                self.visit(value)


# NOTE [a module's layout]
# The walk runs on every call, over every submodule's __dict__ (a conv's has 28 entries, 17 of them nn.Module's own
# bookkeeping), and sorting the entries took most of a lookup's time. So each module keeps its layout, found on its
# first walk: which entries are its plain settings (keyed by value), which are walked (a list, a config object, a
# function), which are tensors (kept by reference), and the types of them all. A later walk checks the layout by
# the entries' names and types (two ``itemgetter`` calls, no loop in Python) and by its plain values: the values
# of the previous walk, or else values that are still plain. An attribute added, removed, or rebound to a value of
# another type, or a settings tuple that no longer holds plain values, finds the layout anew. The values are read
# on every walk, as before: the plain ones go into the key, the others are walked. So a layout only saves the
# sorting. It is kept by the module's id, beside a weak reference that drops it when the module goes (and that a
# module made later at the same address does not match). It holds no value that could keep anything alive: names,
# types, and only those plain values that are exactly numbers, strings, flags, dtypes, devices or tuples of them.


@dataclass(frozen=True)
class _Layout:
    """Which entries of a module's __dict__ the cache key reads, and how (NOTE [a module's layout])."""

    names: tuple[str, ...]  # every entry's name, in order
    read: Callable[[dict], tuple]  # the entries that are not nn.Module's bookkeeping, as a tuple
    types: tuple[type, ...]  # their types
    plain: tuple[str, ...]  # the names of the plain ones (settings, keyed by value)
    values: Callable[[dict], tuple]  # the plain entries' values, as a tuple
    recorded: tuple  # those values when the layout was found (or _UNRECORDED: see the NOTE)
    walked: tuple[str, ...]  # the names of the others that are not tensors


_LAYOUTS: dict[int, tuple[weakref.ref, _Layout]] = {}  # id(module) -> (the module, weakly; its layout)
_UNRECORDED = object()  # equal to nothing but itself


def _getter(names: tuple[str, ...]) -> Callable[[dict], tuple]:
    """``operator.itemgetter`` that always returns a tuple (itemgetter of one name returns the item itself)."""
    if not names:
        return lambda d: ()
    get = operator.itemgetter(*names)
    return get if len(names) > 1 else lambda d: (get(d),)


def _layout(module: nn.Module, attributes: dict) -> _Layout:
    """The module's layout: the one kept, where it still holds; else found now and kept."""
    kept = _LAYOUTS.get(id(module))
    layout = kept[1] if kept is not None and kept[0]() is module else None
    if layout is not None and layout.names == tuple(attributes) and (
            tuple(map(type, layout.read(attributes))) == layout.types):
        plain = layout.values(attributes)
        try:
            if plain == layout.recorded:  # compared item by item by value; a tensor in a tuple may raise
                return layout
        except (RuntimeError, TypeError, ValueError):
            pass
        if all(map(_plain, plain)):
            return layout
    own = tuple(k for k in attributes if k not in _MODULE_STATE)
    plain = tuple(k for k in own if _plain(attributes[k]))
    layout = _Layout(names=tuple(attributes), read=_getter(own), types=tuple(type(attributes[k]) for k in own),
                     plain=plain, values=_getter(plain),
                     recorded=tuple(attributes[k] if _exactly_plain(attributes[k]) else _UNRECORDED for k in plain),
                     walked=tuple(k for k in own if k not in plain and not isinstance(attributes[k], Tensor)))
    key = id(module)
    _LAYOUTS[key] = weakref.ref(module, lambda _, key=key: _LAYOUTS.pop(key, None)), layout
    return layout


def _exactly_plain(value: object) -> bool:
    """A plain value of the plain types themselves, no subclass (which could hold references)."""
    return type(value) in _PLAIN_TYPES or type(value) is tuple and all(map(_exactly_plain, value))


class _Same:
    """A key part equal only to one of the very same live object: by identity, through a weak reference (a dead
    one equals nothing new, so a later object at the same address never matches), never by the object's own
    ``__eq__`` or ``__hash__`` (a weak reference hashes and compares as its object: a global dataclass instance,
    unhashable, raised TypeError, and two equal ones would have shared a trace)."""

    __slots__ = ("ref", "id")

    def __init__(self, obj: object) -> None:
        self.ref, self.id = weakref.ref(obj), id(obj)

    def __hash__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and self.id == other.id and self.ref() is not None and self.ref() is other.ref()


def _identity(obj: object) -> object:
    """A key part equal only for this very object, while it lives (``_Same``), else, for an object that takes no
    weak reference, the object itself where it is hashable, else its id."""
    try:
        return _Same(obj)
    except TypeError:
        pass
    try:
        hash(obj)
    except TypeError:
        return ("id", id(obj))
    return obj


_PLAIN_TYPES = frozenset(_PLAIN)


def _plain(value: object) -> bool:
    """A value that may steer a trace and compares by value: a number, string, flag, dtype, or a tuple of them.
    (It runs for every attribute of every submodule on every call: the exact types are tested first.)"""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return True
    if isinstance(value, tuple):
        return all(type(item) in _PLAIN_TYPES or _plain(item) for item in value)
    return isinstance(value, _PLAIN)


LIBRARIES = ("torch", "numpy", "functools", "typing", "builtins")  # keyed by identity, never walked


def _is_library(obj: types.FunctionType | type | types.ModuleType) -> bool:
    """A function, class or module of torch, numpy or Python itself."""
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    return (name or "").split(".")[0] in LIBRARIES


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The names a code object and the code nested in it read, each once, in order of appearance (made once per
    code object: the walk asks for them on every call)."""
    return tuple(dict.fromkeys(_names(code)))


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def closure_leaves(f: Callable) -> _Walk:
    """Walk f (see NOTE [lifting the tensors f closes over]) for the tensors to lift and the cache key."""
    walk = _Walk()
    walk.key.append(torch.get_default_dtype())  # the dtype of the constants f's body makes
    for hooks in _GLOBAL_HOOKS:  # register_module_forward_hook and _pre_hook: they run in every module's call
        walk._container(tuple(getattr(module_hooks, hooks).values()))
    walk.visit(f)
    return walk


@contextlib.contextmanager
def _swapped(walk: _Walk, values: tuple[Tensor, ...]) -> Iterator[None]:
    """Within the block, every leaf of ``walk`` reads as ``values[i]``: cells rebound, list and dict items assigned,
    modules reparametrized. A module's plain tensor attributes are restored after it, and those f set anew are
    removed: a forward (pre-)hook or a forward that sets one (``nn.utils.spectral_norm``'s ``weight``, a cache of the
    last batch) would leave a tensor of the trace there, which no copy can read; the replay runs no Python, so such
    an attribute keeps its value from before the call."""
    saved = [cell.cell_contents for cell, _ in walk.cells]
    saved_items = [items[k] for items, k, _ in walk.items]
    saved_attributes = [(module, {name: value for name, value in vars(module).items() if isinstance(value, Tensor)})
                        for module in walk.every_module]
    try:
        for cell, i in walk.cells:
            cell.cell_contents = values[i]
        for items, k, i in walk.items:
            items[k] = values[i]
        with contextlib.ExitStack() as stack:
            for module, names in walk.modules:
                stack.enter_context(stateless._reparametrize_module(
                    module, {name: values[i] for name, i in names.items()}, tie_weights=True))
            yield
    finally:
        for (cell, _), value in zip(walk.cells, saved, strict=True):
            cell.cell_contents = value
        for (items, k, _), value in zip(walk.items, saved_items, strict=True):
            items[k] = value
        for module, attributes in saved_attributes:
            for name in [name for name, value in vars(module).items()
                         if isinstance(value, Tensor) and name not in attributes]:
                delattr(module, name)
            vars(module).update(attributes)


# ---- the cache ------------------------------------------------------------------------------------------------

@dataclass
class TraceStats:
    """How often ``traced`` traced (a miss) or reused a graph (a hit), and the wall time it took to trace the graph
    of the latest call (on a hit, the time its trace took when it was made)."""

    traces: int = 0
    hits: int = 0
    last_trace_ms: float = float("nan")


class _Key:
    """A cache key that hashes its parts once: the dict operations of a lookup then hash it for free and compare
    the parts once, on the hit."""

    __slots__ = ("parts", "hash")

    def __init__(self, parts: tuple) -> None:
        self.parts, self.hash = parts, hash(parts)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self.hash == other.hash and self.parts == other.parts


STATS = TraceStats()
_CACHE: OrderedDict[_Key, tuple[fx.GraphModule, float]] = OrderedDict()  # key -> (graph, its trace time in ms)
CACHE_SIZE = 64
TRACING = threading.RLock()  # one trace at a time: make_fx keeps global state (two threads' first calls collided)


def _storage(t: Tensor) -> int:
    """Which storage a plain tensor has (its aliases share it), without reading its data pointer."""
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # no storage of its own (sparse, a functional wrapper)
        return id(t)


def _detached(value: object, keep: tuple[object, ...] = ()) -> object:
    """A tensor detached, or each of a tuple or list of them (a named tuple or one of ``torch.return_types`` keeps
    its type); one of ``keep`` (an op's arguments: ``.to`` of the same dtype, ``.contiguous()`` return their input
    itself, which keeps its gradient) and anything else as it is."""
    if isinstance(value, (tuple, list)):
        items = [_detached(item, keep) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, Tensor) and not any(value is argument for argument in keep):
        return value.detach()
    return value


class _WatchedCalls(TorchFunctionMode):
    """Watches f's torch calls while it is traced:

    - a read of a traced tensor's values into Python or NumPy is refused: under ``functionalize`` a tensor has no
      storage of its own, so ``.numpy()`` returns whatever memory is there and the trace keeps it as a constant;
    - an in-place write into a tensor that the trace keeps as a constant, one that f neither computes nor closes
      over (a global, a default argument, a tuple's item; closure cells, parameters and buffers are lifted to
      functional inputs), is refused before it runs: it would run now, in the trace, and again at every call of the
      graph, so that f's first call read it written twice. A tensor that f makes while traced (from constants only,
      so not functional) is its own;
    - what f computes under a ``torch.no_grad`` of its own is detached (its writes excepted, which take values so
      computed): a constant, as autograd has it, along x and for the parameters' gradient (a scale computed under
      no_grad; a spectral norm's power iteration, whose buffer write had then failed autograd's version check).
    """

    READS = frozenset({Tensor.numpy, Tensor.tolist, Tensor.__array__})
    NOT_WRITES = frozenset({"requires_grad_", "share_memory_"})
    DETACHED = frozenset({Tensor.detach})  # its output is detached already
    AUGMENTED = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__"})

    def __init__(self) -> None:
        super().__init__()
        self.made: dict[int, weakref.ref] = {}  # id -> the tensors made while traced, as long as they live

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func in self.READS and torch._is_functional_tensor(args[0]):
            raise NotSupported(f"exact-taylor traces f once, to torch ops, and f reads a tensor's values into Python "
                               f"or NumPy ({func.__name__}): the trace cannot follow them; keep that computation in "
                               f"torch ops, {INSTEAD}")
        written = kwargs.get("out", args[0] if args and self._in_place(func) else None)
        for target in (written, *self._running_statistics(func, args, kwargs)):
            if isinstance(target, Tensor) and self._kept_as_a_constant(target):
                raise NotSupported(f"exact-taylor: f writes in place ({getattr(func, '__name__', func)}) into a "
                                   "tensor that the trace keeps as a constant (a global, a default argument, a tuple's "
                                   "item; closure cells, parameters and buffers are lifted to inputs): the trace would "
                                   "run the write again at every call; close over that tensor in f, register it as a "
                                   f"buffer, or write a copy, {INSTEAD}")
        out = func(*args, **kwargs)
        if not torch.is_grad_enabled() and written is None and func not in self.DETACHED:
            out = _detached(out, args)  # computed under f's torch.no_grad: a constant, for autograd and the rules
        constants = {_storage(a) for a in args if isinstance(a, Tensor) and self._kept_as_a_constant(a)}
        for t in out if isinstance(out, (tuple, list)) else (out,):  # f's own, but a constant's alias (detach, .data)
            if isinstance(t, Tensor) and not torch._is_functional_tensor(t) and _storage(t) not in constants:
                self.made[id(t)] = weakref.ref(t, functools.partial(self._forget, id(t)))
        return out

    @staticmethod
    def _running_statistics(func: Callable, args: tuple, kwargs: dict) -> tuple[object, ...]:
        """The running statistics that ``F.batch_norm`` in training updates in place (``_batch_norm``), else ()."""
        if func is not torch.nn.functional.batch_norm:
            return ()
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        return (bound.arguments["running_mean"], bound.arguments["running_var"]) if bound.arguments["training"] else ()

    def _forget(self, key: int, _: weakref.ref) -> None:
        self.made.pop(key, None)

    @classmethod
    def _in_place(cls, func: Callable) -> bool:
        name = getattr(func, "__name__", "")
        return name.endswith("_") and not name.endswith("__") and name not in cls.NOT_WRITES or name in cls.AUGMENTED

    def _kept_as_a_constant(self, t: Tensor) -> bool:
        base = t if t._base is None else t._base
        if torch._is_functional_tensor(base):
            return False
        made = self.made.get(id(base))
        return made is None or made() is not base


def _mutates(node: fx.Node) -> bool:
    """An in-place op other than functionalize's own write-back of an input (a ``copy_`` into a placeholder)."""
    return (isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable
            and not (node.target is aten.copy_.default and node.args[0].op == "placeholder"))


def _functional(graph: fx.GraphModule, inputs: list[Tensor]) -> fx.GraphModule:
    """The graph with no in-place op but functionalize's write-backs into the inputs: as it is, or functionalized
    once more where a mutation survived the first pass (module docstring; ``inputs`` are copies, as in
    ``_trace``). A write-back into x is refused; one into a leaf (a batch norm's ``num_batches_tracked += 1``)
    runs as in f, and is refused where its value depends on x (the rule of ``copy_``)."""
    if any(map(_mutates, graph.graph.nodes)):
        graph = make_fx(torch.func.functionalize(graph), decomposition_table=DECOMPOSITIONS)(*inputs)
    x = next(node for node in graph.graph.nodes if node.op == "placeholder")
    if any(node.target is aten.copy_.default and node.args[0] is x for node in graph.graph.nodes):
        raise NotSupported("exact-taylor: f writes in place into its input x (an x.mul_(...), an x[...] = ...): "
                           f"write that step out of place, {INSTEAD}")
    return graph


def _deterministic(graph: fx.GraphModule) -> fx.GraphModule:
    """The graph, unless it draws random numbers (an op tagged ``nondeterministic_seeded``: ``torch.randn``,
    dropout in training mode): its replay would draw other numbers than f's own call, a seeded generator's
    included, so D^0 would not be f(x)."""
    for node in graph.graph.nodes:
        if isinstance(node.target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in node.target.tags:
            raise NotSupported(f"exact-taylor: f draws random numbers ({node.target}): the trace would draw others "
                               "than f's own call; draw them outside f and close over the tensor (or call "
                               f"model.eval() for dropout), {INSTEAD}")
    return graph


def _drop_identity_strides(graph: fx.GraphModule) -> fx.GraphModule:
    """Drop each ``as_strided`` that views a tensor as itself (the same size, offset and strides on every dim of
    size > 1), as functionalize writes a channels-last pool's ``as_strided_``; any other has no rule."""
    dropped = False
    for node in list(graph.graph.nodes):
        if node.target is not aten.as_strided.default:
            continue
        base, size, stride, *offset = node.args
        val = base.meta.get("val")
        if val is None or list(size) != list(val.shape) or (offset[0] if offset else 0) not in (None,
                                                                                                 val.storage_offset()):
            continue
        if all(n == 1 or a == b for n, a, b in zip(size, stride, val.stride(), strict=True)):
            node.replace_all_uses_with(base)
            graph.graph.erase_node(node)
            dropped = True
    if dropped:
        graph.recompile()
    return graph


def _renormalized_tables_as_autograd_reads_them(graph: fx.GraphModule) -> fx.GraphModule:
    """``F.embedding(max_norm=)`` renormalizes its table's rows in place, through a detached view of it, and autograd
    then differentiates the new values as the table itself. In the trace the renormalized table is a value of its
    own, computed from the detached table: each of its reads becomes ``renormalized + (table - table.detach())``,
    the same values, exactly, with autograd's gradient into the table (a parameter, or a value computed from one;
    a second lookup renormalizes the first one's read again). functionalize's write-back into the table stays as
    it is. A table that depends on x is refused where the pass is planned
    (``fdsm.taylor.propagate.WRITTEN_UNDER_NO_GRAD``)."""
    changed = False
    for node in list(graph.graph.nodes):
        source = node.args[0] if node.target is aten.embedding_renorm.default else None
        if not (isinstance(source, fx.Node) and source.target is aten.detach.default):
            continue
        table = source.args[0]
        readers = [user for user in node.users if not (user.target is aten.copy_.default
                                                       and user.args[0].op == "placeholder")]
        with graph.graph.inserting_after(node):
            detached = graph.graph.call_function(aten.detach.default, (table,))
        with graph.graph.inserting_after(detached):
            zero = graph.graph.call_function(aten.sub.Tensor, (table, detached))  # 0, with the table's gradient
        with graph.graph.inserting_after(zero):
            read = graph.graph.call_function(aten.add.Tensor, (node, zero))
        for user in readers:
            user.replace_input_with(node, read)
        changed = True
    if changed:
        graph.recompile()
    return graph


@contextlib.contextmanager
def _unvalidated_distributions() -> Iterator[None]:
    """``torch.distributions``' argument checks (``validate_args``, on by default) branch on the arguments' values,
    which a trace cannot; they only check, so they are off while f is traced (the process-wide default, restored
    after). So Taylor mode computes what nested autograd computes with ``validate_args=False``: a covariance that is
    not positive definite still fails in its Cholesky factorization's own error, but a negative scale is not
    refused: its log-density D^0 is NaN, and the higher derivatives are the formula's (finite). A distribution
    built with ``validate_args=True`` keeps its check (and is refused as a data-dependent branch)."""
    default = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(default)


def _unwrapped(t: Tensor) -> Tensor:
    """t as a plain tensor, to trace on: a call inside a ``torch.func`` transform (``grad``, ``jacrev``, ``jvp``,
    ``vmap``) passes wrapped tensors, and ``make_fx`` under a transform traces every op as a constant (every
    derivative zero). So the trace runs outside the transforms, on plain tensors: a gradient-tracking wrapper holds
    its value; a batched one its samples, of which the first stands for all (the trace reads no value:
    ``_WatchedCalls``). The graph then runs on the wrapped tensors, under the transforms."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        bdim = functorch.maybe_get_bdim(t)
        t = functorch.get_unwrapped(t)
        if bdim >= 0:
            t = t.select(bdim, 0)
    return t.detach()


def _trace(f: Callable[[Tensor], Tensor], walk: _Walk, x: Tensor) -> fx.GraphModule:
    def lifted(inputs: Tensor, *leaves: Tensor) -> Tensor:
        with _swapped(walk, leaves):
            return f(inputs)

    try:
        with torch.no_grad(), temporarily_clear_interpreter_stack():  # traced outside any torch.func transform
            inputs = [_unwrapped(t).clone() for t in (x, *walk.leaves)]  # copies: a write of f's runs in the call
            # with gradients on (nothing here requires one), so that a torch.no_grad of f's shows (_WatchedCalls)
            with _WatchedCalls(), _unvalidated_distributions(), torch.enable_grad():
                graph = make_fx(torch.func.functionalize(lifted), decomposition_table=DECOMPOSITIONS)(*inputs)
            graph = _drop_identity_strides(_deterministic(_functional(graph, inputs)))
            return _renormalized_tables_as_autograd_reads_them(graph)
    except RuntimeError as err:
        if "mutating a non-functional tensor with a functional tensor" in str(err):  # functionalize's words
            raise NotSupported("exact-taylor: f writes into a copy of a tensor that the trace keeps as a constant (a "
                               "global or a default argument; closure cells, parameters and buffers are lifted to "
                               "inputs), with values or indices that functionalize cannot write there (computed from "
                               "x, or a Python number, which it wraps): close over that tensor in f, register it as a "
                               f"buffer, or build the copy with torch.zeros / torch.where, {INSTEAD}") from err
        if "being transformed by a functorch transform" in str(err):  # f's own autograd call, under functionalize
            raise NotSupported("exact-taylor traces f under torch.func.functionalize, where f's own autograd calls "
                               "(requires_grad_, torch.autograd.grad: a score computed inside f as an energy's "
                               "gradient) cannot run; give Taylor mode the energy, or differentiate it with "
                               f"torch.func.grad inside f, {INSTEAD}") from err
        if "data-dependent" not in str(err):  # make_fx's words for a branch on a value of the traced tensor
            raise
        raise NotSupported("exact-taylor traces f once, for every x of this shape, and f branches on a value "
                           "computed from x or from a tensor it closes over (data-dependent control flow: an `if` "
                           "or `.item()` on a tensor, or an op that checks its input's values, such as one_hot); "
                           f"write the branch with torch.where, {INSTEAD}") from err


def traced(f: Callable[[Tensor], Tensor], x: Tensor) -> tuple[fx.GraphModule, list[Tensor]]:
    """f's aten graph (placeholders: x, then the leaves) from the cache, or traced now; and the leaves' current
    values, to pass on this call."""
    walk = closure_leaves(f)
    key = _Key((x.shape, x.dtype, x.device, *walk.key))
    entry = _CACHE.pop(key, None)  # and put back last: the cache forgets the least recently used
    if entry is not None:
        STATS.hits += 1
    else:
        with TRACING:
            start = time.perf_counter()
            graph = _trace(f, walk, x)
            entry = graph, 1e3 * (time.perf_counter() - start)
        STATS.traces += 1
        if len(_CACHE) >= CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE[key] = entry
    graph, STATS.last_trace_ms = entry
    return graph, walk.leaves


def clear_cache() -> None:
    """Forget every traced graph (the next call of each f traces again)."""
    _CACHE.clear()
