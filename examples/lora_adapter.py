"""Meta-learn a LoRA adapter initialization beside a frozen base network.

1. "Pretrain" a 2-128-128-2 MLP base with Reptile on linear-boundary tasks.
2. Freeze it; give every hidden weight a rank-4 LoRA adapter (its own parameter tree, B = 0 at first).
3. Meta-learn the adapter + head initialization with Reptile on new families (XOR and circles):
   the same meta-step as for a whole network, with a path predicate saying which leaves adapt.
4. Score the meta-learned adapter against a fresh one on unseen tasks; save it as safetensors and
   load it back onto the base (the base's hash is checked, so a wrong base is refused).

    uv run python examples/lora_adapter.py            # ~1 min on a laptop CPU
    uv run python examples/lora_adapter.py --quick    # fewer iterations
"""

import argparse
import tempfile

from reptile_fn import optim, peft
from reptile_fn import tree as T
from reptile_fn.algorithms import reptile
from reptile_fn.evaluate import few_shot_curve
from reptile_fn.inner import InnerLoop
from reptile_fn.losses import accuracy, cross_entropy
from reptile_fn.models import mlp

import mlx.core as mx
from mlx.utils import tree_flatten


def meta_train(model, tasks, params, iterations, trainable=None, seed=0):
    inner = InnerLoop(lr=0.05, steps=5, trainable=trainable)  # only `trainable` leaves adapt (and move)
    outer = optim.sgd(optim.linear_schedule(1.0, 0.0, iterations))
    meta = reptile.make_step(model.apply, cross_entropy, inner, outer)
    state = meta.init(params)
    for key in mx.random.split(mx.random.key(seed), iterations):
        sample_key, step_key = mx.random.split(key)
        params, state, _ = meta.step(params, state, tasks.sample_train(sample_key, 8), step_key)
    return params


def score(model, params, held_out, trainable):
    loop = InnerLoop(lr=0.05, steps=10, trainable=trainable)
    curve = few_shot_curve(loop, model.apply, cross_entropy, params, held_out, metric=accuracy)
    m, ci = curve["metric"]["mean"], curve["metric"]["ci95"]
    print(f"{100 * m[0]:5.1f}% before, {100 * m[10]:5.1f} ± {100 * ci[10]:.1f}% after 10 steps")
    return m[10]


def main(iterations: int) -> dict:
    from reptile_fn.tasks import make_distribution

    base_model = mlp(2, 2, hidden=128, depth=2)
    linear = make_distribution(["linear"], k_shot=5, query_size=15, num_train_tasks=0, seed=0)
    base = meta_train(base_model, linear, base_model.init(mx.random.key(0)), iterations)

    pf = peft.peft_model(base_model, method="lora", targets=("layer*.w",), rank=4)
    inner, _ = peft.patterns("lora", reptile=True)  # adapter A, B and the head adapt; the base never moves
    adapts = T.match(inner)
    params = {"base": base, "adapter": pf.new_adapter(mx.random.key(1), base)}
    counts = peft.counts(params, adapts, adapts)
    print(f"base {counts['total'] - counts['adapted']:,} frozen parameters, {counts['adapted']:,} adapt per task")

    new = make_distribution(["xor", "circles"], k_shot=5, query_size=15, num_train_tasks=0, seed=1)
    learned = meta_train(pf.model, new, params, iterations, trainable=adapts, seed=1)
    assert T.all_finite(learned) and bool(mx.array_equal(learned["base"]["layer0"]["w"], base["layer0"]["w"]))

    held_out = new.sample_test(mx.random.key(99), 300)
    out = {}
    print("fresh adapter + head:        ", end="")
    out["fresh"] = score(pf.model, params, held_out, adapts)
    print("meta-learned adapter + head: ", end="")
    out["meta"] = score(pf.model, learned, held_out, adapts)

    with tempfile.TemporaryDirectory() as d:
        peft.save_adapters(d, learned, [p for p in T.paths(learned) if adapts(p)], {"rank": 4, "targets": ["layer*.w"]})
        loaded, config = peft.load_adapters(d, base)
        a, b = dict(tree_flatten(loaded)), dict(tree_flatten(learned))
        same = a.keys() == b.keys() and all(bool(mx.array_equal(a[k], b[k])) for k in a)
        print(f"saved and reloaded onto the base: identical = {same}, rank {config['rank']}")
    return {**out, "reloaded_identical": same}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    main(150 if args.quick else 1000)
