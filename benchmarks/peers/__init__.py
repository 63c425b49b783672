"""Side-by-side peers of reptile_fn's Reptile meta-step and evaluation in JAX and PyTorch, for benchmarks/throughput.py only.

Each peer module has `available(workload=None)`, `run(workload, meta_batch_size, ...) -> list[dict]`,
`check(workload, variant)`, `VARIANTS` and `WORKLOAD_VARIANTS` (the workloads it has a peer of: JAX W1, W2, W4;
PyTorch W1, W2, W3); `common` holds the shared workloads, data, initial parameters and timing protocol, and
`reptile_side` reptile_fn's own W3 and W4, built from them (timed by throughput.py, the reference of the peers'
W3/W4 checks). Nothing in reptile_fn imports these.
"""
