"""Stage 2, the plan: what each trial needs and where it may run, decided before it starts.

compat.py: whether an image can run a trial on a node's GPUs (its workload's needs, the
image's kernels, cuDNN and driver), decided before any worker starts.
"""
