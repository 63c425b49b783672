"""PyTorch peer, two ways of writing the same Reptile meta-step:

- "torch.func+compile": functional_call + torch.func.grad for one task, torch.func.vmap over tasks, torch.compile
  around the meta-step (falls back to eager torch.func, and says so in the result's note, if compiling fails);
- "torch loop (learn2learn-style)": an nn.Module, a Python loop over tasks, a deep copy of the model per task adapted
  with an SGD optimizer, and the Reptile average applied by an outer SGD optimizer.

and W3, the Reptile LoRA meta-step on all-MiniLM-L6-v2 (needs `transformers`):

- "torch eager, Adam per task": Hugging Face's BertModel loaded from the same model.safetensors as
  reptile_fn's encoder, LoRA by hand on every layer's query and value Linear, mean pooling, L2 norm, a linear head;
  per task a copy of the adapter and head adapted by torch.optim.Adam through functional_call, then the Reptile step.

Run `python -m benchmarks.peers.torch_peer` for a table of W1 (M=8), W2 (M=5) and W3 (M=2) plus the correctness checks.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from . import common
from .common import WORKLOADS, inner_slices

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.func import functional_call, grad, vmap
except ImportError:  # the benchmark harness asks available() first
    torch = None

FUNC, LOOP = "torch.func+compile", "torch loop (learn2learn-style)"
TEXT = "torch eager, Adam per task"
VARIANTS = (FUNC, LOOP, TEXT)
WORKLOAD_VARIANTS = {"W1": (FUNC, LOOP), "W2": (FUNC, LOOP), "W3": (TEXT,)}  # no W4 peer in PyTorch


def available(workload: str | None = None) -> bool:
    """PyTorch importable (and for W3, transformers and all-MiniLM-L6-v2's files too)."""
    if torch is None or (workload is not None and workload not in WORKLOAD_VARIANTS):
        return False
    return workload != "W3" or text_available()


# ---------------------------------------------------------------------------------------------- models, layouts, data

if torch is not None:

    class FlattenHWC(nn.Module):
        """Flatten in (h, w, c) order, the canonical one the head weight is laid out for (MLX and JAX are NHWC)."""

        def forward(self, x):
            return x.permute(0, 2, 3, 1).flatten(1)


def make_model(workload: str):
    if workload == "W1":
        a, b, c, d = common.MLP_SIZES
        return nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, d))
    layers, c_in = [], 1
    for _ in range(common.CONV_LAYERS):
        layers += [nn.Conv2d(c_in, common.FILTERS, 3, stride=2, padding=1), nn.ReLU()]
        c_in = common.FILTERS
    return nn.Sequential(*layers, FlattenHWC(), nn.Linear(4 * common.FILTERS, common.N_WAY))


def _layout(workload: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(torch name, canonical name, axes taking the canonical array to torch's layout) for every parameter."""
    if workload == "W1":
        return [x for i in range(3) for x in ((f"{2 * i}.weight", f"w{i}", (1, 0)), (f"{2 * i}.bias", f"b{i}", (0,)))]
    convs = [x for i in range(common.CONV_LAYERS)
             for x in ((f"{2 * i}.weight", f"c{i}", (3, 2, 0, 1)), (f"{2 * i}.bias", f"cb{i}", (0,)))]  # HWIO -> OIHW
    head = 2 * common.CONV_LAYERS + 1
    return convs + [(f"{head}.weight", "w", (1, 0)), (f"{head}.bias", "b", (0,))]


def to_torch(workload: str, params: dict[str, np.ndarray], dev) -> dict:
    # .copy() gives fresh C strides even on size-1 dims, so the inputs' strides match the compiled step's outputs
    # (otherwise torch.compile recompiles once, on a stride guard of the (40, 1) first-layer weight).
    return {t: torch.from_numpy(params[c].transpose(ax).copy()).to(dev) for t, c, ax in _layout(workload)}


def to_numpy(workload: str, params: dict) -> dict[str, np.ndarray]:
    return {c: params[t].detach().cpu().numpy().transpose(np.argsort(ax)) for t, c, ax in _layout(workload)}


def data_pool(workload: str, meta_batch: int, dev, seed: int = 0) -> list[tuple]:
    out = []
    for x, y in common.data_pool(workload, meta_batch, seed):
        if workload == "W2":
            x, y = x.transpose(0, 1, 4, 2, 3), y.astype(np.int64)  # NHWC -> NCHW; cross_entropy wants int64 labels
        out.append((torch.from_numpy(x.copy()).to(dev), torch.from_numpy(y).to(dev)))
    return out


def loss_fn(workload: str):
    return F.mse_loss if workload == "W1" else F.cross_entropy


# ---------------------------------------------------------------------------------------------- the meta-steps


def make_func_meta_step(workload: str, model):
    """torch.func: grad of a functional task loss, the inner loop per task, vmap over tasks; params is a dict."""
    w, loss = WORKLOADS[workload], loss_fn(workload)

    def task_loss(params, x, y):
        return loss(functional_call(model, params, (x,)), y)

    def adapt(params, x, y):
        for sl in inner_slices(w, x.shape[0]):  # unrolled: 5 static steps, static slices
            g = grad(task_loss)(params, x[sl], y[sl])
            params = {k: p - w.inner_lr * g[k] for k, p in params.items()}
        return params

    def meta_step(params, xs, ys):
        adapted = vmap(adapt, in_dims=(None, 0, 0))(params, xs, ys)
        return {k: p + w.outer_lr * (adapted[k].mean(0) - p) for k, p in params.items()}

    return meta_step


def make_loop_meta_step(workload: str, model):
    """The way learn2learn users write Reptile: mutates `model` in place; deep copy + SGD per task."""
    w, loss = WORKLOADS[workload], loss_fn(workload)
    # Reptile's outer step as learn2learn's examples do it: SGD(lr=beta) on the "gradient" theta - mean_i theta_i,
    # i.e. theta <- theta + beta * (mean_i theta_i - theta).
    outer_opt = torch.optim.SGD(model.parameters(), lr=w.outer_lr)

    def meta_step(xs, ys):
        sums = [torch.zeros_like(p) for p in model.parameters()]
        for x, y in zip(xs, ys):
            learner = copy.deepcopy(model)
            opt = torch.optim.SGD(learner.parameters(), lr=w.inner_lr)
            for sl in inner_slices(w, x.shape[0]):
                opt.zero_grad()
                loss(learner(x[sl]), y[sl]).backward()
                opt.step()
            with torch.no_grad():
                for s, p in zip(sums, learner.parameters()):
                    s.add_(p)
        for p, s in zip(model.parameters(), sums):
            p.grad = p.detach() - s / len(xs)
        outer_opt.step()
        outer_opt.zero_grad()

    return meta_step


def reference_meta_step(workload: str, model):
    """Plain reference: loops over tasks and steps, torch.autograd.grad, no vmap, compile or optimizer."""
    w, loss = WORKLOADS[workload], loss_fn(workload)

    def meta_step(params, xs, ys):
        mean = {k: torch.zeros_like(p) for k, p in params.items()}
        for x, y in zip(xs, ys):
            fast = dict(params)
            for sl in inner_slices(w, x.shape[0]):
                fast = {k: p.detach().requires_grad_() for k, p in fast.items()}
                g = torch.autograd.grad(loss(functional_call(model, fast, (x[sl],)), y[sl]), list(fast.values()))
                fast = {k: p.detach() - w.inner_lr * gk for (k, p), gk in zip(fast.items(), g)}
            for k in mean:
                mean[k] += fast[k] / len(xs)
        return {k: p + w.outer_lr * (mean[k] - p) for k, p in params.items()}

    return meta_step


# ---------------------------------------------------------------------------------------------- W3: LoRA on all-MiniLM


def text_available() -> bool:
    """transformers importable and all-MiniLM-L6-v2's files installed (reptile_fn's text-model group)."""
    import importlib.util

    return importlib.util.find_spec("transformers") is not None and _encoder_folder() is not None


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def _encoder_folder():
    """The folder of reptile_fn's encoder (model.safetensors, config.json), or None if it is not installed."""
    from reptile_fn.errors import ReptileFnError  # imports reptile_fn (and MLX) only when W3 is asked for
    from reptile_fn.text.encoder import encoder_path

    try:
        return encoder_path(None)  # the very files reptile_fn's W3 loads
    except ReptileFnError:
        return None


if torch is not None:

    class LoRALinear(nn.Module):
        """base(x) + (x @ A) @ B: the frozen Linear with dW = A @ B (A: (in, r), B: (r, out), B = 0 at the start)."""

        def __init__(self, base: nn.Linear, rank: int):
            super().__init__()
            self.base = base
            self.lora_a = nn.Parameter(torch.zeros(base.in_features, rank))
            self.lora_b = nn.Parameter(torch.zeros(rank, base.out_features))

        def forward(self, x):
            return self.base(x) + (x @ self.lora_a) @ self.lora_b

    class TextClassifier(nn.Module):
        """BertModel, mean pooling over the mask, L2 normalisation, a linear head (reptile_fn's text_classifier)."""

        def __init__(self, bert, n_classes: int):
            super().__init__()
            self.bert = bert
            self.head = nn.Linear(bert.config.hidden_size, n_classes)

        def forward(self, ids, mask):
            h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            return self.head(F.normalize(pooled, dim=-1, eps=1e-12))


def _text_name(key: str) -> tuple[str, tuple[int, ...]]:
    """(torch parameter name, axes to torch's layout) of a `common.lora_head_params` key."""
    if key.startswith("head."):
        return ("head.weight", (1, 0)) if key == "head.w" else ("head.bias", (0,))
    layer, target, field = key.split(".")
    return f"bert.encoder.layer.{layer[5:]}.attention.self.{target}.{field}", (0, 1)


def text_model(dev, seed: int = 0):
    """(TextClassifier with LoRA on every query and value Linear, its trainable start {name: tensor})."""
    from transformers import BertModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
    logging.disable_progress_bar()
    bert = BertModel.from_pretrained(str(_encoder_folder()), add_pooling_layer=False, attn_implementation="sdpa")
    bert.requires_grad_(False)
    for layer in bert.encoder.layer:
        for target in common.LORA_TARGETS:
            setattr(layer.attention.self, target, LoRALinear(getattr(layer.attention.self, target), common.TEXT_RANK))
    model = TextClassifier(bert, common.TEXT_WAY).eval().to(dev)  # eval: no dropout
    start = {}
    for key, value in common.lora_head_params(seed).items():
        name, axes = _text_name(key)
        start[name] = torch.from_numpy(value.transpose(axes).copy()).to(dev)
    assert set(start) == {n for n, p in model.named_parameters() if "lora_" in n or n.startswith("head.")}
    return model, start


def text_pool(meta_batch: int, dev, seed: int = 0) -> list[tuple]:
    return [tuple(torch.from_numpy(a.astype(np.int64)).to(dev) for a in batch)
            for batch in common.token_pool(meta_batch, seed=seed)]


def make_text_meta_step(model):
    """Per task: a copy of the adapter and head, 5 torch.optim.Adam steps through functional_call (the frozen encoder
    stays in the module, requires_grad off); then theta <- theta + beta * (mean_i theta_i - theta)."""
    w = common.W3

    def meta_step(params: dict, ids, mask, labels) -> dict:
        mean = {k: torch.zeros_like(p) for k, p in params.items()}
        for x, m, y in zip(ids, mask, labels):
            fast = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
            opt = torch.optim.Adam(fast.values(), lr=w.inner_lr, betas=w.adam_betas, eps=common.ADAM_EPS)
            for _ in range(w.inner_steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(functional_call(model, fast, (x, m)), y).backward()
                opt.step()
            with torch.no_grad():
                for k in mean:
                    mean[k] += fast[k] / len(ids)
        with torch.no_grad():
            return {k: p + w.outer_lr * (mean[k] - p) for k, p in params.items()}

    return meta_step


def time_text_steps(meta_batch: int, dev, seed: int, **timing) -> list[float]:
    model, params = text_model(dev, seed)
    step_fn, pool = make_text_meta_step(model), text_pool(meta_batch, dev, seed)
    state = {"params": params, "i": 0}

    def step():
        state["params"] = step_fn(state["params"], *pool[state["i"] % len(pool)])
        state["i"] += 1

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return common.time_meta_steps(step, sync, **timing)


def check_embeddings(n: int = 25) -> float:
    """Max |difference| between the BertModel's L2-normalised mean-pooled embeddings (LoRA B = 0: no change) of
    `n` W3 sentences and reptile_fn's text.encoder.encode of the same ids."""
    from . import reptile_side  # imports reptile_fn (and MLX) only when asked

    ids, mask, _ = common.token_pool(1)[0]
    ids, mask = ids[0, :n], mask[0, :n]
    model, _ = text_model(torch.device("cpu"))
    with torch.no_grad():
        h = model.bert(input_ids=torch.from_numpy(ids.astype(np.int64)),
                       attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state
        m = torch.from_numpy(mask).unsqueeze(-1).float()
        ours = F.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    return float(np.abs(ours - reptile_side.embeddings(ids, mask)).max())


def check_meta_step(meta_batch: int = 2, steps: int = 1) -> float:
    """Max |difference| between the adapter and head after `steps` W3 meta-steps here and in reptile_fn (its
    compiled training step), from the same start on the same batches. Adam's first steps are ~lr * sign(g), so a
    gradient within float32 noise of zero can move one entry by up to 2 * lr * beta; expect ~1e-6 otherwise."""
    from . import reptile_side

    dev = torch.device("cpu")
    model, params = text_model(dev)
    step_fn, pool = make_text_meta_step(model), text_pool(meta_batch, dev)
    with torch.enable_grad():
        for t in range(steps):
            params = step_fn(params, *pool[t % len(pool)])
    ours = {}
    for key in common.lora_head_params():
        name, axes = _text_name(key)
        ours[key] = params[name].cpu().numpy().transpose(np.argsort(axes))
    return common.max_abs_diff(ours, reptile_side.text_reference(meta_batch, steps))


# ---------------------------------------------------------------------------------------------- harness interface


def _device(device: str):
    if device == "cpu":
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else None


def _setup(dev, num_threads: int | None) -> str:
    if dev.type == "cpu":
        n = num_threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        torch.set_num_threads(n)
        return f"threads={n}"
    # Full float32 everywhere, as in the other peers: no TF32 in cuDNN convs or cuBLAS matmuls.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return "no TF32"


COMPILE_MODES = ("fullgraph", "graph breaks allowed", "eager")  # what FUNC tries, in order, until one works


def _builder(variant: str, workload: str, dev, seed: int = 0, mode: str = COMPILE_MODES[0]):
    """Returns (step(xs, ys), params()): one meta-step on the variant's own state, and that state as a dict."""
    model = make_model(workload).to(dev)
    start = to_torch(workload, common.init_params(workload, seed), dev)
    if variant == LOOP:
        model.load_state_dict(start)
        return make_loop_meta_step(workload, model), lambda: dict(model.named_parameters())
    if variant == FUNC:
        fn = make_func_meta_step(workload, model)
        if mode != "eager":
            torch._dynamo.reset()  # fresh compile per run: no stale guards, no recompile limit, no dynamic shapes
            fn = torch.compile(fn, fullgraph=mode == "fullgraph")
    else:  # the reference
        fn = reference_meta_step(workload, model)
    state = {"params": start}

    def step(xs, ys):
        state["params"] = fn(state["params"], xs, ys)

    return step, lambda: state["params"]


def _final_params(variant: str, workload: str, meta_batch: int, steps: int) -> dict:
    dev = torch.device("cpu")
    step, params = _builder(variant, workload, dev)
    pool = data_pool(workload, meta_batch, dev)
    for t in range(steps):
        step(*pool[t % len(pool)])
    return to_numpy(workload, params())


def reference(workload: str, meta_batch_size: int | None = None, steps: int = 3) -> dict:
    """Parameters (canonical numpy layout) after `steps` meta-steps of the plain reference, on CPU."""
    return _final_params("reference", workload, meta_batch_size or common.DEFAULT_META_BATCH[workload], steps)


def check(workload: str, variant: str, meta_batch_size: int | None = None, steps: int = 3) -> float:
    """Max |difference| between the parameters after `steps` meta-steps of `variant` and of the plain reference;
    W3: the larger of check_embeddings() and check_meta_step(steps=1), both against reptile_fn."""
    if workload == "W3":
        return max(check_embeddings(), check_meta_step(meta_batch_size or common.DEFAULT_SIZE["W3"], 1))
    assert variant in VARIANTS, variant
    m = meta_batch_size or common.DEFAULT_META_BATCH[workload]
    return common.max_abs_diff(_final_params(variant, workload, m, steps), reference(workload, m, steps))


def _time(variant, workload, meta_batch, dev, seed, mode, **timing) -> list[float]:
    step_fn, _ = _builder(variant, workload, dev, seed, mode)
    pool = data_pool(workload, meta_batch, dev, seed)
    counter = [0]

    def step():
        step_fn(*pool[counter[0] % len(pool)])
        counter[0] += 1

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
        # On CPU eager and inductor-compiled code both return only when the results are computed.

    return common.time_meta_steps(step, sync, **timing)


def run(workload: str, meta_batch_size: int, *, device: str = "cpu", repeats: int = 5, min_block_s: float = 0.2,
        warmup: int = 3, variants=None, seed: int = 0, num_threads: int | None = None) -> list[dict]:
    if not available(workload) or (dev := _device(device)) is None:
        return []
    setup_note = _setup(dev, num_threads)
    timing = dict(repeats=repeats, min_block_s=min_block_s, warmup=warmup)
    rows = []
    for variant in variants or VARIANTS:
        if variant not in WORKLOAD_VARIANTS[workload]:
            continue
        if workload == "W3":
            with torch.enable_grad():
                samples = time_text_steps(meta_batch_size, dev, seed, **{**timing, "warmup": min(warmup, 1)})
            rows.append(common.result("torch", torch.__version__, variant, workload, meta_batch_size, device, samples,
                                      f"{setup_note}; transformers {transformers_version()}"))
            continue
        notes = [setup_note]
        for mode in COMPILE_MODES if variant == FUNC else ("eager",):
            try:
                with torch.enable_grad():  # the loop's backward() needs grad mode, whatever the caller's
                    samples = _time(variant, workload, meta_batch_size, dev, seed, mode, **timing)
                break
            except Exception as e:
                if mode == "eager":
                    raise
                notes.append(f"torch.compile ({mode}) failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:100]}")
        if variant == FUNC and mode != "fullgraph":
            notes.append(f"timed: {mode}")
        note = "; ".join(notes)
        rows.append(common.result("torch", torch.__version__, variant, workload, meta_batch_size, device, samples, note))
    return rows


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-block-s", type=float, default=0.2)
    ap.add_argument("--workloads", default="W1,W2,W3")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    rows, checks, lines = [], {}, []
    for wl in args.workloads.split(","):
        if wl not in WORKLOAD_VARIANTS or not available(wl):
            why = "needs transformers and all-MiniLM-L6-v2's files" if wl in WORKLOAD_VARIANTS else "no PyTorch peer"
            print(f"(skipping {wl}: {why}; see benchmarks/README.md)")
            continue
        rows += run(wl, common.DEFAULT_SIZE[wl], device=args.device, repeats=args.repeats, min_block_s=args.min_block_s)
        if wl == "W3":
            emb, step = check_embeddings(), check_meta_step()
            checks[(TEXT, wl)] = max(emb, step)
            lines.append(f"W3 against reptile_fn: max |embedding difference| {emb:.2e}; "
                         f"max |adapter and head difference| after one meta-step {step:.2e}")
            continue
        for v in WORKLOAD_VARIANTS[wl]:
            checks[(v, wl)] = check(wl, v)
    common.print_table(rows, checks)
    for line in lines:
        print(line)
    common.print_cross_check()


if __name__ == "__main__":
    main()
