# %% [markdown]
# # Tutorial 6: the released VAR weights: loading vae_ch160v4096z32.pth and var_d16.pth into minvar, and sampling
#
#     python tutorials/06_official_checkpoints.py                 # looks in checkpoints/ for the two files
#     python tutorials/06_official_checkpoints.py --vae PATH --var PATH --classes 980,437,22,562
#     python tutorials/06_official_checkpoints.py --fast          # one image only (if the files are there)
#
# Opened as a notebook (Jupyter with jupytext, VS Code, PyCharm) it runs cell by cell, with its flags taken from the
# environment variable `MINVAR_TUTORIAL_ARGS`, e.g. `"--fast"` (tutorials/README.md).
#
# minvar keeps the official parameter and buffer names (`models/vqvae.py`, `models/var.py` of FoundationVision/VAR),
# so the released state dicts load strictly, with no key renamed or left over, and the architecture is read from the
# weights themselves: depth = number of blocks, width = size of `pos_start`, heads = size of the attention
# temperature, scale schedule = the `lvl_1L` buffer, codebook = `quantize.embedding`. This tutorial never downloads
# anything.
#
# 1. if you downloaded the official files: load them, print the parameter counts, and sample a few ImageNet classes
#    with the paper's FID setting (cfg 1.5, top-k 900, top-p 0.96) → `06_official_samples.png`
# 2. if not: where to get them, and the same loading path on the small official-layout weights of
#    `../shared/fixtures/official_var_tiny` (random weights run through the OFFICIAL code), with a parity check
#    against what the official code sampled → `06_official_layout_samples.png`

# %%
import json
import os
from pathlib import Path

import torch

import common  # flags, threads (tutorials/common.py)
import matplotlib.pyplot as plt

from minvar import generate, load_official_var, load_official_vqvae

HUGGING_FACE = "https://huggingface.co/FoundationVision/var"
SHARED = Path(os.environ.get("MINVAR_SHARED", common.REPO_ROOT.parent / "shared"))


def extra_flags(parser):
    parser.add_argument("--vae", default=str(common.REPO_ROOT / "checkpoints" / "vae_ch160v4096z32.pth"),
                        help="the released tokenizer file")
    parser.add_argument("--var", default=str(common.REPO_ROOT / "checkpoints" / "var_d16.pth"),
                        help="a released transformer file (var_d16/d20/d24/d30.pth; d36 needs the 512px schedule)")
    parser.add_argument("--classes", default="980,437,22,562", help="ImageNet class ids to sample (the official "
                        "demo's: volcano, beach wagon, bald eagle, fountain)")
    parser.add_argument("--cfg", type=float, default=1.5, help="guidance strength (paper FID setting)")
    parser.add_argument("--top-k", type=int, default=900, help="top-k sampling (paper FID setting)")
    parser.add_argument("--top-p", type=float, default=0.96, help="nucleus sampling mass (paper FID setting)")
    parser.add_argument("--fixture-dir", default=str(SHARED / "fixtures" / "official_var_tiny"),
                        help="small official-layout weights and outputs of the official code")


args = common.parse_args("Tutorial 6: the released VAR weights: loading vae_ch160v4096z32.pth and var_d16.pth into "
                         "minvar, and sampling.", extra_flags)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def show_images(rows, titles, path_name, suptitle):
    """A grid of image rows (each a (N, 3, H, W) tensor in [0, 1]), one title per row."""
    columns = max(len(row) for row in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.4 * len(rows)), squeeze=False)
    for r, (row, title) in enumerate(zip(rows, titles)):
        for c in range(columns):
            axes[r, c].axis("off")
            if c < len(row):
                axes[r, c].imshow(row[c].clamp(0, 1).permute(1, 2, 0).numpy())
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    common.save_figure(figure, args.out_dir, path_name, title=suptitle, title_size=9)


# %% [markdown]
# ## 1. The released checkpoints
#
# With the two files at `--vae` and `--var` (by default in `checkpoints/`): load them, count the parameters, sample,
# and stop there (in a notebook the `SystemExit` just ends the run). Without them: where to get them, then section 2.

# %%
common.section("1. The released checkpoints")
if os.path.isfile(args.vae) and os.path.isfile(args.var):
    vae = load_official_vqvae(args.vae)  # frozen, eval mode, as the official test_mode=True
    var = load_official_var(args.var, vae=vae)  # checks that the two fit (codebook, scale schedule)
    print(f"VQVAE {args.vae}: {count(vae):,} parameters (the official count is 108,948,355)")
    print(f"VAR   {args.var}: {count(var):,} parameters, depth {var.config.depth}, width {var.config.width}, "
          f"{var.config.num_heads} heads (d16: 310,283,520; the README's '310M' is the transformer alone)")
    classes = [int(c) for c in args.classes.split(",")][:1 if args.fast else None]
    print(f"sampling classes {classes} with cfg {args.cfg}, top-k {args.top_k}, top-p {args.top_p}: about 10-20 s "
          f"per 256px image on one CPU core (bench/README.md)")
    images = generate(var, vae, classes, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    show_images([images], [f"classes {classes}"], "06_official_samples.png",
                f"VAR-d{var.config.depth} samples (cfg {args.cfg}, top-k {args.top_k}, top-p {args.top_p})")
    print("Done. (Without the released files, this tutorial shows the same loading path on small official-layout "
          "weights instead.)")
    raise SystemExit(0)
else:
    missing = [path for path in (args.vae, args.var) if not os.path.isfile(path)]
    print(f"not found: {', '.join(missing)}")
    print(f"""The released weights are in the official Hugging Face repository, {HUGGING_FACE}
(FoundationVision/VAR's README links them). You need the tokenizer and one transformer:
    vae_ch160v4096z32.pth    the multi-scale VQ-VAE, 108.9M parameters (~0.44 GB in fp32)
    var_d16.pth              VAR-d16, 310M parameters (~1.2 GB); d20, d24, d30 are larger, d36 is the 512px model
Put them in checkpoints/ (or pass --vae and --var), e.g. with a browser or
    wget -P checkpoints {HUGGING_FACE}/resolve/main/vae_ch160v4096z32.pth
    wget -P checkpoints {HUGGING_FACE}/resolve/main/var_d16.pth
and run this tutorial again, or let minvar fetch and check them into its cache folder (~/.cache/minvar):
    python -c "from minvar.io.pretrained import download; print(download('vae'), download('d16'))"
    python sample.py --pretrained d16 --classes 980,437 --per-class 4
(This tutorial never downloads anything itself.)""")

# %% [markdown]
# ## 2. The same loading path on small official-layout weights
#
# The files of `--fixture-dir` were written by the official code (FoundationVision/VAR @ 78b95394) with seeded
# RANDOM weights: the released architecture and key names, narrower (VAE ch=32 instead of 160; VAR depth 2, width
# 128), plus what the official code computed with them. Random weights make noise images, but every number must
# match.

# %%
common.section("2. The same loading path on small official-layout weights")
fixture = Path(args.fixture_dir)
if not (fixture / "vae_state_dict.pt").is_file():
    print(f"{fixture} not found: nothing more to show (it ships beside minvar's checkout, in ../shared).")
    raise SystemExit(0)
config = json.loads((fixture / "config.json").read_text())
vae = load_official_vqvae(fixture / "vae_state_dict.pt")
var = load_official_var(fixture / "var_state_dict.pt", vae=vae)
print(f"VQVAE: {count(vae):,} parameters (official code: {config['vae']['n_params']:,}); read from the weights: "
      f"channels {vae.config.channels}, channel_mult {vae.config.channel_mult}, V = {vae.config.vocab_size}, "
      f"Cvae = {vae.config.code_dim}, {len(vae.quantize.quant_resi.qresi_ls)} Φs, scales {vae.patch_nums}")
print(f"VAR:   {count(var):,} parameters (official code: {config['var']['n_params']:,}); read from the weights: "
      f"depth {var.config.depth}, width {var.config.width}, heads {var.config.num_heads}, "
      f"{var.num_classes} classes + null, L = {var.L}")
state = torch.load(fixture / "var_state_dict.pt", map_location="cpu", weights_only=True)
print("a few official keys, loaded strictly into minvar modules of the same names:")
for key in ("class_emb.weight", "pos_1LC", "blocks.0.attn.mat_qkv.weight", "blocks.0.attn.scale_mul_1H11",
            "blocks.0.ada_lin.1.weight", "head.weight", "lvl_1L", "attn_bias_for_masking"):
    print(f"    {key:<32} {tuple(state[key].shape)}")

# %% [markdown]
# Parity: the official code sampled with these weights, greedily at cfg 4 and with the paper's FID setting; minvar's
# `generate()` must give the same tokens and images from the same seeds.

# %%
reference = torch.load(fixture / "var_samples.pt", map_location="cpu", weights_only=True)["runs"]
rows, titles = [], []
for run, settings in (("greedy_cfg4", dict(cfg=4.0, top_k=1, top_p=0.0)),
                      ("fid_setting_topk900_topp0.96_cfg1.5", dict(cfg=1.5, top_k=900, top_p=0.96))):
    official = reference[run]
    labels, seed = official["kwargs"]["label_B"], official["kwargs"]["g_seed"]
    images, tokens = generate(var, vae, labels, seed=seed, return_tokens=True, **settings)  # (2, 3, 256, 256)
    same_tokens = all(torch.equal(a, b) for a, b in zip(tokens, official["idx_Bl"]))
    # the compact copy in tests/fixtures keeps every 16th image row only; its "kept" entry says which
    rows_kept = slice(*official["kept"]["img_B3HW_01"][2]) if "kept" in official else slice(None)
    difference = (images[:, :, rows_kept] - official["img_B3HW_01"]).abs().max().item()
    print(f"{run}: classes {labels}, {settings}: tokens identical to the official run: {same_tokens}; "
          f"max |image difference| = {difference:.1e}")
    if "kept" in official:  # no full official images to show beside minvar's
        rows.append(images)
        titles.append(f"{run}: minvar")
        continue
    rows.append(torch.cat([official["img_B3HW_01"], images]))  # (4, 3, 256, 256): official pair, then minvar's
    titles.append(f"{run}: official code (left two), minvar (right two)")
show_images(rows, titles, "06_official_layout_samples.png",
            "Official-layout weights (random, so the images are noise): official code vs minvar, same seed")
print("The same code path loads the released files: load_official_vqvae and load_official_var read the architecture "
      "from the keys and load strictly.")
