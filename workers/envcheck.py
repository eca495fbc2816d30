"""The ``env`` workload: report the environment and stop.

``images/build.py verify`` runs it inside each image to check torch, CUDA,
cuDNN and Python against the matrix; the sweeps use it to measure start-up
latency. It runs a tiny op on the device so a broken CUDA setup shows here.
"""
import torch

from .runtime import clock, synchronize

SCHEMA = {}


def run(config, device, emitter):
    start = clock()
    x = torch.ones(4, 4).to(device)
    total = float((x.mm(x)).sum().item())
    synchronize(device)
    emitter.result({"device_check_seconds": clock() - start, "device_check_value": total})
