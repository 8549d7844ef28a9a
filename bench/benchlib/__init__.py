"""What the benchmark suites (`bench/bench_*.py`, pytest-benchmark) and the one-command GPU check
(`bench/gpu_check.py`) share, free of pytest: the inputs of each workload, the plain-PyTorch
contenders they are measured against, and how time and peak memory are measured.

    measure       peak memory of one call, median time of repeated calls
    ce            linear_multi_target_ce inputs and the plain Linear + cross_entropy loss
    mvq_search    the eager ways of computing mvq_search's table (cdist, the explicit definition)
    token_mix     token_mix inputs and the eager per-row loop
    train_step    one pre-training step: the trainer's path and the plain eager one
"""
