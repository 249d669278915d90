"""The released official weights: reading weight files safely, and building models from official state dicts.

Paper: the models of Section 3.2 and Table 1, as released by the official repository
(docs/official_model.md#checkpoint-buffers).

`vae_ch160v4096z32.pth` and `var_d{16,20,24,30,36}.pth` (released with FoundationVision/VAR) are plain state
dicts with the official parameter and buffer names (models/vqvae.py and models/var.py of the official code). The VAR
ones carry the buffers `lvl_1L`, `attn_bias_for_masking` and `blocks.*.attn.zero_k_bias`; minvar registers the same
persistent buffers, so they load strictly with no key left over. The architecture is read from the weights.

A weight file is untrusted input: every file is read with `torch.load(..., weights_only=True)`, so loading never
runs code, and every problem (wrong kind of file, missing or unexpected keys, a shape that disagrees) is reported
in words that say what to do, never as a raw PyTorch traceback. minvar's own run checkpoints (minvar/io/checkpoint.py)
are read through the same `read_file` and `strict_load`.

Dependencies point one way: this file imports the models (var.py, vqvae.py) and sampling.py's pairing check; the
models import nothing from here, and checkpoint.py builds on it.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence

import torch

from minvar.sampling import check_pair
from minvar.var import SCHEDULE_256, VAR, VARConfig
from minvar.vqvae import VQVAE, VQVAEConfig


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as asked, with the reason and the remedy in the message."""


def read_file(path_or_state_dict) -> Dict[str, Any]:
    """Load a checkpoint dict safely (weights_only=True, on CPU), or pass a dict through."""
    if isinstance(path_or_state_dict, dict):
        return path_or_state_dict  # already loaded (e.g. a tokenizer embedded in a VAR checkpoint)
    path = os.fspath(path_or_state_dict)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a file)")
    try:
        # weights_only=True: the unpickler accepts tensors and plain containers only, so a file cannot run code.
        # map_location="cpu": a checkpoint saved on GPU loads on a machine without one; callers move it after.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, truncated files, non-tensor objects refused by weights_only
        raise CheckpointError(f"cannot read {path!r} as a PyTorch checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}); is the file complete and a .pth/.pt file?")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path!r} holds a {type(data).__name__}, not a state dict or checkpoint dict")
    return data


def kind_of_state_dict(state_dict: Dict[str, Any]) -> str:
    """'vqvae', 'var' or 'unknown', from the key names alone.

    The two official files are plain state dicts with no header, so their key names are the only way to tell a
    tokenizer from a transformer and to say "you passed the VAE where the VAR goes".
    """
    if "quantize.embedding.weight" in state_dict or any(k.startswith("encoder.") for k in state_dict):
        return "vqvae"
    if "class_emb.weight" in state_dict and "head.weight" in state_dict:
        return "var"
    return "unknown"


def strict_load(model: torch.nn.Module, state_dict: Dict[str, Any], what: str) -> None:
    """`load_state_dict(strict=True)`, with a readable report of the first problems instead of a wall of keys."""
    expected = model.state_dict()
    # Compare key sets first: PyTorch's own message lists every key, hundreds for a VAR, which hides the cause.
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: the weights do not match the architecture. {len(missing)} missing key(s) "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; {len(unexpected)} unexpected key(s) "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key, tensor in expected.items():  # then shapes: report the first disagreement, which names the culprit
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{what}: {key!r} has shape {tuple(state_dict[key].shape)} in the file but "
                                  f"{tuple(tensor.shape)} in the model built from it")
    for key, tensor in state_dict.items():  # a NaN would silently turn every output into NaN: refuse it here
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not tensor.is_meta and tensor.isnan().any():
            raise CheckpointError(f"{what}: {key!r} holds NaN values: the run that wrote it diverged or the file is "
                                  f"damaged; use an earlier checkpoint of the run")
    model.load_state_dict(state_dict, strict=True)


def infer_vqvae_config(state_dict: Dict[str, Any], patch_nums: Sequence[int] = None) -> VQVAEConfig:
    """Read the tokenizer's architecture from an official-layout state dict.

    Every field comes from a shape or a key count: the codebook gives V and Cvae, conv_in the base width, the
    first conv of each encoder level its channel multiplier, the block keys of level 0 the ResNet blocks per level,
    and the Φ keys how many Φ convolutions are shared. The scale schedule is not in the weights: it is the 256px
    one unless the caller says otherwise (the 512px d36 reuses the same VAE with other patch_nums).
    """
    vocab_size, code_dim = state_dict["quantize.embedding.weight"].shape  # (V, Cvae)
    channels = state_dict["encoder.conv_in.weight"].shape[0]  # base width "ch"
    levels = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("encoder.down.")})
    channel_mult = tuple(state_dict[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // channels for i in levels)
    num_res_blocks = len({k.split(".")[4] for k in state_dict if k.startswith("encoder.down.0.block.")})
    num_phis = len({k.split(".")[3] for k in state_dict if k.startswith("quantize.quant_resi.qresi_ls.")})
    latent = 2 ** (len(channel_mult) - 1)  # image-to-latent downsampling factor
    if patch_nums is None:  # the usage buffer has one row per scale it was trained with
        patch_nums = SCHEDULE_256 if "quantize.ema_vocab_hit_SV" not in state_dict or \
            state_dict["quantize.ema_vocab_hit_SV"].shape[0] == len(SCHEDULE_256) else None
        if patch_nums is None:
            raise CheckpointError("cannot tell the scale schedule of this VQVAE: pass patch_nums=...")
    return VQVAEConfig(vocab_size=vocab_size, code_dim=code_dim, channels=channels, channel_mult=channel_mult,
                       num_res_blocks=num_res_blocks, num_phis=num_phis, patch_nums=tuple(patch_nums),
                       image_size=patch_nums[-1] * latent,
                       attention=any(".attn." in k for k in state_dict if k.startswith("encoder.down.")),
                       mid_attention="encoder.mid.attn_1.qkv.weight" in state_dict)


def load_official_vqvae(path_or_state_dict, patch_nums: Sequence[int] = None) -> VQVAE:
    """Build a VQVAE from an official-layout state dict (e.g. vae_ch160v4096z32.pth) and load it strictly.

    The released VAE is frozen and in eval mode, as the official `test_mode=True`.
    """
    state_dict = dict(read_file(path_or_state_dict))
    kind = kind_of_state_dict(state_dict)
    if kind != "vqvae":
        hint = " It looks like a VAR transformer: load it with load_official_var." if kind == "var" else ""
        raise CheckpointError(f"this is not a VQVAE state dict (no encoder/quantizer keys).{hint}")
    cfg = infer_vqvae_config(state_dict, patch_nums)
    vae = VQVAE(cfg)
    hits = state_dict.get("quantize.ema_vocab_hit_SV")
    if hits is not None and hits.shape[0] != len(cfg.patch_nums):
        # The same VAE serves the 10-scale 256px and 512px schedules; its usage statistics follow the schedule
        # it was trained with. Keep the model's own buffer, as the official load_state_dict does.
        state_dict["quantize.ema_vocab_hit_SV"] = vae.quantize.ema_vocab_hit_SV
    strict_load(vae, state_dict, "VQVAE")
    vae.eval().requires_grad_(False)
    return vae


def infer_var_config(state_dict: Dict[str, Any]) -> VARConfig:
    """Read the transformer's architecture from an official-layout state dict.

    depth = number of distinct block indices; width from pos_start; heads from the per-head temperatures; the scale
    schedule from the `lvl_1L` buffer (how many positions carry each scale id = pn²); classes from class_emb (one
    row is the null class); shared AdaLN (d36) from the presence of `shared_ada_lin`.
    """
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    width = state_dict["pos_start"].shape[-1]  # (1, 1, C)
    num_heads = state_dict["blocks.0.attn.scale_mul_1H11"].shape[1] if "blocks.0.attn.scale_mul_1H11" in \
        state_dict else width // 64
    level_L = state_dict["lvl_1L"].flatten() if "lvl_1L" in state_dict else None
    if level_L is None:
        raise CheckpointError("the VAR state dict has no 'lvl_1L' buffer, so its scale schedule is unknown")
    counts = torch.bincount(level_L).tolist()  # tokens per scale = pn²
    patch_nums = tuple(int(round(c ** 0.5)) for c in counts)
    if any(pn * pn != c for pn, c in zip(patch_nums, counts)):
        raise CheckpointError(f"'lvl_1L' gives non-square scale sizes {counts}")
    fc1 = state_dict["blocks.0.ffn.fc1.weight"].shape[0]
    return VARConfig(depth=depth, width=width, num_heads=num_heads, mlp_ratio=fc1 / width,
                     num_classes=state_dict["class_emb.weight"].shape[0] - 1,
                     vocab_size=state_dict["head.weight"].shape[0], code_dim=state_dict["word_embed.weight"].shape[1],
                     patch_nums=patch_nums, shared_aln="shared_ada_lin.1.weight" in state_dict,
                     attn_l2_norm="blocks.0.attn.scale_mul_1H11" in state_dict)


def load_official_var(path_or_state_dict, vae: VQVAE = None) -> VAR:
    """Build a VAR from an official-layout state dict (var_dN.pth) and load it strictly (buffers included)."""
    state_dict = read_file(path_or_state_dict)
    kind = kind_of_state_dict(state_dict)
    if kind != "var":
        hint = " It looks like the VQVAE tokenizer: load it with load_official_vqvae." if kind == "vqvae" else ""
        raise CheckpointError(f"this is not a VAR state dict (no class_emb/head keys).{hint}")
    var = VAR(infer_var_config(state_dict))
    strict_load(var, state_dict, "VAR")
    var.eval()  # inference by default; training scripts call .train() themselves
    if vae is not None:  # the pair must share the codebook and the scale schedule
        check_pair(var, vae)
    return var
