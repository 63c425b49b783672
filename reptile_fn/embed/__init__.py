"""Task embeddings, task similarity and initialization selection (research question 3).

- ``features``: handcrafted statistics of an episode's support set.
- ``fisher``: Task2Vec (Achille et al. 2019), the diagonal Fisher information of a probe network.
- ``select``: distances, nearest-neighbour retrieval and family-identification accuracy.
"""

from reptile_fn.embed.features import handcrafted, handcrafted_batch
from reptile_fn.embed.fisher import fisher_diagonal, task2vec, task2vec_distance
from reptile_fn.embed.select import cosine_distance, identification_accuracy, nearest, pairwise

__all__ = ["cosine_distance", "fisher_diagonal", "handcrafted", "handcrafted_batch", "identification_accuracy",
           "nearest", "pairwise", "task2vec", "task2vec_distance"]
