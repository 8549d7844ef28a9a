"""The parts of `bench/gpu_check.py`, the one command that measures every GPU claim.

    report        the results file (JSON) and its markdown tables, rewritten after every case
    budget        per-part time budgets and the alarm that ends a part that overruns
    peers         optional peer packages: import, version, or the reason they are skipped
    profile       the sizes of each part: the GPU run and the CPU dry run
    context       what every case sees (device, profile, seed, shared inputs) and how a case is run
    correctness   part 1: each op's kernel path against its torch twin and a float64 oracle
    kernels       part 2: the ops against plain PyTorch, torch.compile and the peer libraries
    mvq           part 3: MVQ encode against multi-quantization, and against a teacher's forward
    training      part 4: the training step against plain eager; a short real training run
    targets       the targets the GPU run is judged by, read off the recorded rows
"""
