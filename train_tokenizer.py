"""Train the multi-scale VQVAE tokenizer (stage 1 of VAR).

The official VAR repository ships only the trained tokenizer, not the code that trained it; this script fills
that gap. Loss (the VQGAN recipe the paper cites, Section 3.2):
    pixel (MSE and/or L1) + vq (codebook + β·commitment, averaged over scales) + λ_p · perceptual + λ_g · GAN
The perceptual and GAN terms are optional: the perceptual loss needs VGG16 weights the user supplies as a file.
Codebook collapse is fought by restarting dead codes (EMA hit share below a threshold) with residual vectors of the
batch, drawn uniformly or (--restart-pool error-weighted) where the codebook serves them worst
(docs/results.md#tokenizer).

Run on the built-in shapes dataset (the default; its time: docs/results.md#quickstart-over-seeds):
    python train_tokenizer.py
On an image folder, on 8 GPUs:
    torchrun --nproc_per_node 8 train_tokenizer.py --data-path /data/imagenet/train --preset official \
        --image-size 256 --batch-size 32 --device cuda --precision bf16 --perceptual-weights vgg16-397923af.pth
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from minvar.io.checkpoint import CheckpointError, config_from_dict, save_checkpoint
from minvar.io.data import DataError, build_dataset, save_image_grid
from minvar.evaluation.flops import mfu_text, peak_flops, vqvae_training_flops
from minvar.evaluation.metrics import codebook_usage, psnr
from minvar.training.arguments import (MAY_CHANGE_ON_RESUME, add_common_arguments, given_flags, non_negative_float,
                                       non_negative_int, positive_float, positive_int, probability)
from minvar.training.data_order import make_loader
from minvar.training.distributed import all_reduce_mean, end_distributed, unwrap, wrap_ddp
from minvar.training.precision import autocast
from minvar.training.run import RunLog, is_due, open_run, progress_bar, save_or_exit
from minvar.training.schedule import TimeBudget, cosine_lr_at
from minvar.training.stops import SaveClock
from minvar.vqvae import VQVAE, VQVAE_PRESETS, VQVAEConfig


# Steps when --steps is not given. The built-in shapes keep the quickstart's 1000
# (docs/results.md#defaults-and-the-measurements-behind-them). On real photo folders no change of loss, width or
# codebook beat that default at equal CPU time, while twice its CPU time did, on a grey and a colour folder
# (docs/results.md): an image folder gets the steps those runs trained.
DEFAULT_STEPS = {"shapes": 1000, "folder": 1700}


# The flags a resumed run may change: the trainers' shared ones (minvar/training/arguments.py) and the interval of
# the reconstruction grids (they do not touch training).
TOKENIZER_MAY_CHANGE_ON_RESUME = MAY_CHANGE_ON_RESUME + ("grid_every",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # run and data
    add_common_arguments(parser, "runs/tokenizer", 32, "training resolution (square)", TOKENIZER_MAY_CHANGE_ON_RESUME)
    # model
    parser.add_argument("--preset", default="tiny", choices=sorted(VQVAE_PRESETS), help="tokenizer architecture")
    parser.add_argument("--vocab-size", type=positive_int, default=None, help="override the preset's codebook size")
    parser.add_argument("--channels", type=positive_int, default=None, help="override the preset's base width "
                        "(the encoder's and decoder's first channels)")
    parser.add_argument("--patch-nums", default=None, help="override the scale schedule, e.g. 1,2,3,4,6,8")
    # optimisation: batch 16, chosen by measurement on the shapes
    # (docs/results.md#defaults-and-the-measurements-behind-them); the steps depend on the data (DEFAULT_STEPS)
    parser.add_argument("--steps", type=positive_int, default=None, help="training steps; default: "
                        f"{DEFAULT_STEPS['shapes']} on the built-in shapes, {DEFAULT_STEPS['folder']} on an image "
                        "folder (--data-path)")
    parser.add_argument("--minutes", type=positive_float, default=None, help="train for this long instead of "
                        "--steps: the run times its first steps and sets the total so that the lr decay completes "
                        "in time")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per step per process")
    parser.add_argument("--learning-rate", type=positive_float, default=3e-3, help="peak Adam learning rate")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=50,
                        help="linear warmup, then cosine decay to 10%%")
    parser.add_argument("--grad-clip", type=non_negative_float, default=1.0, help="global gradient-norm clip (0: off)")
    # losses
    parser.add_argument("--mse-weight", type=non_negative_float, default=1.0, help="weight of the squared pixel error")
    parser.add_argument("--l1-weight", type=non_negative_float, default=0.0,
                        help="weight of the absolute pixel error (VQGAN's)")
    parser.add_argument("--perceptual-weights", default=None, help="torchvision vgg16-397923af.pth file; "
                        "enables the LPIPS-style perceptual loss (nothing is ever downloaded)")
    parser.add_argument("--lpips-weights", default=None, help="optional LPIPS v0.1 vgg.pth linear-layer weights")
    parser.add_argument("--perceptual-weight", type=non_negative_float, default=1.0, help="λ_p of the perceptual loss")
    parser.add_argument("--disc-start", type=int, default=-1, help="step at which the PatchGAN loss starts "
                        "(-1: no discriminator)")
    parser.add_argument("--disc-weight", type=non_negative_float, default=0.5, help="λ_g, times the adaptive weight")
    # codebook health and logging
    parser.add_argument("--dead-code-threshold", type=probability, default=1e-4, help="EMA hit share under which a "
                        "code counts as dead at every scale")
    parser.add_argument("--restart-every", type=non_negative_int, default=25,
                        help="steps between dead-code restarts (0: off)")
    parser.add_argument("--restart-pool", default="uniform", choices=["uniform", "error-weighted"],
                        help="how restarted codes pick their residual vectors: uniformly (half of them the finest "
                             "scale's), or in proportion to each vector's share of the quantization error (more "
                             "coarse-scale codes; docs/results.md, Tokenizer: better on average, not on every seed)")
    parser.add_argument("--grid-every", type=non_negative_int, default=500, help="steps between reconstruction grids "
                        "(0: only at the end)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def choose_steps(args) -> str:
    """Fill in the default steps of the data (DEFAULT_STEPS) unless --steps was given; returns the log's line."""
    if args.steps is not None:
        return f"steps: {args.steps} (--steps, or the resumed run's)"
    if args.data_path:
        args.steps = DEFAULT_STEPS["folder"]
        return f"steps: {args.steps}, the image-folder default (docs/results.md)"
    args.steps = DEFAULT_STEPS["shapes"]
    return f"steps: {args.steps}, the built-in shapes' default"


def build_config(args) -> VQVAEConfig:
    values = dict(vars(VQVAE_PRESETS[args.preset]))
    values["image_size"] = args.image_size
    if args.vocab_size:
        values["vocab_size"] = args.vocab_size
    if args.channels:
        values["channels"] = args.channels
    if args.patch_nums:
        values["patch_nums"] = tuple(int(p) for p in args.patch_nums.split(","))
    config = VQVAEConfig(**values)
    try:
        config.check()
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    return config


@torch.no_grad()
def evaluate(vae: VQVAE, images: torch.Tensor) -> dict:
    """Held-out PSNR (dB, images in [-1, 1]) and codebook usage / perplexity per scale."""
    vae.eval()
    idx = vae.img_to_idx(images)
    reconstruction = vae.idx_to_img(idx)
    usage = codebook_usage(idx, vae.config.vocab_size)
    return {"psnr": psnr(reconstruction, images)[1], "usage_per_scale": [round(u, 3) for u in usage["usage"]],
            "perplexity_per_scale": [round(p, 1) for p in usage["perplexity"]]}, reconstruction


def load_data(args, image_size: int, device: torch.device):
    """(the training set, up to 64 held-out images (N, 3, H, W) on the device for the PSNR and the grids)."""
    try:
        train_set = build_dataset(args.data_path, image_size, train=True, num_images=args.num_images,
                                  seed=args.seed, hflip=args.hflip)
        held_out = build_dataset(args.data_path, image_size, train=False, num_images=64, seed=args.seed)
    except DataError as error:
        raise SystemExit(f"error: {error}")
    return train_set, torch.stack([held_out[i][0] for i in range(min(64, len(held_out)))]).to(device)


def build_losses(args, device: torch.device):
    """(perceptual loss or None, PatchGAN discriminator or None), as the flags ask."""
    perceptual = discriminator = None
    if args.perceptual_weights:
        from minvar.training.losses import PerceptualLoss
        try:
            perceptual = PerceptualLoss(args.perceptual_weights, args.lpips_weights).to(device)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"error: {error}")
    if args.disc_start >= 0:
        from minvar.training.losses import PatchDiscriminator
        discriminator = PatchDiscriminator().to(device)
    return perceptual, discriminator


def build_optimizers(args, vae, discriminator):
    """(Adam of the autoencoder, Adam of the discriminator or None)."""
    # (0.5, 0.9) is the VQGAN choice for stable adversarial training; without a discriminator the usual (0.9, 0.99)
    # escapes the "mean image" plateau of a small autoencoder much sooner (measured on the shapes dataset).
    betas = (0.5, 0.9) if discriminator is not None else (0.9, 0.99)
    optimizer = torch.optim.Adam(vae.parameters(), lr=args.learning_rate, betas=betas)
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.learning_rate, betas=(0.5, 0.9)) \
        if discriminator is not None else None
    return optimizer, disc_optimizer


def restore(resumed, vae, optimizer, discriminator, disc_optimizer, log: RunLog) -> int:
    """Load a resumed run's weights and optimizers; returns the step to start from (0: a new run)."""
    if resumed is None:
        return 0
    vae.load_state_dict(resumed["model"])
    optimizer.load_state_dict(resumed["optimizer"])
    if discriminator is not None and resumed.get("discriminator"):
        discriminator.load_state_dict(resumed["discriminator"])
        disc_optimizer.load_state_dict(resumed["disc_optimizer"])
    log.write(f"resumed from step {resumed['step']}")
    return resumed["step"]


def restart_generator_of(args, resumed, device: torch.device) -> torch.Generator:
    """The generator that picks the encoder outputs dead codes restart from; a resumed run continues its state."""
    generator = torch.Generator(device=device).manual_seed(args.seed + 17)
    if resumed is not None and resumed.get("restart_rng") is not None:
        generator.set_state(resumed["restart_rng"].to("cpu") if device.type == "cpu" else resumed["restart_rng"])
    return generator


def generator_step(args, step: int, model, vae, optimizer, perceptual, discriminator, images, device):
    """The autoencoder's step: pixel + vq (+ perceptual, + adaptive-weighted GAN once it starts) loss, backward,
    clip, Adam. Returns (loss, pixel loss, vq loss, reconstruction (B, 3, H, W) in fp32, whether the GAN is on)."""
    with autocast(device, args.precision == "bf16"):
        reconstruction, vq_loss, idx = model(images)
        reconstruction = reconstruction.float()
        # MSE by default: on small CPU models its gradient, large where the error is large, learns the shapes'
        # colours in a few hundred steps where L1 (VQGAN's choice, paired there with perceptual and GAN losses)
        # stays on the "background only" plateau for thousands (measured on the shapes dataset).
        rec_loss = args.mse_weight * F.mse_loss(reconstruction, images) + \
            args.l1_weight * F.l1_loss(reconstruction, images)
        loss = rec_loss + vq_loss
        if perceptual is not None:
            loss = loss + args.perceptual_weight * perceptual(reconstruction, images)
        gan_on = discriminator is not None and step >= args.disc_start
        if gan_on:
            from minvar.training.losses import adaptive_generator_weight, hinge_generator_loss
            generator_loss = hinge_generator_loss(discriminator(reconstruction))
            weight = adaptive_generator_weight(rec_loss, generator_loss, vae.decoder.conv_out.weight)
            loss = loss + args.disc_weight * weight * generator_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if args.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(vae.parameters(), args.grad_clip)
    optimizer.step()
    return loss, rec_loss, vq_loss, reconstruction, gan_on


def discriminator_step(args, discriminator, disc_optimizer, images, reconstruction, lr: float, device) -> None:
    """The discriminator's own step: hinge loss on real images against detached reconstructions."""
    from minvar.training.losses import hinge_discriminator_loss
    for group in disc_optimizer.param_groups:
        group["lr"] = lr
    with autocast(device, args.precision == "bf16"):
        d_loss = hinge_discriminator_loss(discriminator(images), discriminator(reconstruction.detach()))
    disc_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    disc_optimizer.step()


def restart_codes(args, vae, images, restart_generator, distributed, log: RunLog, done: int) -> None:
    """Restart the dead codes (EMA hit share under the threshold at every scale) with this batch's residuals."""
    with torch.no_grad():
        latent = vae.encode_latent(images)
    restarted = vae.quantize.restart_dead_codes(latent, args.dead_code_threshold, restart_generator,
                                                error_weighted=args.restart_pool == "error-weighted")
    if distributed.world_size > 1:  # every process must keep the same codebook
        torch.distributed.broadcast(vae.quantize.embedding.weight.data, src=0)
    if restarted:
        log.write(f"step {done}: restarted {restarted} dead codes")


def fix_total(args, budget, done: int, distributed, bar, log: RunLog) -> None:
    """Under --minutes: once the budget has timed its first steps, set the run's total steps (and say so)."""
    chosen = budget.total_steps(done, distributed) if budget is not None else None
    if chosen is not None:
        args.steps = bar.total = max(chosen, done)
        log.write(f"--minutes {args.minutes}: {budget.seconds_per_step:.3f} s per step from step "
                  f"{budget.begin_step} to {done}, so {args.steps} steps in all")


def log_step(args, log: RunLog, done: int, loss, rec_loss, vq_loss, lr: float, vae, distributed, step_flops,
             peak, skipped_images: int) -> None:
    """One log.txt line: the losses (the total averaged over processes), lr, speed, MFU and live codes per scale."""
    alive = (vae.quantize.ema_vocab_hit_SV > args.dead_code_threshold).float().mean(dim=1).tolist()
    mean_loss = all_reduce_mean(loss.detach(), distributed).item()
    # MFU: the step's counted FLOPs (minvar/evaluation/flops.py) / the step time / the peak of all processes' devices
    images_per_second = log.images_per_second(done, args.batch_size)
    mfu = mfu_text(step_flops, args.batch_size, images_per_second, peak, distributed.world_size)
    log.write(f"step {done} loss {mean_loss:.5f} rec {rec_loss.item():.5f} vq {vq_loss.item():.5f} "
              f"lr {lr:.2e} img/s {images_per_second:.1f} mfu {mfu} "
              f"codes alive per scale {[round(a, 3) for a in alive]} "
              f"skipped images {skipped_images}")


def save_grid(args, vae, held_out_images, log: RunLog, done: int) -> None:
    """Held-out metrics into the log, and a grid of 16 held-out images above their reconstructions."""
    metrics, reconstruction = evaluate(vae, held_out_images)
    vae.train()
    grid = torch.cat([held_out_images[:16], reconstruction[:16]])
    save_image_grid(grid, os.path.join(args.out_dir, f"reconstructions_{done:06d}.png"), nrow=16)
    log.write(f"step {done} held-out {json.dumps(metrics)}")


def save(checkpoint_path: str, args, vae, config, done: int, class_names, optimizer, restart_generator,
         discriminator, disc_optimizer) -> None:
    """The self-describing checkpoint: weights, optimizers, config, step, flags, chosen total, restart state."""
    save_checkpoint(checkpoint_path, "minvar-tokenizer", vae, config, done, class_names,
                    optimizer, args=vars(args), total_steps=args.steps,
                    restart_rng=restart_generator.get_state(),
                    discriminator=unwrap(discriminator).state_dict() if discriminator is not None else None,
                    disc_optimizer=disc_optimizer.state_dict() if disc_optimizer is not None else None)


def finish(args, vae, held_out_images, checkpoint_path: str) -> None:
    """The final held-out metrics, into <out-dir>/metrics.json and one printed line."""
    metrics, _ = evaluate(vae, held_out_images)
    with open(os.path.join(args.out_dir, "metrics.json"), "w") as file:
        json.dump(metrics, file, indent=1)
    print(f"tokenizer: held-out PSNR {metrics['psnr']:.2f} dB, codebook usage per scale "
          f"{metrics['usage_per_scale']}; checkpoint {checkpoint_path}")


def main(argv=None) -> int:
    """Train the tokenizer; returns the exit status: 0, or 128 + the signal that stopped the run early (130: Ctrl-C)."""
    started = time.perf_counter()  # a --minutes budget counts from here
    parser = build_parser()
    args = parser.parse_args(argv)
    # the run folder is locked and the stop signals caught until the run ends, however it ends
    with open_run(args, "minvar-tokenizer", given_flags(parser, argv), TOKENIZER_MAY_CHANGE_ON_RESUME) as run:
        return train(args, run, started, argv)


def train(args, run, started: float, argv) -> int:
    # 1. config: device, precision, the run to resume, the architecture ------------------------------------------
    distributed, device, checkpoint_path, resumed = run.distributed, run.device, run.checkpoint_path, run.resumed
    try:
        config = config_from_dict(VQVAEConfig, resumed["config"]) if resumed else build_config(args)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}")
    if not resumed:  # recorded as run, so a resume can compare them
        args.vocab_size, args.patch_nums = config.vocab_size, ",".join(map(str, config.patch_nums))
    steps_line = choose_steps(args) + (" (a --minutes budget sets them once timed)" if args.minutes else "")
    log = RunLog(args.out_dir, distributed)
    log.write(f"args: {json.dumps(vars(args))}")
    log.write(steps_line)
    for line in run.changes:
        log.say(line)

    # 2. data ----------------------------------------------------------------------------------------------------
    train_set, held_out_images = load_data(args, config.image_size, device)

    # 3. model and losses ----------------------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    vae = VQVAE(config).to(device)
    # Usage EMAs start at zero, so the first dead-code restart (step --restart-every) re-seeds every unused code
    # from real residuals: a data-dependent codebook init.
    perceptual, discriminator = build_losses(args, device)

    # 4. optimizers, resume --------------------------------------------------------------------------------------
    optimizer, disc_optimizer = build_optimizers(args, vae, discriminator)
    start_step = restore(resumed, vae, optimizer, discriminator, disc_optimizer, log)
    budget = TimeBudget(args.minutes, start_step, started) if args.minutes and start_step == 0 else None
    model = wrap_ddp(vae, distributed, device)
    if discriminator is not None:
        discriminator = wrap_ddp(discriminator, distributed, device)
    restart_generator = restart_generator_of(args, resumed, device)

    # 5. train loop ----------------------------------------------------------------------------------------------
    vae.train()  # (the held-out grids switch it to eval mode and back)
    # with a budget the loader runs on (its batches are pure functions of the step) until the chosen total
    loader = make_loader(train_set, args.batch_size, args.seed, start_step,
                         args.steps if budget is None else 10 ** 12, distributed, args.workers)
    peak = peak_flops(device, args.precision)  # FLOP/s of one device: GPU table, or measured once on a CPU
    step_flops = vqvae_training_flops(config, args.batch_size)  # one process's step (the VQVAE alone)
    log.write(f"precision {args.precision}, {torch.get_num_threads()} CPU threads, device peak "
              f"{'unknown' if peak is None else f'{peak / 1e12:.3g} TFLOP/s'}")
    log.start(start_step)
    bar = progress_bar(loader, start_step, args.steps, distributed, "tokenizer")
    clock = SaveClock(args.save_minutes)
    stopped = False
    run.stops.begin_steps()
    for step, (images, _) in enumerate(bar, start=start_step):
        if step >= args.steps:
            break
        images = images.to(device, non_blocking=True)
        lr = cosine_lr_at(step, args.steps, args.learning_rate, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, rec_loss, vq_loss, reconstruction, gan_on = generator_step(args, step, model, vae, optimizer,
                                                                         perceptual, discriminator, images, device)
        if gan_on:
            discriminator_step(args, discriminator, disc_optimizer, images, reconstruction, lr, device)
        if args.restart_every and (step + 1) % args.restart_every == 0:
            restart_codes(args, vae, images, restart_generator, distributed, log, step + 1)

        # 6. logging, grids, checkpoints (by steps, by the clock, and at a stop) -----------------------------------
        if distributed.is_main:
            bar.set_postfix(loss=f"{loss.item():.4f}", rec=f"{rec_loss.item():.4f}", vq=f"{vq_loss.item():.4f}",
                            lr=f"{lr:.1e}")
        done = step + 1
        fix_total(args, budget, done, distributed, bar, log)
        if is_due(done, args.log_every, args.steps):
            log_step(args, log, done, loss, rec_loss, vq_loss, lr, vae, distributed, step_flops,
                     peak, getattr(train_set, "num_skipped", 0))
        if distributed.is_main and is_due(done, args.grid_every, args.steps):
            save_grid(args, vae, held_out_images, log, done)
        stopped, save_by_time = run.stops.after_step(clock.due(), device)
        stopped = stopped and done < args.steps  # a stop during the last step is the normal end
        if distributed.is_main and (is_due(done, args.save_every, args.steps) or save_by_time or stopped):
            save_or_exit(lambda: save(checkpoint_path, args, vae, config, done, train_set.class_names, optimizer,
                                      restart_generator, discriminator, disc_optimizer), args.out_dir)
            clock.saved()
        if stopped:
            break
    bar.close()
    if distributed.is_main and stopped:
        print(run.stops.report(done, args.steps, checkpoint_path, __file__, argv))
    elif distributed.is_main:
        finish(args, vae, held_out_images, checkpoint_path)
    del model, discriminator, bar, loader  # the DDP wrappers hold the process group: drop them before leaving it
    end_distributed(distributed)
    return run.stops.exit_status() if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
