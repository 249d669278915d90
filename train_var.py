"""Train the next-scale prediction transformer (stage 2 of VAR) on a frozen tokenizer.

Every step: tokens of all K scales (Algorithm 1 by the frozen VQVAE, read from a token cache that encodes the
dataset once, or encoded on the fly as the official trainer with --encode-on-the-fly) -> teacher-forcing input
(cumulative f̂ downsampled to each next scale) -> one block-causal forward that predicts every scale at once
-> cross entropy over all L tokens (uniform weights, as official).

Quickstart on the built-in shapes dataset, after train_tokenizer.py (its time: docs/results.md#quickstart-over-seeds):
    python train_var.py
A small real image folder on a CPU budget (the preset a sweep chose: docs/results.md#real-photos):
    python train_var.py --preset small --data-path my_folder --minutes 3
The official ImageNet recipe for VAR-d16 on 8 GPUs per node (global batch 768, 200 epochs):
    torchrun --nproc_per_node 8 train_var.py --preset d16 --data-path /data/imagenet/train --image-size 256 \
        --tokenizer vae_ch160v4096z32.pth --device cuda --precision bf16
"""
import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minvar.io.checkpoint import CheckpointError, config_from_dict, load_tokenizer, save_checkpoint
from minvar.io.data import DataError, build_dataset, save_image_grid
from minvar.evaluation.flops import mfu_text, peak_flops, var_training_flops
from minvar.sampling import check_pair, generate
from minvar.training.token_cache import TokenDataset, load_or_build_token_cache
from minvar.training.arguments import (MAY_CHANGE_ON_RESUME, add_common_arguments, given_flags, non_negative_float,
                                       non_negative_int, positive_float, positive_int, probability)
from minvar.training.data_order import make_loader, step_generator
from minvar.training.distributed import all_reduce_mean, end_distributed, wrap_ddp
from minvar.training.ema import EMA
from minvar.training.precision import autocast
from minvar.training.run import RunLog, is_due, open_run, progress_bar, save_or_exit
from minvar.training.schedule import TimeBudget, lr_wd_at, set_lr_wd
from minvar.training.stops import SaveClock
from minvar.var import VAR, VAR_PRESETS, VARConfig

# Training recipes. dN are the official ImageNet ones (official README; docs/official_model.md): global batch,
# base learning rate per 256 images, epochs, final lr ratio ("wpe"), weight decay start/end, AdaLN gamma init.
# Warmup is epochs/50, betas (0.9, 0.95), clip 2.0, no label smoothing, label dropout 0.1.
# tiny (CPU quickstart): peak lr 3e-3 at batch 16 and 2000 steps, each chosen by measurement on the shapes
# (docs/results.md#defaults-and-the-measurements-behind-them).
# small (a small real dataset on a CPU budget): the depth-2 model (minvar/var.py) and tiny's learning rate, chosen by
# bench/sweep_recipe.py at equal compute on grey photo patches; its 2,900 steps are the sweep's budget at one thread
# (docs/results.md#real-photos).
RECIPES = {
    "tiny": dict(global_batch=16, base_lr=4.8e-2, epochs=None, steps=2000, final_lr_ratio=0.1, weight_decay=0.05,
                 final_weight_decay=0.05),
    "small": dict(global_batch=16, base_lr=4.8e-2, epochs=None, steps=2900, final_lr_ratio=0.1, weight_decay=0.05,
                  final_weight_decay=0.05),
    "d16": dict(global_batch=768, base_lr=1e-4, epochs=200, steps=None, final_lr_ratio=0.1, weight_decay=0.05,
                final_weight_decay=0.05),
    "d20": dict(global_batch=768, base_lr=1e-4, epochs=250, steps=None, final_lr_ratio=0.1, weight_decay=0.05,
                final_weight_decay=0.05),
    "d24": dict(global_batch=768, base_lr=8e-5, epochs=350, steps=None, final_lr_ratio=0.01, weight_decay=0.05,
                final_weight_decay=0.05),
    "d30": dict(global_batch=1024, base_lr=8e-5, epochs=350, steps=None, final_lr_ratio=0.01, weight_decay=0.05,
                final_weight_decay=0.08),
}


# The flags a resumed run may change: the trainers' shared ones (minvar/training/arguments.py), the sample grids'
# interval and guidance (they do not touch training), and --compile (the same computation up to float rounding).
VAR_MAY_CHANGE_ON_RESUME = MAY_CHANGE_ON_RESUME + ("sample_every", "cfg", "compile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # run, data and tokenizer
    add_common_arguments(parser, "runs/var", None, "training resolution; default: the tokenizer's own",
                         VAR_MAY_CHANGE_ON_RESUME)
    parser.add_argument("--tokenizer", default="runs/tokenizer/checkpoint.pt", help="a train_tokenizer.py "
                        "checkpoint, or the official vae_ch160v4096z32.pth")
    parser.add_argument("--encode-on-the-fly", action="store_true", help="encode every batch with the tokenizer "
                        "(fresh random crops of image folders) instead of reading <out-dir>/token_cache.pt")
    # model
    parser.add_argument("--preset", default="tiny", choices=sorted(RECIPES), help="architecture and recipe")
    parser.add_argument("--depth", type=positive_int, default=None, help="override the preset's depth (width 64·depth "
                        "for the dN presets)")
    parser.add_argument("--width", type=positive_int, default=None, help="override the width (tiny and small presets)")
    # optimisation
    parser.add_argument("--steps", type=positive_int, default=None, help="training steps; default: the recipe's epochs "
                        "over the dataset (dN) or its steps (tiny 2000, small 2900)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="images per step per process; default: "
                        "the recipe's global batch / number of processes")
    parser.add_argument("--base-learning-rate", type=positive_float, default=None, help="peak lr per 256 images "
                        "(peak = base × global batch / 256); default: the recipe's")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=None,
                        help="default: 2%% of the steps (epochs/50)")
    parser.add_argument("--minutes", type=positive_float, default=None, help="train for this long instead of "
                        "--steps: the run times its first steps and sets the total so that the lr decay completes "
                        "in time")
    parser.add_argument("--grad-clip", type=non_negative_float, default=2.0, help="global gradient-norm clip")
    parser.add_argument("--label-smoothing", type=probability, default=0.0, help="cross-entropy label smoothing")
    parser.add_argument("--cond-drop-rate", type=probability, default=0.1, help="label dropout for guidance")
    parser.add_argument("--ema", type=probability, default=0.0, help="EMA decay of the weights (0: no EMA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training forward (needs a C++ "
                        "compiler on a CPU; the first step compiles, which takes about a minute; whether it pays: "
                        "docs/results.md, Throughput)")
    # logging and sampling
    parser.add_argument("--sample-every", type=non_negative_int, default=1000, help="steps between sample grids "
                        "(0: only at the end)")
    parser.add_argument("--cfg", type=non_negative_float, default=3.0, help="guidance of the sample grids (sample.py's "
                        "built-in default)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def build_config(args, vae, num_classes: int) -> VARConfig:
    """The preset's architecture, fitted to the tokenizer (codebook, scales) and the dataset (classes)."""
    values = dict(vars(VAR_PRESETS[args.preset]))
    if args.depth:
        values["depth"] = args.depth
    if args.width:
        values["width"] = args.width
    values.update(num_classes=num_classes, vocab_size=vae.quantize.vocab_size, code_dim=vae.quantize.code_dim,
                  patch_nums=tuple(vae.patch_nums), cond_drop_rate=args.cond_drop_rate)
    return VARConfig(**values)


@torch.no_grad()
def sample_grid(var, vae, class_names, path: str, cfg: float, seed: int = 0) -> None:
    """One row per class (up to 16 classes), 8 samples each, saved as a PNG."""
    classes = list(range(min(len(class_names), 16)))
    labels = [c for c in classes for _ in range(8)]
    images = generate(var, vae, labels, cfg=cfg, top_k=0, top_p=0.8, seed=seed)  # (N, 3, H, W) in [0, 1], as sample.py
    save_image_grid(images * 2 - 1, path, nrow=8)


@dataclass
class Schedule:
    """How much a step sees and how long the run lasts (section 2 of `main`)."""
    global_batch: int  # images per step over all processes
    batch_size: int  # images per step in this process
    steps: int  # total steps; a --minutes budget fixes it once, after timing the first steps
    warmup: int  # steps of linear warmup
    peak_lr: float  # the learning rate after warmup: base lr × global batch / 256


def load_run_tokenizer(args, resumed, device: torch.device):
    """The frozen tokenizer: the one a resumed run embedded in its checkpoint, else the --tokenizer file."""
    try:
        vae = load_tokenizer(resumed["tokenizer"] if resumed and resumed.get("tokenizer") else args.tokenizer)
    except CheckpointError as error:
        raise SystemExit(f"error: --tokenizer {args.tokenizer}: {error}")
    return vae.to(device)


def schedule(args, recipe: dict, dataset_size: int, world_size: int) -> Schedule:
    """Global batch, steps, warmup and peak learning rate: the flags where given, else the recipe's."""
    global_batch = (args.batch_size * world_size) if args.batch_size else recipe["global_batch"]
    if recipe["epochs"] and args.steps is None:
        steps = recipe["epochs"] * math.ceil(dataset_size / global_batch)
    else:
        steps = args.steps or recipe["steps"]
    warmup = args.warmup_steps if args.warmup_steps is not None else max(steps // 50, 1)
    peak_lr = (args.base_learning_rate or recipe["base_lr"]) * global_batch / 256
    return Schedule(global_batch, global_batch // world_size, steps, warmup, peak_lr)


def build_model(args, vae, num_classes: int, resumed, image_size: int, device: torch.device, log: RunLog):
    """(VAR, its config, its EMA or None): a resumed run's architecture, else the preset's fitted to the data."""
    torch.manual_seed(args.seed)
    if resumed is not None:
        config = config_from_dict(VARConfig, resumed["config"])
    else:
        config = build_config(args, vae, num_classes)
        args.depth, args.width = config.depth, config.width  # recorded as run, so a resume can compare them
    var = VAR(config).to(device)
    try:
        check_pair(var, vae)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    if image_size != vae.config.image_size:
        raise SystemExit(f"error: --image-size {image_size} does not fit the tokenizer, trained for "
                         f"{vae.config.image_size}px images with scales {vae.patch_nums}")
    ema = EMA(var, args.ema) if args.ema > 0 else None
    log.write(f"VAR: {sum(p.numel() for p in var.parameters()):,} parameters, {config}")
    return var, config, ema


def restore(resumed, var, optimizer, ema, log: RunLog) -> int:
    """Load a resumed run's weights, optimizer, EMA and random state; returns the step to start from (0: a new run)."""
    if resumed is None:
        return 0
    var.load_state_dict(resumed["model"])
    optimizer.load_state_dict(resumed["optimizer"])
    if ema is not None and resumed.get("ema_model") is not None:
        ema.model.load_state_dict(resumed["ema_model"])
    torch.set_rng_state(resumed["rng_state"])
    log.write(f"resumed from step {resumed['step']}")
    return resumed["step"]


def embedded_tokenizer(vae):
    """A small tokenizer (under 20M parameters) travels inside every checkpoint, so the run needs no other file."""
    if sum(p.numel() for p in vae.parameters()) >= 20_000_000:
        return None
    return {"kind": "minvar-tokenizer", "config": vars(vae.config), "model": vae.state_dict()}


def step_data(args, vae, train_set, distributed, log: RunLog):
    """(what the loader reads, a function that counts the images skipped as unreadable).

    By default the token cache: items (tokens (L,), label), the dataset encoded once; rank 0 builds it, the other
    ranks wait and read it. With --encode-on-the-fly the images themselves: items (image (3, H, W), label).
    """
    if args.encode_on_the_fly:
        return train_set, lambda: getattr(train_set, "num_skipped", 0)  # counted as the loader reads
    barrier = torch.distributed.barrier if distributed.world_size > 1 else None
    cache = load_or_build_token_cache(os.path.join(args.out_dir, "token_cache.pt"), vae, train_set, args.hflip,
                                      distributed.is_main, barrier, log.write, log.say)
    return TokenDataset(cache, seed=args.seed), lambda: cache.get("num_skipped", 0)  # counted when it was built


@torch.no_grad()  # fp32, outside autocast (official trainer)
def teacher_forcing(vae, inputs, encode_on_the_fly: bool):
    """(targets (B, L), teacher-forcing input (B, L-1, Cvae)) from a batch of images or of cached tokens."""
    if encode_on_the_fly:
        idx = vae.img_to_idx(inputs)  # K LongTensors (B, pn²)
        target_BL = torch.cat(idx, dim=1)
    else:
        target_BL = inputs  # the same tokens the two lines above would compute
        idx = list(target_BL.split([pn * pn for pn in vae.patch_nums], dim=1))  # K LongTensors (B, pn²)
    return target_BL, vae.idx_to_var_input(idx)


def label_dropout(args, step: int, plan: Schedule, distributed, device: torch.device) -> torch.Tensor:
    """Which labels of this process's batch become the "no class" label (for guidance), (B,) bools.

    Drawn over the GLOBAL batch from a generator seeded by (seed, step): identical on resume and across processes.
    """
    drop_G = torch.rand(plan.global_batch, generator=step_generator(args.seed, step, "cpu")) < args.cond_drop_rate
    rank = distributed.rank
    return drop_G[rank * plan.batch_size:(rank + 1) * plan.batch_size].to(device)


def train_step(args, model, var, optimizer, ema, labels, x_BLCv, target_BL, drop_B, device: torch.device):
    """Forward (bf16 autocast if asked), cross entropy over all L tokens, backward, clip, AdamW step, EMA.

    Returns (loss, logits (B, L, V), the gradient norm before clipping).
    """
    with autocast(device, args.precision == "bf16"):
        logits_BLV = model(labels, x_BLCv, drop_B)
    loss = F.cross_entropy(logits_BLV.float().flatten(0, 1), target_BL.flatten(),
                           label_smoothing=args.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(var.parameters(), args.grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(var)
    return loss, logits_BLV, grad_norm


def fix_total(args, budget, done: int, plan: Schedule, distributed, bar, log: RunLog) -> None:
    """Under --minutes: once the budget has timed its first steps, set the run's total steps (and say so)."""
    chosen = budget.total_steps(done, distributed) if budget is not None else None
    if chosen is not None:
        plan.steps = args.steps = max(chosen, done)
        bar.total = plan.steps
        log.write(f"--minutes {args.minutes}: {budget.seconds_per_step:.3f} s per step from step "
                  f"{budget.begin_step} to {done}, so {plan.steps} steps in all (warmup {plan.warmup})")


def log_step(log: RunLog, done: int, loss, logits_BLV, target_BL, lr: float, wd: float, grad_norm, config,
             plan: Schedule, peak, distributed, skipped_images: int) -> None:
    """One log.txt line: loss and token accuracy averaged over processes, schedule, gradient norm, speed, MFU."""
    mean_loss = all_reduce_mean(loss.detach(), distributed).item()
    accuracy = all_reduce_mean((logits_BLV.argmax(-1) == target_BL).float().mean(), distributed).item()
    # MFU: the step's model FLOPs (minvar/evaluation/flops.py) / the step time / the peak of all processes' devices
    images_per_second = log.images_per_second(done, plan.global_batch)
    mfu = mfu_text(var_training_flops(config, plan.global_batch), plan.global_batch, images_per_second, peak,
                   distributed.world_size)
    log.write(f"step {done} loss {mean_loss:.4f} acc {accuracy:.4f} lr {lr:.3e} wd {wd:.4f} "
              f"grad_norm {grad_norm.item():.3f} "
              f"img/s {images_per_second:.1f} mfu {mfu} "
              f"skipped images {skipped_images}")


def save_samples(args, var, ema, vae, class_names, done: int) -> None:
    """A sample grid from the EMA weights if any, else the trained ones; the model goes back to training mode."""
    net = ema.model if ema is not None else var
    net.eval()
    sample_grid(net, vae, class_names, os.path.join(args.out_dir, f"samples_{done:06d}.png"), args.cfg)
    var.train()


def save(checkpoint_path: str, args, var, config, done: int, class_names, optimizer, ema, tokenizer_state,
         plan: Schedule) -> None:
    """The self-describing checkpoint: weights, optimizer, EMA, config, step, random state, flags, chosen total."""
    save_checkpoint(checkpoint_path, "minvar-var", var, config, done, class_names, optimizer,
                    ema_model=ema.model.state_dict() if ema is not None else None,
                    tokenizer=tokenizer_state, tokenizer_path=os.path.abspath(args.tokenizer),
                    rng_state=torch.get_rng_state(), args=vars(args), total_steps=plan.steps)


def main(argv=None) -> int:
    """Train VAR; returns the exit status: 0, or 128 + the signal that stopped the run early (130: Ctrl-C)."""
    started = time.perf_counter()  # a --minutes budget counts from here
    parser = build_parser()
    args = parser.parse_args(argv)
    # the run folder is locked and the stop signals caught until the run ends, however it ends
    with open_run(args, "minvar-var", given_flags(parser, argv), VAR_MAY_CHANGE_ON_RESUME) as run:
        return train(args, run, started, argv)


def train(args, run, started: float, argv) -> int:
    # 1. config: device, precision, the run to resume, the frozen tokenizer --------------------------------------
    distributed, device, checkpoint_path, resumed = run.distributed, run.device, run.checkpoint_path, run.resumed
    recipe = RECIPES[args.preset]
    vae = load_run_tokenizer(args, resumed, device)
    image_size = args.image_size = args.image_size or vae.config.image_size
    log = RunLog(args.out_dir, distributed)
    log.write(f"args: {json.dumps(vars(args))}")
    for line in run.changes:
        log.say(line)

    # 2. data and schedule ---------------------------------------------------------------------------------------
    try:
        train_set = build_dataset(args.data_path, image_size, train=True, num_images=args.num_images,
                                  seed=args.seed, hflip=args.hflip)
    except DataError as error:
        raise SystemExit(f"error: {error}")
    plan = schedule(args, recipe, len(train_set), distributed.world_size)
    args.batch_size = plan.batch_size  # recorded as run, so a resume can compare it

    # 3. model ---------------------------------------------------------------------------------------------------
    var, config, ema = build_model(args, vae, train_set.num_classes, resumed, image_size, device, log)

    # 4. optimizer (AdamW, betas (0.9, 0.95) as official; weight decay on the matrices only), resume --------------
    optimizer = torch.optim.AdamW(var.parameter_groups(recipe["weight_decay"]), lr=plan.peak_lr, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    start_step = restore(resumed, var, optimizer, ema, log)
    budget = TimeBudget(args.minutes, start_step, started) if args.minutes and start_step == 0 else None
    model = wrap_ddp(var, distributed, device)
    if args.compile:  # only the training forward; `var` (saved, sampled, averaged by the EMA) stays the eager module
        if device.type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
            raise SystemExit("error: --compile on a CPU needs a C++ compiler (g++ or clang++) on the PATH; install "
                             "one or train without --compile")
        model = torch.compile(model)
    tokenizer_state = embedded_tokenizer(vae)

    # 5. train loop ----------------------------------------------------------------------------------------------
    step_set, skipped_images = step_data(args, vae, train_set, distributed, log)
    # with a budget the loader runs on (its batches are pure functions of the step) until the chosen total
    loader = make_loader(step_set, plan.batch_size, args.seed, start_step, plan.steps if budget is None else 10 ** 12,
                         distributed, args.workers)
    peak = peak_flops(device, args.precision)  # FLOP/s of one device: GPU table, or measured once on a CPU
    log.write(f"precision {args.precision}, {torch.get_num_threads()} CPU threads, device peak "
              f"{'unknown' if peak is None else f'{peak / 1e12:.3g} TFLOP/s'}")
    log.start(start_step)
    bar = progress_bar(loader, start_step, plan.steps, distributed, "VAR")
    clock = SaveClock(args.save_minutes)
    stopped = False
    run.stops.begin_steps()
    var.train()
    for step, (inputs, labels) in enumerate(bar, start=start_step):
        if step >= plan.steps:
            break
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        lr, wd = lr_wd_at(step, plan.steps, plan.peak_lr, plan.warmup, final_lr_ratio=recipe["final_lr_ratio"],
                          weight_decay=recipe["weight_decay"], final_weight_decay=recipe["final_weight_decay"])
        set_lr_wd(optimizer, lr, wd)
        target_BL, x_BLCv = teacher_forcing(vae, inputs, args.encode_on_the_fly)
        drop_B = label_dropout(args, step, plan, distributed, device)
        loss, logits_BLV, grad_norm = train_step(args, model, var, optimizer, ema, labels, x_BLCv, target_BL, drop_B,
                                                 device)

        # 6. logging, samples, checkpoints (by steps, by the clock, and at a stop) ---------------------------------
        done = step + 1
        fix_total(args, budget, done, plan, distributed, bar, log)
        if distributed.is_main:
            accuracy = (logits_BLV.argmax(-1) == target_BL).float().mean().item()
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.3f}", lr=f"{lr:.1e}")
        if is_due(done, args.log_every, plan.steps):
            log_step(log, done, loss, logits_BLV, target_BL, lr, wd, grad_norm, config, plan, peak, distributed,
                     skipped_images())
        if distributed.is_main and is_due(done, args.sample_every, plan.steps):
            save_samples(args, var, ema, vae, train_set.class_names, done)
        stopped, save_by_time = run.stops.after_step(clock.due(), device)
        stopped = stopped and done < plan.steps  # a stop during the last step is the normal end
        if distributed.is_main and (is_due(done, args.save_every, plan.steps) or save_by_time or stopped):
            save_or_exit(lambda: save(checkpoint_path, args, var, config, done, train_set.class_names, optimizer, ema,
                                      tokenizer_state, plan), args.out_dir)
            clock.saved()
        if stopped:
            break
    bar.close()
    if distributed.is_main and stopped:
        print(run.stops.report(done, plan.steps, checkpoint_path, __file__, argv))
    elif distributed.is_main and start_step < plan.steps:  # a resumed, already finished run trains no step
        print(f"VAR: final loss {loss.item():.4f}; checkpoint {checkpoint_path}")
    del model, bar, loader  # the DDP wrappers hold the process group: drop them before leaving it
    end_distributed(distributed)
    return run.stops.exit_status() if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
