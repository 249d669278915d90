"""What the training scripts share, one job per module.

    arguments.py    shared flags and argparse validators (a bad value fails at parse time, in words)
    run.py          the run folder: start or resume a run (its lock, honest --resume), log.txt, progress bar, when
                    to log and save
    stops.py        clean stops on SIGINT / SIGTERM / SIGUSR1 (shared under torchrun), saves by the clock
    distributed.py  torchrun: process group, device per process, DDP wrapping, clean exit
    data_order.py   which images each step trains on, a pure function of (seed, step): exact resume
    schedule.py     learning-rate and weight-decay schedules; the step count of a time budget (--minutes)
    precision.py    bf16 autocast where native, CPU threads
    ema.py          EMA weights
    token_cache.py  the dataset encoded once into token maps, so VAR trains on tokens
    losses.py       the tokenizer's perceptual and adversarial losses

Imports flow one way: the method (minvar/*.py) <- io <- evaluation <- training <- the scripts.
"""
