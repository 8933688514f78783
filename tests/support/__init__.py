"""What the tests (and the benchmarks) share: real faults, real cgroups, task functions, the
multi-instance job, and a toy backend.

    cgroups   real cgroups: pids and memory limits, the OOM killer, children run inside them
    faults    ENOMEM at fork, a real MemoryError (RLIMIT_DATA)
    tasks     task functions importable by every backend, and the one execution counter
    jobs      a memory-hungry scoring job, for several instances started together
    toy       a backend added through the registry alone, for the contract suite

Import it as ``tests.support`` with the repository on the path (pytest and ``python -m`` from
the repository both put it there; ``cgroups.child_env()`` does it for a child python).
"""
