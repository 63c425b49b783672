"""Side-by-side peers of reptile_fn's Reptile meta-step in JAX and PyTorch, for benchmarks/throughput.py only.

Each peer module has `available()`, `run(workload, meta_batch_size, ...) -> list[dict]`, `check(workload, variant)`
and `VARIANTS`; `common` holds the shared workloads, data, initial parameters and timing protocol.
Nothing in reptile_fn imports these.
"""
