"""Models as ``(init, apply)`` pairs over plain parameter trees, in the style of ``stax``.

``init(key) -> params`` draws a fresh tree from an explicit PRNG key; ``apply(params, x) -> y`` is
a pure function. Parameter names: ``layer0 … layer{depth-1}`` for hidden layers (``conv0 …`` for
convolutions), ``head`` for the output layer, each ``{"w", "b"}``. Dense weights are (in, out);
convolution weights use MLX's (out, kh, kw, in) layout; images are NHWC.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import mlx.core as mx

from reptile_fn.tree import Tree

HEAD = "head.*"
"""The output layer's leaves (``head.w``, ``head.b``) as a path pattern: what ANIL and head-only tuning adapt."""

ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "relu": lambda x: mx.maximum(x, 0),
    "tanh": mx.tanh,
    "gelu": lambda x: x * mx.sigmoid(1.702 * x),  # the sigmoid approximation, as in mlx.nn.gelu_fast_approx
    "silu": lambda x: x * mx.sigmoid(x),
    "sigmoid": mx.sigmoid,
}


class Model(NamedTuple):
    """A model: ``init(key) -> params`` and ``apply(params, x) -> y``."""

    init: Callable[[mx.array], Tree]
    apply: Callable[[Tree, mx.array], mx.array]


def dense_init(key: mx.array, in_dim: int, out_dim: int) -> Tree:
    """PyTorch's ``nn.Linear`` default: w, b ~ U[−1/√in, 1/√in]."""
    kw, kb = mx.random.split(key)
    bound = 1.0 / math.sqrt(in_dim)
    return {
        "w": mx.random.uniform(-bound, bound, (in_dim, out_dim), key=kw),
        "b": mx.random.uniform(-bound, bound, (out_dim,), key=kb),
    }


def dense(params: Tree, x: mx.array) -> mx.array:
    return x @ params["w"] + params["b"]


def mlp(in_dim: int, out_dim: int, *, hidden: int = 40, depth: int = 2, activation: str = "relu") -> Model:
    """A multilayer perceptron: ``depth`` hidden layers of width ``hidden``, then a linear head."""
    _sizes("mlp", in_dim=in_dim, out_dim=out_dim, hidden=hidden)
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    dims = [in_dim] + [hidden] * depth

    def init(key: mx.array) -> Tree:
        keys = mx.random.split(key, depth + 1)
        params = {f"layer{i}": dense_init(keys[i], dims[i], dims[i + 1]) for i in range(depth)}
        params["head"] = dense_init(keys[depth], dims[-1], out_dim)
        return params

    def apply(params: Tree, x: mx.array) -> mx.array:
        if x.shape[-1:] != (in_dim,):  # a static shape: checked while tracing, under vmap and compile too
            raise ValueError(f"mlp: inputs of shape {x.shape}; it takes rows of {in_dim} features")
        for i in range(depth):
            x = act(dense(params[f"layer{i}"], x))
        return dense(params["head"], x)

    return Model(init, apply)


CONV_IMPLS = ("auto", "native", "im2col")


def conv3x3(x: mx.array, w: mx.array, b: mx.array, *, stride: int = 1, impl: str = "im2col") -> mx.array:
    """3×3 convolution with padding 1, NHWC input, (out, 3, 3, in) weights.

    ``native`` calls ``mx.conv2d``. ``im2col`` pads, takes the 9 strided shifted views, concatenates
    them on the channel axis and does one matmul: the same numbers, but its gradient works under
    ``mx.vmap`` (``mx.conv2d``'s does not in MLX 0.32: "Not implemented for AsStrided") and on the
    CPU it is several times faster for stride 2.
    """
    if impl == "native":
        return mx.conv2d(x, w, stride=stride, padding=1) + b
    return _im2col_conv(stride)(x, w, b)


def _cols(x: mx.array, stride: int, ho: int, wo: int) -> mx.array:
    """(n, ho, wo, 9c): the 9 shifted strided views of the padded input side by side, index (3i + j)·c + ci."""
    xp = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    return mx.concatenate([xp[:, i:i + span_h:stride, j:j + span_w:stride, :] for i in range(3) for j in range(3)],
                          axis=-1)


@functools.lru_cache(maxsize=None)
def _im2col_conv(stride: int):
    """The im2col convolution with a written-out gradient (``mx.custom_function``).

    Autograd differentiates the 9 strided slices by scattering each into a zero tensor the size of the
    padded input and summing them. Here each stride phase of the input gradient (rows ≡ p, columns ≡ q
    mod stride) is computed directly as a stride-1 correlation of the output gradient with the taps that
    land on that phase: unit-stride slices of the padded gradient side by side and one GEMM per phase
    (the same multiply-adds as the column GEMM), then the phases are interleaved once. Before, the column
    gradient was scattered back tap by tap (conv4's inner step with batch norm is 8-11% faster now:
    benchmarks/conv_grad.py). The gradient is made of ordinary ops, so it is itself differentiable
    (second-order MAML) and vmaps and compiles like the forward.
    """

    @mx.custom_function
    def conv(x, w, b):
        n, h, wd, c = x.shape
        ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
        # one 2-D matmul: MLX's CPU matmul on a 4-D left operand is ~30% slower for these shapes
        out = _cols(x, stride, ho, wo).reshape(n * ho * wo, 9 * c) @ mx.transpose(w, (1, 2, 3, 0)).reshape(9 * c, -1)
        return out.reshape(n, ho, wo, -1) + b

    @conv.vjp
    def conv_vjp(primals, cotangent, output):
        x, w, _ = primals
        db = cotangent.reshape(-1, cotangent.shape[-1]).sum(axis=0)
        return _input_gradient(cotangent, w, x.shape[1], x.shape[2], stride), _weight_gradient(x, cotangent, stride), db

    return conv


def _weight_gradient(x: mx.array, g: mx.array, stride: int) -> mx.array:
    """∂/∂w (o, 3, 3, c) of the im2col convolution: its columns against the output gradient ``g`` (n, ho, wo, o)."""
    n, ho, wo, o = g.shape
    cols = _cols(x, stride, ho, wo).reshape(n * ho * wo, -1)
    return (cols.T @ g.reshape(n * ho * wo, o)).reshape(3, 3, x.shape[-1], o).transpose(3, 0, 1, 2)


def _phase(size: int, p: int, stride: int) -> tuple[int, int]:
    """(first u, count) of the padded-input rows r = stride·u + p that are input rows (1 <= r <= size)."""
    first = -(-(1 - p) // stride)
    return first, (size - p) // stride - first + 1


def _input_gradient(g: mx.array, w: mx.array, h: int, wd: int, stride: int) -> mx.array:
    """∂/∂x of the 3×3 convolution (padding 1) with output gradient ``g`` (n, ho, wo, o), by stride phases.

    Padded-input row r = stride·u + p takes tap i = p + stride·k from output row u − k, so phase (p, q) is a
    stride-1 correlation of ``g`` with its taps; phase p's rows are the input rows ≡ p − 1 (mod stride), in order.
    """
    n, c = g.shape[0], w.shape[-1]
    gp = mx.pad(g, [(0, 0), (2, 2), (2, 2), (0, 0)])  # output row a sits at gp row a + 2
    wt = mx.transpose(w, (1, 2, 0, 3))  # (3, 3, o, c)
    side_h, side_w = -(-h // stride), -(-wd // stride)
    grid = []
    for e in range(stride):  # input rows ≡ e (mod stride) come from phase p = e + 1
        p = (e + 1) % stride
        u0, nu = _phase(h, p, stride)
        row = []
        for f in range(stride):
            q = (f + 1) % stride
            v0, nv = _phase(wd, q, stride)
            if nu == 0 or nv == 0:  # an input one row or column wide has no row of this phase
                row.append(mx.zeros((n, side_h, side_w, c), dtype=g.dtype))
                continue
            taps = [(k, m) for k in range((2 - p) // stride + 1) for m in range((2 - q) // stride + 1)]
            cols = mx.concatenate([gp[:, u0 - k + 2:u0 - k + 2 + nu, v0 - m + 2:v0 - m + 2 + nv, :] for k, m in taps], -1)
            wsub = mx.concatenate([wt[p + stride * k, q + stride * m] for k, m in taps], axis=0)
            phase = (cols.reshape(n * nu * nv, -1) @ wsub).reshape(n, nu, nv, c)
            row.append(mx.pad(phase, [(0, 0), (0, side_h - nu), (0, side_w - nv), (0, 0)]))
        grid.append(mx.stack(row, axis=3) if stride > 1 else row[0])
    if stride == 1:
        return grid[0]
    dx = mx.stack(grid, axis=2).reshape(n, side_h * stride, side_w * stride, c)
    return dx[:, :h, :wd, :]


def resolve_conv_impl(impl: str) -> str:
    """``auto`` picks ``im2col``: it is the one whose gradient vmaps over tasks, and it is faster on the CPU."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {impl!r}; use one of {CONV_IMPLS}")
    return "im2col" if impl == "auto" else impl


def conv_init(key: mx.array, in_ch: int, out_ch: int) -> Tree:
    """PyTorch's ``nn.Conv2d`` default: w, b ~ U[−1/√fan_in, 1/√fan_in], fan_in = 9·in."""
    kw, kb = mx.random.split(key)
    bound = 1.0 / math.sqrt(9 * in_ch)
    return {
        "w": mx.random.uniform(-bound, bound, (out_ch, 3, 3, in_ch), key=kw),
        "b": mx.random.uniform(-bound, bound, (out_ch,), key=kb),
    }


def batch_norm(x: mx.array, scale: mx.array, offset: mx.array, eps: float = 1e-5) -> mx.array:
    """Normalise each channel with the statistics of the batch at hand (no running averages)."""
    mean = mx.mean(x, axis=(0, 1, 2), keepdims=True)
    centered = x - mean  # once, for the variance and the output: its gradient is ~40% cheaper than mx.var's
    var = mx.mean(mx.square(centered), axis=(0, 1, 2), keepdims=True)
    return centered * (mx.rsqrt(var + eps) * scale) + offset


def conv4(image_shape: tuple[int, int, int] = (28, 28, 1), n_classes: int = 5, *, filters: int = 64,
          stride: int = 2, norm: str | None = None, pool: bool = False, conv_impl: str = "auto") -> Model:
    """The 4-layer convnet of the MAML and Reptile papers' Omniglot experiments.

    4 × [3×3 conv (stride ``stride``, or stride 1 + 2×2 max-pool with ``pool=True``, for larger
    images), ``filters`` channels, optional batch norm, ReLU], flatten, linear head. Input NHWC.
    ``norm="batch"`` normalises with the statistics of the batch it is applied to (transductive, as
    in both papers' main tables); see ``nontransductive`` for scoring query examples one at a time.
    """
    impl = resolve_conv_impl(conv_impl)
    _sizes("conv4", n_classes=n_classes, filters=filters, stride=stride, **dict(zip(("height", "width", "channels"),
                                                                                  image_shape)))
    if norm not in (None, "batch"):
        raise ValueError(f"unknown norm {norm!r}; use None or 'batch'")
    conv_stride = 1 if pool else stride
    h, w, c = image_shape
    for _ in range(4):
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
    flat = h * w * filters

    def init(key: mx.array) -> Tree:
        keys = mx.random.split(key, 5)
        params = {f"conv{i}": conv_init(keys[i], c if i == 0 else filters, filters) for i in range(4)}
        if norm:
            for i in range(4):
                params[f"norm{i}"] = {"scale": mx.ones((filters,)), "offset": mx.zeros((filters,))}
        params["head"] = dense_init(keys[4], flat, n_classes)
        return params

    def apply(params: Tree, x: mx.array) -> mx.array:
        if x.ndim < 3 or x.shape[-3:] != tuple(image_shape):
            raise ValueError(f"conv4: inputs of shape {x.shape}; it takes images of {tuple(image_shape)} (height, "
                             "width, channels; channels-first images: x.transpose(0, 2, 3, 1))")
        for i in range(4):
            x = conv3x3(x, params[f"conv{i}"]["w"], params[f"conv{i}"]["b"], stride=conv_stride, impl=impl)
            if norm:
                x = batch_norm(x, params[f"norm{i}"]["scale"], params[f"norm{i}"]["offset"])
            x = mx.maximum(x, 0)
            if pool:
                x = max_pool2(x)
        return dense(params["head"], x.reshape(*x.shape[:-3], flat))

    return Model(init, apply)


def _sizes(model: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{model}: {name} = {value}; it must be at least 1")


def max_pool2(x: mx.array) -> mx.array:
    """2×2 max-pooling with stride 2 (NHWC; odd sizes keep the last row/column: 'SAME' padding)."""
    n, h, w, c = x.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        x = mx.pad(x, [(0, 0), (0, ph), (0, pw), (0, 0)], constant_values=-mx.inf)
    return mx.max(x.reshape(n, (h + ph) // 2, 2, (w + pw) // 2, 2, c), axis=(2, 4))


def nontransductive(apply: Callable[[Tree, mx.array], mx.array]) -> Callable:
    """Score each query example on its own: ``apply(params, support ∪ {x_q})`` for every query x_q.

    The Reptile paper's non-transductive protocol: batch statistics never mix query examples, so a
    model with batch norm cannot share information across the query set.
    ``apply_nt(params, support_x, query_x) -> outputs for query_x``.
    """

    def apply_nt(params: Tree, support_x: mx.array, query_x: mx.array) -> mx.array:
        def one(xq):
            return apply(params, mx.concatenate([support_x, xq[None]], axis=0))[-1]

        return mx.vmap(one)(query_x)

    return apply_nt
