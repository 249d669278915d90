"""Benchmark the multi-scale VQVAE tokenizer: training, encoding and decoding images per second.

What is timed (VAR paper Section 3.2, Algorithms 1-2; official `models/vqvae.py`):
    train   one optimisation step on B random images: `vae(img)` (encoder, Algorithm 1's multi-scale quantizer with
            its straight-through estimator, decoder), L1 reconstruction loss + the quantizer's vq loss, backward, Adam
            step. The perceptual and GAN losses of a full tokenizer recipe are NOT included: they are separate
            networks (minvar/training/losses.py) whose cost depends on their own choices.
    encode  `vae.img_to_idx(img)`: image -> K token maps (Algorithm 1), no gradient, what VAR training runs per batch
            when tokens are not cached.
    decode  `vae.idx_to_img(idx)`: K token maps -> image (Algorithm 2 + decoder), no gradient, the last stage of
            generation.

Rows, timing, dtypes and the table are those of bench_var.py (median of --repeats timed calls after --warmup,
torch.cuda.synchronize around every call on CUDA, bf16 = torch.autocast(bfloat16)); its helpers are imported from
the same folder. Training rows give their MFU: the VQVAE step's FLOPs counted by PyTorch on the meta device
(`minvar.evaluation.flops.vqvae_training_flops`, the same count train_tokenizer.py logs) / the time / the device's peak.

    python bench/bench_tokenizer.py                                   # tiny tokenizer, 32px, batch 32
    python bench/bench_tokenizer.py --preset official --batch-size 2  # the released VQVAE's architecture, 256px

Shape legend: B batch, K number of scales, pn side of a scale's token map, H = W image side.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict

import torch
import torch.nn.functional as F

from bench_var import add_measurement_arguments, autocast, environment, measure, print_table, row, setup, write_json
from minvar import VQVAE
from minvar.evaluation.flops import vqvae_training_flops
from minvar.vqvae import VQVAE_PRESETS


def main() -> None:
    # 1. config ------------------------------------------------------------------------------------------------------
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(VQVAE_PRESETS),
                        help="named tokenizer config (minvar.vqvae.VQVAE_PRESETS); 'official' is the released "
                             "vae_ch160v4096z32 architecture at 256px (default %(default)s)")
    add_measurement_arguments(parser, modes=["train", "encode", "decode"], batch_size=32,
                              batch_help="images per training step and per encode/decode call")
    args = parser.parse_args()
    if args.quick:
        args.preset = "tiny"
    device = setup(parser, args)

    # 2. model -------------------------------------------------------------------------------------------------------
    vae = VQVAE.from_preset(args.preset).to(device)  # random weights: the cost does not depend on them
    cfg = vae.config
    num_params = sum(p.numel() for p in vae.parameters())
    print(f"# VQVAE {args.preset}: {cfg.image_size}px, {cfg.downsample}× down to {cfg.patch_nums[-1]}², "
          f"{len(cfg.patch_nums)} scales {tuple(cfg.patch_nums)}, V={cfg.vocab_size}, Cvae={cfg.code_dim}, "
          f"channels {cfg.channels}×{tuple(cfg.channel_mult)}; {num_params / 1e6:.1f}M parameters")
    env = environment(device)
    print(f"# {env['device']} ({env['device_name']}), torch {env['torch']}, CPU threads {env['threads']}, "
          f"load average {env['load_average_1min']}")

    # 3. inputs: random images in the tokenizer's range, and their tokens for the decode rows --------------------------
    B = args.batch_size
    img_B3HW = torch.rand(B, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    idx = vae.img_to_idx(img_B3HW)  # K tensors (B, pn²)

    rows = []
    for dtype in args.dtypes:
        # 4. train: forward + L1 + vq loss, backward, Adam step -------------------------------------------------------
        if "train" in args.modes:
            vae.train()
            optimizer = torch.optim.Adam(vae.parameters(), lr=1e-4)

            def train_step():
                with autocast(device, dtype):
                    rec_B3HW, vq_loss, _ = vae(img_B3HW)  # (B, 3, H, W), unclamped
                loss = F.l1_loss(rec_B3HW.float(), img_B3HW) + vq_loss.float()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            timing = measure(train_step, device, args.warmup, args.repeats, f"{args.preset} train {dtype}")
            rows.append(row(args.preset, num_params, dtype, "train", B, timing,
                            flops=vqvae_training_flops(cfg, B), device=device))
            del optimizer  # free the Adam state before the next row (matters for the peak memory on CUDA)
            vae.zero_grad(set_to_none=True)

        # 5. encode (Algorithm 1) and decode (Algorithm 2), no gradient -----------------------------------------------
        vae.eval()
        calls = {"encode": lambda: vae.img_to_idx(img_B3HW), "decode": lambda: vae.idx_to_img(idx)}
        for mode in ("encode", "decode"):
            if mode in args.modes:

                def inference_call():
                    with torch.no_grad(), autocast(device, dtype):
                        calls[mode]()

                timing = measure(inference_call, device, args.warmup, args.repeats, f"{args.preset} {mode} {dtype}")
                rows.append(row(args.preset, num_params, dtype, mode, B, timing))

    # 6. report --------------------------------------------------------------------------------------------------------
    print_table(rows)
    if args.json:
        write_json(args.json, {"environment": env, "vqvae_config": {"name": args.preset, **asdict(cfg)},
                               "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
