"""Task embeddings, task similarity and initialization selection (research question 3).

- ``features``: handcrafted statistics of an episode's support set.
- ``fisher``: Task2Vec (Achille et al. 2019), the diagonal Fisher information of a probe network.
- ``select``: distances, nearest-neighbour retrieval and family-identification accuracy.
- ``similarity``: ``family_identification`` of fresh held-out tasks with both embeddings.
"""

from reptile_fn.embed.features import handcrafted, handcrafted_batch
from reptile_fn.embed.fisher import fisher_leaves, log_fisher
from reptile_fn.embed.select import cosine_distance, identification_accuracy, nearest, pairwise, standardize
from reptile_fn.embed.similarity import alphabet_identification, family_identification

__all__ = ["alphabet_identification", "cosine_distance", "family_identification", "fisher_leaves", "handcrafted",
           "handcrafted_batch", "identification_accuracy", "log_fisher", "nearest", "pairwise", "standardize"]
