"""Measuring a model: image metrics, the judge classifier, Inception features and counted FLOPs.

    metrics.py    Fréchet distance, precision/recall, PSNR, codebook use, Inception score
    inception.py  the FID Inception-v3 network (weights from a file the user provides)
    judge.py      a small classifier trained on real images: does a sample show its class? (its features: FD)
    flops.py      FLOPs counted by PyTorch's FlopCounterMode, peak FLOP/s and model FLOPs utilization (MFU)

Imports flow one way: the method (minvar/*.py) <- io <- evaluation <- training <- the scripts.
"""
