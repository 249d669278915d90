"""Generation and zero-shot editing with VAR: KV-cached, scale by scale, with classifier-free guidance.

Paper: Tian et al., "Visual Autoregressive Modeling", Algorithm/Figure 4 (inference with KV cache), Section 4 (CFG,
top-k/top-p sampling) and Section 5 / Figure 8 (zero-shot in-painting, out-painting, class-conditional editing).
Official counterpart: `VAR.autoregressive_infer_cfg` (models/var.py), `sample_with_top_k_top_p_` and
`gumbel_softmax_with_rng` (models/helpers.py), and `autoregressive_infer_cfg_with_mask` / `get_edit_mask` /
`replace_embedding` (demo_zero_shot_edit.ipynb).

One generation is K transformer calls, one per scale. At scale k the model sees only scale k's inputs; the
coarser scales are in the KV cache. The sampled tokens are added into the running reconstruction f̂ (with the
tokenizer's Φ), and f̂ downsampled to the next scale is the next input.

Shape legend: B batch, K number of scales, k scale index, pn side of scale k's map, l = pn², L = Σ pn², C width,
Cvae codebook dim, V codebook size, h = w latent side, H = W image side, D = C the class condition's width.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from minvar.var import VAR

Labels = Union[int, Sequence[int], torch.Tensor, None]


def resolve_labels(var, labels: Labels, num_samples: Optional[int], device, generator) -> torch.Tensor:
    """Turn the user's labels into a (B,) LongTensor, with clear errors.

    A sequence or tensor gives one class per sample; an int is repeated `num_samples` times (a negative int means
    the null class, as the official code); None draws uniformly random classes with the sampling generator.
    """
    if labels is None:
        if not num_samples:
            raise ValueError("labels=None draws random classes: also pass num_samples")
        return torch.randint(0, var.num_classes, (num_samples,), generator=generator, device=device)
    if isinstance(labels, int):
        if not num_samples:
            raise ValueError("an int label is repeated num_samples times: also pass num_samples")
        labels = [var.num_classes if labels < 0 else labels] * num_samples
    label_B = torch.as_tensor(labels, device=device).long().reshape(-1)
    if label_B.numel() == 0:
        raise ValueError("no labels given: pass at least one class id")
    VAR.check_labels(label_B, var.num_classes)
    return label_B


def make_generator(seed: Optional[int], device) -> Optional[torch.Generator]:
    """A private RNG for one call, so that the same seed gives the same samples on a device (None: global RNG)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask, IN PLACE, the logits outside the top-k and outside the nucleus of mass top_p (official helpers.py).

    top-k keeps ties at the k-th value; top-p removes the tokens whose cumulative probability counted from the
    least likely is ≤ 1 - top_p, always keeping the most likely. The in-place masking matters: the optional Gumbel
    smoothing afterwards sees the masked logits, as in the official code.
    """
    V = logits_BlV.shape[-1]
    if 0 < top_k < V:
        kth_Bl1 = logits_BlV.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth_Bl1, float("-inf"))
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)  # (B, l, V) ascending
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)  # (B, l, V)
        remove_sorted[..., -1:] = False  # never remove the most likely token
        logits_BlV.masked_fill_(remove_sorted.scatter(-1, sorted_idx, remove_sorted), float("-inf"))
    return logits_BlV


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Soft Gumbel-softmax sample whose noise comes from `generator` (F.gumbel_softmax takes no generator)."""
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()  # Gumbel(0, 1) noise
    return ((logits + gumbels) / tau).softmax(dim=-1)


def scale_keep_mask(keep_mask_Bhw: torch.Tensor, pn: int) -> torch.Tensor:
    """The keep-mask of one scale: bilinear resize of the last-scale mask, then > 0.5 (the official edit demo).

    At scales of at most 3 tokens (the 1×1 scale) everything is kept. Returns (B, pn², 1) float in {0, 1}.
    """
    B = keep_mask_Bhw.shape[0]
    if pn * pn <= 3:
        return keep_mask_Bhw.new_ones(B, pn * pn, 1)
    resized = F.interpolate(keep_mask_Bhw[:, None].float(), size=(pn, pn), mode="bilinear", align_corners=False)
    return resized.gt(0.5).float().view(B, pn * pn, 1)  # (B, l, 1), row-major like the tokens


@torch.no_grad()
def sample_scales(var, vae, label_B: torch.Tensor, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
                  generator: Optional[torch.Generator] = None, more_smooth: bool = False,
                  forced_idx: Optional[List[torch.Tensor]] = None, keep_mask_Bhw: Optional[torch.Tensor] = None):
    """The generation loop shared by `generate` and `edit`. Returns (f̂, sampled tokens per scale, f̂ per scale).

    With `forced_idx` and `keep_mask_Bhw` (editing), after sampling each scale the code vectors under the keep-mask
    are replaced by those of `forced_idx` BEFORE they enter f̂, so every later scale is conditioned on the known
    content (the official edit demo). The returned tokens are those f̂ is made of: the source's under the mask.
    """
    B, K = label_B.shape[0], var.num_scales
    quantizer = vae.quantize
    size = var.patch_nums[-1]
    null_B = torch.full_like(label_B, var.num_classes)
    # NOTE (differs from official VAR): with cfg = 0 the unconditional half would be multiplied by 0, so it is not
    # computed at all (the official sampler always runs both halves); the tokens are the same, at half the cost.
    guided = cfg != 0
    cond_2BD = var.class_emb(torch.cat((label_B, null_B)) if guided else label_B)  # (2B or B, C): conditional, then null
    x_2BlC = var.embed_start(cond_2BD)  # (2B, 1, C) the first scale's input is the class token alone
    f_hat = torch.zeros(B, quantizer.code_dim, size, size, device=label_B.device)  # (B, Cvae, h, w)
    kv_caches = [dict() for _ in var.blocks]
    tokens, f_hats = [], []
    for k, pn in enumerate(var.patch_nums):
        ratio = k / (K - 1) if K > 1 else 1.0
        logits_2BlV = var.forward_scale(x_2BlC, cond_2BD, kv_caches)
        # Classifier-free guidance with the official linear ramp: t = cfg·k/(K-1), so the 1×1 scale is unguided
        # and the last scale uses the familiar weight w = 1 + cfg.
        t = cfg * ratio
        logits_BlV = (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:] if guided else logits_2BlV  # (B, l, V)
        top_k_top_p_(logits_BlV, top_k, top_p)
        probs_NV = logits_BlV.softmax(dim=-1).view(-1, logits_BlV.shape[-1])  # (B*l, V)
        idx_Bl = torch.multinomial(probs_NV, 1, replacement=True, generator=generator).view(B, pn * pn)
        if more_smooth:  # soft code vectors: a Gumbel-softmax mixture, sharper at finer scales (official)
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            h_BlC = gumbel_softmax(logits_BlV.mul(1 + ratio), tau, generator) @ quantizer.embedding.weight  # (B, l, Cvae)
        else:
            h_BlC = quantizer.embedding(idx_Bl)  # (B, l, Cvae)
        if forced_idx is not None:  # editing: keep the source image's codes under the mask
            keep_Bl1 = scale_keep_mask(keep_mask_Bhw, pn)
            h_BlC = quantizer.embedding(forced_idx[k]) * keep_Bl1 + h_BlC * (1 - keep_Bl1)
            idx_Bl = torch.where(keep_Bl1[..., 0].bool(), forced_idx[k], idx_Bl)  # the tokens f̂ is made of
        f_hat, next_BlCv = quantizer.next_scale_input(k, f_hat, h_BlC)  # both halves share the conditional f̂
        tokens.append(idx_Bl)
        f_hats.append(f_hat)
        if k < K - 1:
            x_2BlC = var.embed_scale_input(k + 1, next_BlCv).repeat(1 + guided, 1, 1)  # (2B, l_next, C)
    return f_hat, tokens, f_hats


@torch.no_grad()
def generate(var, vae, labels: Labels, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
             seed: Optional[int] = None, more_smooth: bool = False, num_samples: Optional[int] = None,
             return_tokens: bool = False):
    """Class-conditional generation: labels -> images (B, 3, H, W) in [0, 1].

    `labels`: class ids (a list or tensor), an int repeated `num_samples` times, or None for random classes.
    `cfg`: guidance strength (official FID setting 1.5, demo 4). `top_k=1` is greedy decoding. `seed` makes the
    output reproducible on a device. With `return_tokens`, also returns the K sampled token maps (B, pn²).
    """
    check_pair(var, vae)
    device = var.pos_start.device
    generator = make_generator(seed, device)
    label_B = resolve_labels(var, labels, num_samples, device, generator)
    f_hat, tokens, _ = sample_scales(var, vae, label_B, cfg, top_k, top_p, generator, more_smooth)
    images = vae.fhat_to_img(f_hat).add(1).mul(0.5)  # [-1, 1] -> [0, 1]
    return (images, tokens) if return_tokens else images


def box_keep_mask(size: int, box: Sequence[float], mode: str = "inpaint") -> torch.Tensor:
    """A (size, size) keep-mask from a box (y0, x0, y1, x1) in fractions of the image (official `get_edit_mask`).

    mode "inpaint": keep outside the box and regenerate inside it; "outpaint": keep inside, regenerate outside.
    1 means "keep the source image's token".
    """
    y0, x0, y1, x1 = box
    if not (0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1):
        raise ValueError(f"box must be (y0, x0, y1, x1) with 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1, got {box}")
    inside = torch.zeros(size, size)
    inside[round(y0 * size):round(y1 * size), round(x0 * size):round(x1 * size)] = 1
    if mode == "inpaint":
        return 1 - inside
    if mode == "outpaint":
        return inside
    raise ValueError(f"mode must be 'inpaint' or 'outpaint', got {mode!r}")


@torch.no_grad()
def edit(var, vae, image: torch.Tensor, keep_mask: torch.Tensor, label: Labels = None, cfg: float = 1.5,
         top_k: int = 0, top_p: float = 0.0, seed: Optional[int] = None, more_smooth: bool = False,
         return_tokens: bool = False):
    """Zero-shot editing: regenerate the parts of `image` outside `keep_mask`, keep the rest token for token.

    `image`: (B, 3, H, W) in [-1, 1] (the tokenizer's range). `keep_mask`: (h, w) or (B, h, w), 1 = keep; at the
    last scale's token grid or any other size (it is area-resized to that grid first). `label`: None (or the null
    class) for plain in/out-painting; a class id regenerates the region as that class (class-conditional editing).
    Returns images in [0, 1].
    """
    check_pair(var, vae)
    device = var.pos_start.device
    if image.ndim == 3:
        image = image[None]
    B, size = image.shape[0], var.patch_nums[-1]
    source_idx = vae.img_to_idx(image.to(device))  # the source image's tokens at every scale (Algorithm 1)
    keep = torch.as_tensor(keep_mask, dtype=torch.float32, device=device)
    keep = keep.expand(B, *keep.shape[-2:]) if keep.ndim == 2 else keep  # (B, h', w')
    if keep.ndim != 3 or keep.shape[0] != B:
        raise ValueError(f"keep_mask must be (h, w) or (B, h, w) with B = {B}, got {tuple(keep_mask.shape)}")
    if keep.shape[-2:] != (size, size):
        keep = F.interpolate(keep[:, None], size=(size, size), mode="area")[:, 0]  # (B, h, w) share of kept pixels
    label = var.num_classes if label is None else label
    generator = make_generator(seed, device)
    label_B = resolve_labels(var, label, B, device, generator)
    f_hat, tokens, _ = sample_scales(var, vae, label_B, cfg, top_k, top_p, generator, more_smooth,
                                     forced_idx=source_idx, keep_mask_Bhw=keep)
    images = vae.fhat_to_img(f_hat).add(1).mul(0.5)
    return (images, tokens) if return_tokens else images


def check_pair(var, vae) -> None:
    """A transformer only works with the tokenizer it was trained on: same codebook size, code dim and scales."""
    quantizer = vae.quantize
    if var.config.vocab_size != quantizer.vocab_size or var.config.code_dim != quantizer.code_dim:
        raise ValueError(f"VAR expects a codebook of {var.config.vocab_size}×{var.config.code_dim} but the VQVAE has "
                         f"{quantizer.vocab_size}×{quantizer.code_dim}: use the tokenizer the VAR was trained with")
    if tuple(var.patch_nums) != tuple(quantizer.patch_nums):
        raise ValueError(f"VAR scale schedule {var.patch_nums} differs from the VQVAE's {quantizer.patch_nums}; "
                         f"build the VQVAE with patch_nums={var.patch_nums} (e.g. load_official_vqvae(path, "
                         f"patch_nums=...)) for the 512px model")
