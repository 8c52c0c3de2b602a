"""The cache layers and their policies.

- :mod:`.base`: the stored-value codec and the :class:`~.base.SharedStore` interface;
- :mod:`.redis`: the Redis implementation (standalone, Sentinel, Cluster) and client building;
- :mod:`.local`: the in-process layer (L1);
- :mod:`.guard`: the fail-open policy (circuit breaker) around every shared-store call;
- :mod:`.channel`: the invalidation channel that keeps every process's L1 in step.
"""
