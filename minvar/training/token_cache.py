"""Pre-tokenized training data: encode a dataset with the frozen tokenizer once, then train VAR on the tokens.

VAR's stage 2 never changes the tokenizer (paper §3.2: the VQVAE is trained first, then frozen), so the K token
maps of an image (Algorithm 1) are the same at every step. The official trainer still encodes every batch on the
fly, which lets it draw a fresh random crop each epoch. On a small dataset the encoder (and, for the built-in
shapes, drawing the images) is a large share of a step; a cache pays it once.

What the cache holds: for every image and every augmentation view (the image as is, and its mirror image when
--hflip is on) the indices of all K scales, concatenated scale by scale (the order of `torch.cat(idx, dim=1)`) as
uint16 when the codebook has at most 65,536 codes. Image folders are encoded with the evaluation transform (the
centre crop): a cache cannot hold a fresh random crop per epoch; on-the-fly encoding keeps them.

It is keyed by a fingerprint of the tokenizer's weights and of the data (the built-in dataset's parameters and a few
of its pixels, or a folder's file list with sizes and modification times), so a changed tokenizer or folder is
rebuilt, never read stale. The cache can always be derived again, so an unreadable file (a copy cut short, a full
disk) is rebuilt too, with a one-line warning that names it, never a traceback.

Shape legend: N images, V_views augmentation views (1, or 2 with horizontal flips), L = Σ pn² tokens per image,
B batch.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os

import numpy as np
import torch
from tqdm import tqdm

from minvar.io.checkpoint import atomic_save
from minvar.io.official import CheckpointError, read_file
from minvar.io.data import ImageFolderDataset, dataset_fingerprint

TOKEN_CACHE_KIND = "minvar-token-cache"


def tokenizer_fingerprint(vae: torch.nn.Module) -> str:
    """SHA-256 of the tokenizer's scale schedule and every weight (name, dtype, shape and bytes)."""
    digest = hashlib.sha256(repr(tuple(vae.patch_nums)).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        value = tensor.detach().cpu().contiguous().reshape(-1)  # (numel,): 0-d buffers too
        digest.update(f"{name}|{value.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())  # the raw bytes, whatever the dtype
    return digest.hexdigest()


def data_fingerprint(dataset, hflip: bool) -> str:
    """SHA-256 of what decides the cached tokens' images: `minvar.io.data.dataset_fingerprint` (parameters and pixels
    of the built-in shapes; every file's path, size and modification time in a folder) and the views (flips).
    Other datasets cannot be fingerprinted: train those with on-the-fly encoding."""
    try:
        description = dataset_fingerprint(dataset)
    except TypeError as error:
        raise TypeError(f"a token cache needs a dataset it can fingerprint ({error}): encode on the fly instead") \
            from None
    description["hflip"] = bool(hflip)
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def deterministic_view(dataset):
    """The dataset as the cache encodes it: image folders with the centre crop and no flip; shapes as they are."""
    if isinstance(dataset, ImageFolderDataset):
        dataset = copy.copy(dataset)  # shallow: shares the file list, not the train / flip switches
        dataset.train, dataset.hflip = False, False
    return dataset


@torch.no_grad()
def encode_dataset(vae: torch.nn.Module, dataset, hflip: bool, batch_size: int = 64, progress: bool = True) -> dict:
    """Encode every image of `dataset` (and its mirror image when `hflip`) with Algorithm 1; return the cache dict.

    The dict: "tokens" (V_views, N, L) uint16 (int32 for codebooks over 65,536 codes), "labels" (N,) int64,
    "num_skipped" (unreadable files, each replaced by the next readable one, as ImageFolderDataset does),
    "patch_nums", "vocab_size", and the two fingerprints. Encoding runs on the tokenizer's device in fp32 and eval
    mode, as the on-the-fly path of train_var.py. Batch 64: the tiny tokenizer encodes 570-620 images per
    CPU-second at 64, 450-520 at 16 and 480-490 at 256 (1 thread).
    """
    device = next(vae.parameters()).device
    vocab_size = vae.quantize.vocab_size
    dtype = torch.uint16 if vocab_size <= 2 ** 16 else torch.int32
    source = deterministic_view(dataset)
    views = [False, True] if hflip else [False]
    tokens = [[] for _ in views]
    labels = []
    was_training = vae.training
    vae.eval()
    for start in tqdm(range(0, len(source), batch_size), desc="token cache", disable=not progress, dynamic_ncols=True):
        items = [source[i] for i in range(start, min(start + batch_size, len(source)))]
        images = torch.stack([image for image, _ in items]).to(device)  # (B, 3, H, W)
        labels.extend(label for _, label in items)
        for view_index, flip in enumerate(views):
            view = images.flip(-1) if flip else images  # a mirror image, as PIL's FLIP_LEFT_RIGHT
            idx = vae.img_to_idx(view)  # K LongTensors (B, pn²)
            tokens[view_index].append(torch.cat(idx, dim=1).cpu().to(dtype))  # (B, L)
    vae.train(was_training)
    return {"kind": TOKEN_CACHE_KIND, "num_skipped": getattr(source, "num_skipped", 0),
            "tokens": torch.stack([torch.cat(chunks) for chunks in tokens]),  # (V_views, N, L)
            "labels": torch.tensor(labels, dtype=torch.int64), "patch_nums": list(vae.patch_nums),
            "vocab_size": vocab_size, "tokenizer_fingerprint": tokenizer_fingerprint(vae),
            "data_fingerprint": data_fingerprint(dataset, hflip)}


def save_token_cache(cache: dict, path: str) -> None:
    """Write the cache atomically (temporary file, then rename), so a reader never sees half a file."""
    atomic_save(cache, path)


def load_token_cache(path: str, tokenizer_key: str, data_key: str, warn=None) -> dict | None:
    """The cache at `path` if it was built from this tokenizer and these data, else None (absent, unreadable or
    stale; `warn`, if given, receives one line that says which, except for an absent file)."""
    if not os.path.isfile(path):
        return None
    warn = warn or (lambda line: None)
    try:
        cache = read_file(path)  # weights_only, on the CPU; a truncated or foreign file is a CheckpointError
    except CheckpointError as error:
        warn(f"token cache: {path} is unreadable ({error}): rebuilding it")
        return None
    if cache.get("kind") != TOKEN_CACHE_KIND:
        warn(f"token cache: {path} is not a token cache: rebuilding it")
        return None
    if cache.get("tokenizer_fingerprint") != tokenizer_key or cache.get("data_fingerprint") != data_key:
        warn(f"token cache: {path} was encoded by another tokenizer or from other data: rebuilding it")
        return None
    return cache


def load_or_build_token_cache(path: str, vae: torch.nn.Module, dataset, hflip: bool, is_main: bool = True,
                              barrier=None, log=print, warn=print) -> dict:
    """The cache of this tokenizer and these data: read from `path` if fresh, else built and written there (`warn`
    says why an existing file is not used, `log` what is done).

    Under DistributedDataParallel only the main process builds and writes; `barrier` (e.g. torch.distributed.barrier)
    makes the others wait for the file, then every process reads it and checks both fingerprints itself. One
    writer, atomic writes: no process can read a half-written or another run's file.
    """
    keys = tokenizer_fingerprint(vae), data_fingerprint(dataset, hflip)
    cache = None
    if is_main:
        cache = load_token_cache(path, *keys, warn=warn)
        if cache is None:
            log(f"token cache: encoding {len(dataset)} images{' and their mirror images' if hflip else ''} "
                f"into {path}")
            cache = encode_dataset(vae, dataset, hflip)
            save_token_cache(cache, path)
        else:
            log(f"token cache: reusing {path} (same tokenizer and data)")
    if barrier is not None:
        barrier()
    if cache is None:
        cache = load_token_cache(path, *keys)
        if cache is None:
            raise RuntimeError(f"token cache {path} is missing or stale after the main process built it: is the "
                               f"run folder shared by every process?")
    return cache


class TokenDataset(torch.utils.data.Dataset):
    """The cached tokens as a dataset: item `index` is (tokens (L,) int64, label), like an image dataset's item.

    With two views (hflip), the view of item `index` in epoch `epoch` is drawn from a generator seeded by
    (seed, index, epoch), so it is reproducible on resume and in any process, as the image datasets' flips. The
    draw is not the image dataset's (that one also draws a crop first), so cached and on-the-fly runs with flips
    see different flips; without augmentation they see the same tokens.
    """

    def __init__(self, cache: dict, seed: int = 0):
        self.tokens, self.labels = cache["tokens"], cache["labels"]  # (V_views, N, L), (N,)
        self.num_views = self.tokens.shape[0]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose flips `__getitem__` draws (training.EpochIndexed calls it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.tokens.shape[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        view = 0
        if self.num_views > 1:
            view = int(np.random.default_rng([self.seed, index, self.epoch]).random() < 0.5)
        return self.tokens[view, index].long(), int(self.labels[index])  # (L,), label
