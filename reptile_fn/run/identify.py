"""Task identification for `reptile-fn embed`: what a run's task embeddings can name in its fresh held-out
tasks (``embed.similarity``), and the few lines that report it."""

from __future__ import annotations

import mlx.core as mx

from reptile_fn.errors import ConfigError
from reptile_fn.run.build import Run
from reptile_fn.run.report import probe


def identify_tasks(run: Run, params, *, k_shot: int, bank_tasks: int, query_tasks: int, key: mx.array,
                   adapt_steps: int = 0, families: tuple[str, ...] = (), n_way: int | None = None) -> dict:
    """What a task embedding can name in a run's fresh held-out tasks (``embed.similarity``): the family of
    a synthetic classification run (``families``: only these), the alphabet of an Omniglot run (``n_way``
    classes per episode; None: the run's). The result
    has ``what`` ("family" or "alphabet") beside ``family_identification``'s keys."""
    from reptile_fn.embed import similarity

    kw = dict(k_shot=k_shot, bank_tasks=bank_tasks, query_tasks=query_tasks, key=key, adapt_steps=adapt_steps)
    if getattr(run.tasks, "test_alphabets", ()):
        if families:
            raise ConfigError("--family is for runs on synthetic task families; an Omniglot run's episodes are "
                              "named by their alphabet: drop --family")
        return {**similarity.alphabet_identification(probe(run), params, run.tasks, n_way=n_way, **kw), "what": "alphabet"}
    if n_way is not None:
        raise ConfigError("--way is for Omniglot runs (classes per embedded episode); a synthetic run's tasks have "
                          "the classes of their family: drop --way")
    tasks = run.tasks
    similarity.check_distribution(tasks)
    if families:
        tasks = similarity.restrict_families(tasks, families)
        similarity.check_distribution(tasks)
    return {**similarity.family_identification(probe(run), tasks, params, **kw), "what": "family"}


def format_identification(result: dict) -> str:
    """``identify_tasks``'s result as a few lines: what was named, among which, chance, and each embedding's accuracy."""
    names, what = result["families"], result["what"]
    left_out = f" ({len(result['left_out'])} with fewer than {result['n_way']} left out)" if result.get("left_out") else ""
    return "\n".join([
        f"{what} identification of fresh held-out tasks, {len(names)} {'families' if what == 'family' else what + 's'}"
        f"{left_out}: {', '.join(names)}; "
        f"k_shot={result['k_shot']}",
        f"top-1 nearest neighbour, {result['query_tasks']} queries vs {result['bank_tasks']} labelled bank tasks "
        f"(chance {100 / len(names):.1f}%)",
        f"  handcrafted  {100 * result['accuracy']['handcrafted']:5.1f}%",
        f"  fisher       {100 * result['accuracy']['fisher']:5.1f}%  (log-Fisher after {result['adapt_steps']} steps)"])
