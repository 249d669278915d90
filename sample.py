"""Sample class-conditional images (or edit one) with a trained VAR.

Writes to --out-dir: `grid.png` (one row per class), one PNG per sample under `images/`, and `samples.npz` in the
format of OpenAI's guided-diffusion evaluator (`arr_0`: uint8 N×H×W×3, plus `labels`), which is how VAR's FID
and IS are measured (official README: 50 images per class, cfg 1.5, top-k 900, top-p 0.96).

    python sample.py                                           # the quickstart model, every class
    python sample.py --classes "red circle,blue ring" --per-class 16
    python sample.py --pretrained d16 --classes 207,980 --per-class 4      # the released VAR-d16, downloaded once
    python sample.py --checkpoint var_d16.pth --tokenizer vae_ch160v4096z32.pth --classes 207,980 \
        --cfg 1.5 --top-k 900 --top-p 0.96 --per-class 50 --device cuda
Zero-shot editing (paper Section 5): in-paint a box, out-paint around it, or regenerate it as another class:
    python sample.py --edit photo.png --box 0.25,0.25,0.75,0.75 --mode inpaint --classes "green bar"
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from minvar.io.checkpoint import CheckpointError, load_tokenizer, load_var, read_file
from minvar.io.data import from_uint8_images, save_image_grid, to_uint8_images
from minvar.io.pretrained import RELEASED, DownloadError, load as load_pretrained
from minvar.sampling import box_keep_mask, check_pair, edit, generate
from minvar.training.arguments import (add_speed_arguments, non_negative_float, non_negative_int, positive_int,
                                       probability)
from minvar.training.precision import autocast, resolve_precision, set_threads


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/var/checkpoint.pt", help="a train_var.py checkpoint, "
                        "or an official var_dN.pth")
    parser.add_argument("--tokenizer", default=None, help="tokenizer checkpoint; needed for official VAR files, "
                        "otherwise the one recorded in the VAR checkpoint")
    parser.add_argument("--pretrained", default=None, choices=[n for n in RELEASED if n != "vae"],
                        help="a released ImageNet VAR by name, with its tokenizer: downloaded once into the cache "
                        "folder (~/.cache/minvar or $MINVAR_CACHE), checked, loaded strictly; replaces --checkpoint")
    parser.add_argument("--classes", default="all", help="comma-separated class ids or names, or 'all'")
    # 50 per class, as the official FID protocol: Fréchet distances need many images (evaluate.py compares them at
    # matched N)
    parser.add_argument("--per-class", type=positive_int, default=50, help="samples per class")
    parser.add_argument("--cfg", type=non_negative_float, default=None, help="classifier-free guidance strength; "
                        "default: the run's sampling.json (evaluate.py --sweep), else 3")
    # Quickstart defaults: nucleus sampling at 0.8. Over three quickstart runs (seeds 0-2, 240 samples each), top-p
    # 0.8 against 0.5: judge accuracy 96.7% against 96.8% on average, Fréchet distance 83 against 102, recall 0.31
    # against 0.15; lower top-p collapses each class onto one look. For ImageNet FID use the official --cfg 1.5
    # --top-k 900 --top-p 0.96.
    parser.add_argument("--top-k", type=non_negative_int, default=None, help="top-k sampling (0: off, 1: greedy); default: "
                        "the run's sampling.json, else 0")
    parser.add_argument("--top-p", type=probability, default=None, help="nucleus sampling mass (0: off); default: "
                        "the run's sampling.json, else 0.8")
    parser.add_argument("--more-smooth", action="store_true", help="Gumbel-softmax soft code vectors (official "
                        "demo option; better visuals, not used for FID)")
    parser.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same samples")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images generated at once")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda', or 'auto'")
    add_speed_arguments(parser)  # --precision, --threads
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    parser.add_argument("--out-dir", default="runs/samples", help="where grid.png, images/ and samples.npz go")
    # editing
    parser.add_argument("--edit", default=None, help="an image to edit instead of sampling from scratch")
    parser.add_argument("--box", default="0.25,0.25,0.75,0.75", help="edit box y0,x0,y1,x1 as image fractions")
    parser.add_argument("--mode", default="inpaint", choices=["inpaint", "outpaint"], help="regenerate inside "
                        "the box (inpaint) or around it (outpaint)")
    return parser.parse_args(argv)


def load_models(args, device):
    """The VAR and its tokenizer from a minvar checkpoint (tokenizer embedded or by path) or official files."""
    if args.pretrained:  # the released ImageNet model: class ids 0-999
        try:
            vae, var = load_pretrained(args.pretrained)
        except DownloadError as error:
            raise SystemExit(f"error: --pretrained {args.pretrained}: {error}")
        return var.to(device), vae.to(device), [str(i) for i in range(var.num_classes)]
    data = read_file(args.checkpoint)
    var = load_var(data, use_ema=not args.no_ema)
    class_names = data.get("class_names") or [str(i) for i in range(var.num_classes)]
    if args.tokenizer:
        vae = load_tokenizer(args.tokenizer)
    elif data.get("tokenizer"):
        vae = load_tokenizer(data["tokenizer"])
    elif data.get("tokenizer_path"):
        vae = load_tokenizer(data["tokenizer_path"])
    else:
        raise SystemExit("error: this VAR checkpoint names no tokenizer: pass --tokenizer")
    check_pair(var, vae)
    return var.to(device), vae.to(device), class_names


# The quickstart's, when a run has no sampling.json: cfg 3 rather than 4 and top-p 0.8, chosen by measurement
# (docs/results.md#defaults-and-the-measurements-behind-them).
BUILT_IN_SAMPLING = {"cfg": 3.0, "top_k": 0, "top_p": 0.8}


def resolve_sampling(args) -> str:
    """Fill --cfg, --top-k and --top-p left unset: from sampling.json beside the checkpoint (the setting
    `evaluate.py --sweep` chose by measurement), else the built-in defaults. Returns where they came from."""
    path = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "sampling.json")
    chosen, source = dict(BUILT_IN_SAMPLING), "built-in defaults"
    if os.path.isfile(path):
        with open(path) as file:
            chosen.update(json.load(file).get("chosen", {}))
        source = path
    for key in ("cfg", "top_k", "top_p"):
        if getattr(args, key) is None:
            setattr(args, key, chosen[key])
    return source


def parse_classes(text: str, class_names) -> list:
    """'all', or ids and names mixed: '3,red circle'. Unknown ones are an error that lists the known names."""
    if text == "all":
        return list(range(len(class_names)))
    classes = []
    for item in (t.strip() for t in text.split(",")):
        if item.isdigit() and int(item) < len(class_names):
            classes.append(int(item))
        elif item in class_names:
            classes.append(class_names.index(item))
        else:
            known = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
            raise SystemExit(f"error: unknown class {item!r}: use an id in 0..{len(class_names) - 1} "
                             f"or one of: {known}")
    return classes


def save_pngs(out_dir: str, images, labels, class_names, first: int, written: list) -> None:
    """One PNG per sample, `images/<index>_<class>.png`, numbered from `first`; their paths are added to `written`."""
    for i, (picture, label) in enumerate(zip(to_uint8_images(images.cpu() * 2 - 1), labels), start=first):
        name = class_names[label].replace(" ", "_") if label < len(class_names) else "unconditional"
        written.append(os.path.join(out_dir, "images", f"{i:05d}_{name}.png"))
        Image.fromarray(picture).save(written[-1])


def main(argv=None) -> int:
    """Sample (or edit); returns the exit status: 0, or 130 after a Ctrl-C, which keeps the samples written so far."""
    args = parse_args(argv)
    written = []  # the PNG files written so far
    try:
        sample(args, written)
    except KeyboardInterrupt:
        print(f"\nsample.py: stopped by Ctrl-C; kept the {len(written)} samples written to "
              f"{os.path.join(args.out_dir, 'images')} (grid.png and samples.npz are written only at the end)")
        return 130
    return 0


def sample(args, written: list) -> None:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    set_threads(args.threads)
    bf16 = resolve_precision(args.precision, device) == "bf16"  # bf16 changes the samples a little
    try:
        var, vae, class_names = load_models(args, device)
    except (CheckpointError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    classes = parse_classes(args.classes, class_names)
    source = resolve_sampling(args)
    print(f"sampling: cfg {args.cfg}, top-k {args.top_k}, top-p {args.top_p} (unset ones from {source})")
    os.makedirs(os.path.join(args.out_dir, "images"), exist_ok=True)

    if args.edit:  # ---------------------------------------------------------------------------- zero-shot editing
        size = vae.config.image_size
        try:
            source = Image.open(args.edit).convert("RGB").resize((size, size), Image.LANCZOS)
        except OSError as error:
            raise SystemExit(f"error: cannot read --edit image {args.edit!r}: {error}")
        image = from_uint8_images(np.array(source))[None].to(device)  # (1, 3, H, W) in [-1, 1]
        keep = box_keep_mask(vae.patch_nums[-1], [float(v) for v in args.box.split(",")], args.mode)
        label = classes[0] if args.classes != "all" else None  # no class: plain in/out-painting
        with autocast(device, bf16):
            images = edit(var, vae, image.expand(args.per_class, -1, -1, -1), keep, label=label, cfg=args.cfg,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed, more_smooth=args.more_smooth).float()
        labels = [label if label is not None else var.num_classes] * args.per_class
        masked = image * torch.nn.functional.interpolate(keep[None, None], size=(size, size)).to(device)
        grid = torch.cat([image, masked, images * 2 - 1])
        save_image_grid(grid, os.path.join(args.out_dir, "grid.png"), nrow=min(len(grid), 10))
        save_pngs(args.out_dir, images, labels, class_names, 0, written)
    else:  # --------------------------------------------------------------------------------- class-conditional
        labels = [c for c in classes for _ in range(args.per_class)]
        chunks = []
        for start in tqdm(range(0, len(labels), args.batch_size), desc="sampling", dynamic_ncols=True):
            batch = labels[start:start + args.batch_size]
            # a distinct seed per batch keeps batches independent and the whole run reproducible
            with autocast(device, bf16):
                chunks.append(generate(var, vae, batch, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                       seed=args.seed + start, more_smooth=args.more_smooth).float().cpu())
            save_pngs(args.out_dir, chunks[-1], batch, class_names, start, written)  # kept if a later batch is stopped
        images = torch.cat(chunks)
        grid_rows = [images[i * args.per_class:i * args.per_class + min(args.per_class, 10)]
                     for i in range(min(len(classes), 16))]
        save_image_grid(torch.cat(grid_rows) * 2 - 1, os.path.join(args.out_dir, "grid.png"),
                        nrow=min(args.per_class, 10))
    pixels = to_uint8_images(images.cpu() * 2 - 1)  # (N, H, W, 3) uint8
    np.savez(os.path.join(args.out_dir, "samples.npz"), arr_0=pixels, labels=np.asarray(labels, dtype=np.int64))
    print(f"wrote {len(pixels)} samples to {args.out_dir} (grid.png, images/, samples.npz)")


if __name__ == "__main__":
    sys.exit(main())
