"""Datasets and image I/O helpers for minvar.

Paper: the ImageNet class-conditional setting of Section 4 (implementation details); official `utils/data.py`.

Two datasets, both returning `(image, label)` with `image` a float32 tensor (3, H, W) in [-1, 1]:

* `ShapesDataset`: a built-in, file-free, class-conditional dataset (shape x colour) drawn procedurally with PIL.
  It lets the whole pipeline (tokenizer, VAR, sampling, evaluation with `minvar.evaluation.judge`) run on a CPU in
  minutes.
* `ImageFolderDataset`: real images, one sub-folder per class (ImageNet's `train/` layout) or one flat folder.
  Its transforms follow the official VAR `utils/data.py`: resize the shorter side to round(1.125 * image_size)
  with LANCZOS, RandomCrop (training) or CenterCrop (evaluation), optional horizontal flip, then `x * 2 - 1`.

Augmentation randomness comes from a generator seeded by (seed, index, epoch), never from the global RNG, so the
same run resumed from a checkpoint sees exactly the same crops, in any DataLoader worker.

Shape legend: B batch, H, W image height and width, 3 RGB channels.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
HELD_OUT_SEED_OFFSET = 1_000_003  # build_dataset(train=False) uses seed + this, far from any training seed
# Shapes that differ at the coarse token scales. At 32 px the tokenizer's finest map is 8x8, so a shape whose
# identity lives in details smaller than ~5 px is decided only by the last scale's 64 independently sampled tokens.
# Measured with a star and a plus in place of the bar and the ring: judge accuracy on reconstructions from the first
# 5 of 6 scales was 0% for stars and 10-35% for pluses, and a 1500-step VAR drew recognisable stars in 4% of samples.
# With this set and its own tokenizer: bars 95-100%, rings 75-85%. See docs/results.md#presets.
SHAPES = ["circle", "square", "triangle", "bar", "ring"]
RING_HOLE = 0.5  # inner radius of the ring, as a fraction of its outer radius
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 225)}  # mean RGB of each colour class
SUPERSAMPLE = 4  # shapes are drawn at 4x resolution and LANCZOS-downsampled, which gives smooth anti-aliased edges
# Shapes stand upright (a square's sides level, a triangle's apex up), tilted by at most this many degrees. Pose is
# what a 10-minute CPU model learns worst: at the quickstart's defaults the judge recognised 97.5% of samples with
# this limit and 68.8% with any rotation (180; docs/results.md#presets). 180 makes a harder dataset for
# longer runs; the judge is trained on whichever is set.
MAX_TILT_DEGREES = 30


class DataError(ValueError):
    """A dataset cannot be built or read; the message says what was wrong and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Built-in procedural dataset


def _shape_outline(shape: str) -> np.ndarray:
    """The polygon of `shape` with circumradius 1 around the origin, as (N, 2) points.

    Every shape is a polygon (a circle is a 48-gon, a ring is a circle with a hole, see RING_HOLE), so drawing,
    rotation and scaling are the same code for all.
    """
    if shape in ("circle", "ring"):
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (48, 2)
    if shape in ("square", "triangle"):  # y points down: first corner at 45° = a level square, at -90° = apex up
        corners, first = (4, np.pi / 4) if shape == "square" else (3, -np.pi / 2)
        angles = np.linspace(0, 2 * np.pi, corners, endpoint=False) + first
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (corners, 2)
    # bar: a 2.3:1 rectangle of half-height a whose corners touch the unit circle, so its extent matches the others
    a = 0.4
    b = math.sqrt(1 - a * a)
    return np.array([(b, a), (b, -a), (-b, -a), (-b, a)])  # (4, 2)


class ShapesDataset(torch.utils.data.Dataset):
    """Procedural class-conditional images: one coloured shape on a light or dark background.

    Classes are every (colour, shape) pair, e.g. "red circle", 15 in all. Item `index` is a pure function of
    (seed, index): its own numpy generator draws the background, position, size (65-90% of the side), tilt and
    colour jitter, so any order of access and any worker process gives the same image. Labels cycle through the
    classes (`index % num_classes`), so every prefix of the dataset is class-balanced. Held-out data is another seed.
    """

    def __init__(self, num_images: int, image_size: int = 32, seed: int = 0):
        self.num_images, self.image_size, self.seed = num_images, image_size, seed
        self.classes = [(colour, shape) for colour in COLOURS for shape in SHAPES]
        self.class_names = [f"{colour} {shape}" for colour, shape in self.classes]
        self.num_classes = len(self.classes)
        self.outlines = {shape: _shape_outline(shape) for shape in SHAPES}
        # pixel-centre coordinates in [-1, 1], reused by every item for the background gradient
        axis = np.linspace(-1, 1, image_size)
        self.grid_y, self.grid_x = np.meshgrid(axis, axis, indexing="ij")  # (H, W) each

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, index])  # the item's own generator: order- and worker-independent
        label = index % self.num_classes
        colour, shape = self.classes[label]
        size = self.image_size

        # 1. background: light or dark grey with a faint tint and a gentle linear gradient in a random direction
        level = rng.uniform(170, 235) if rng.random() < 0.5 else rng.uniform(15, 75)
        tint = rng.uniform(-8, 8, size=3)
        direction = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(direction) * self.grid_x + np.sin(direction) * self.grid_y  # (H, W) in [-1.4, 1.4]
        background = level + tint + rng.uniform(0, 15) * ramp[..., None]  # (H, W, 3)

        # 2. shape mask: rotate, scale and place the outline, fill it at 4x resolution, LANCZOS down to (H, W).
        # Shapes are large: at 32 px a tokenizer with an 8x8 latent blurs small shapes into blobs (measured with
        # stars: below 40% of the side, the judge recognised 42% of reconstructions; above 40%, 94%).
        # 65-90% rather than 55-85% of the side: 97.5% of the quickstart's samples recognised instead of 90.0%.
        radius = rng.uniform(0.65, 0.9) * size / 2  # circumradius in pixels: the shape spans 65-90% of the side
        centre = rng.uniform(radius, size - radius, size=2)  # keep the whole shape inside the image
        angle = np.radians(rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = (self.outlines[shape] @ rotation.T * radius + centre) * SUPERSAMPLE  # (N, 2) in 4x pixels
        canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
        draw = ImageDraw.Draw(canvas)
        draw.polygon([tuple(point) for point in points], fill=255)
        if shape == "ring":  # punch the hole: the same circle, RING_HOLE times smaller, around the same centre
            hole = (self.outlines[shape] @ rotation.T * radius * RING_HOLE + centre) * SUPERSAMPLE  # (48, 2)
            draw.polygon([tuple(point) for point in hole], fill=0)
        alpha = np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.float64)[..., None] / 255  # (H, W, 1)

        # 3. composite a slightly jittered colour over the background; +-25 per channel never confuses red/green/blue
        fill = np.array(COLOURS[colour]) + rng.uniform(-25, 25, size=3)
        pixels = background * (1 - alpha) + fill * alpha  # (H, W, 3)
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)  # quantise like a real 8-bit image
        return from_uint8_images(pixels), label


# ----------------------------------------------------------------------------------------------------------------
# Image folders


def _is_visible(path: Path, root: Path) -> bool:
    """False for anything under a hidden file or folder (".DS_Store", ".ipynb_checkpoints/", ...)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _find_images(folder: Path, recursive: bool) -> list[Path]:
    """Sorted image files in `folder` (and its sub-folders if `recursive`), matched by case-insensitive extension."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and _is_visible(p, folder))


def load_rgb(path: Path) -> Image.Image:
    """Open any image as RGB; transparent pixels are composited on white rather than showing their stored colour.

    `convert("RGB")` forces a full decode, so truncated files fail here, inside the caller's `try`.
    """
    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return image.convert("RGB")


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images from `root`: one sub-folder per class (sorted names give ids 0..N-1), or a flat folder = one class.

    Sub-folders are searched recursively and sub-folders without images are ignored. A corrupt or unreadable
    file never stops a run: it is reported with `warnings.warn`, remembered in `bad_paths`, counted in `num_skipped`
    (one per substitution) and replaced by the next readable item. With DataLoader workers these two attributes
    live in each worker process; the warnings still reach the log.
    """

    def __init__(self, root: str | Path, image_size: int, train: bool = True, hflip: bool = False, seed: int = 0):
        root = Path(root).expanduser()
        hint = ("pass a folder with one sub-folder of images per class (ImageNet's train/ layout) or a flat folder of "
                "images, or leave the data path unset to use the built-in shapes dataset")
        if not root.exists():
            raise DataError(f"data folder {root} does not exist; {hint}")
        if not root.is_dir():
            raise DataError(f"data path {root} is a file, not a folder; {hint}")
        class_folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        per_class = [(folder.name, _find_images(folder, recursive=True)) for folder in class_folders]
        per_class = [(name, paths) for name, paths in per_class if paths]
        if not per_class:  # no class sub-folders with images: the folder itself is one class
            flat_images = _find_images(root, recursive=False)
            if not flat_images:
                raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {root} or its "
                                f"sub-folders; {hint}")
            per_class = [(root.name, flat_images)]
        self.class_names = [name for name, _ in per_class]
        self.num_classes = len(self.class_names)
        self.samples = [(path, label) for label, (_, paths) in enumerate(per_class) for path in paths]
        self.root, self.image_size, self.train, self.hflip, self.seed = root, image_size, train, hflip, seed
        self.resize_to = round(image_size * 1.125)  # official VAR: mid_reso = 1.125, e.g. 288 for 256 px
        self.epoch = 0
        self.num_skipped = 0
        self.bad_paths: set[Path] = set()

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops and flips `__getitem__` draws; call it before each epoch for fresh ones."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def transform(self, image: Image.Image, index: int) -> torch.Tensor:
        """Resize the shorter side, crop (random for training, centre for evaluation), maybe flip; to [-1, 1]."""
        width, height = image.size
        short, long = self.resize_to, int(self.resize_to * max(width, height) / min(width, height))  # as torchvision
        new_size = (short, long) if width <= height else (long, short)
        image = image.resize(new_size, Image.LANCZOS)  # shorter side = round(1.125 * image_size)
        width, height = new_size
        crop = self.image_size
        if self.train:
            rng = np.random.default_rng([self.seed, index, self.epoch])  # reproducible, resumable augmentation
            top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
            flip = self.hflip and rng.random() < 0.5
        else:
            top, left = int(round((height - crop) / 2)), int(round((width - crop) / 2))  # torchvision CenterCrop
            flip = False
        image = image.crop((left, top, left + crop, top + crop))  # (crop, crop) image
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return from_uint8_images(np.array(image))  # (3, H, W)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # Walk forward from `index` (wrapping) until a file reads; files already known to be bad are passed over.
        for offset in range(len(self.samples)):
            current = (index + offset) % len(self.samples)
            path, label = self.samples[current]
            if path in self.bad_paths:
                continue
            try:
                image = load_rgb(path)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                # PIL reports damage as OSError (unreadable, truncated), SyntaxError (broken PNG chunks) or ValueError
                warnings.warn(f"skipping unreadable image {path}: {error}", stacklevel=2)
                self.bad_paths.add(path)
                continue
            if offset:
                self.num_skipped += 1
            return self.transform(image, current), label
        raise DataError(f"none of the {len(self.samples)} images under {self.root} could be read; check the files")


def dataset_fingerprint(dataset) -> dict:
    """What decides a dataset's images, small enough to store in a file and to print. Any change that could change
    an image gives another fingerprint; the token cache (`minvar/training/token_cache.py`) and the judge
    (`evaluate.py`) use it to refuse what was made from other data.

    Built-in shapes: its parameters and a hash of its first images' pixels (so a change to the drawing code counts).
    Image folders: the sizes, the classes and a hash of the listing (each file's path relative to the folder, label,
    size in bytes and modification time), so an added, removed, replaced or edited image counts.
    """
    if isinstance(dataset, ShapesDataset):
        first = hashlib.sha256(b"".join(dataset[i][0].numpy().tobytes() for i in range(min(4, len(dataset)))))
        return {"kind": "shapes", "num_images": dataset.num_images, "image_size": dataset.image_size,
                "seed": dataset.seed, "classes": list(dataset.class_names), "first_pixels": first.hexdigest()}
    if isinstance(dataset, ImageFolderDataset):
        listing = hashlib.sha256()
        for path, label in dataset.samples:
            stat = os.stat(path)
            listing.update(f"{Path(path).relative_to(dataset.root)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
                           .encode())
        return {"kind": "folder", "root": os.path.abspath(dataset.root), "image_size": dataset.image_size,
                "resize_to": dataset.resize_to, "classes": list(dataset.class_names), "files": len(dataset.samples),
                "listing_sha256": listing.hexdigest()}
    raise TypeError(f"cannot fingerprint a {type(dataset).__name__}: only ShapesDataset and ImageFolderDataset")


def build_dataset(data_path: str | None, image_size: int, train: bool, num_images: int = 10_000, seed: int = 0,
                  hflip: bool = False) -> ShapesDataset | ImageFolderDataset:
    """The dataset a script asks for: the built-in shapes when `data_path` is None, else an image folder.

    Shapes: `num_images` items from `seed` for training, from `seed + HELD_OUT_SEED_OFFSET` for evaluation.
    Folders: if `data_path` holds both `train/` and `val/` (the official VAR layout), the split picks one;
    otherwise training and evaluation read the same folder, with random versus centre crops.
    """
    if data_path is None:
        return ShapesDataset(num_images, image_size, seed if train else seed + HELD_OUT_SEED_OFFSET)
    root = Path(data_path).expanduser()
    if (root / "train").is_dir() and (root / "val").is_dir():
        root = root / ("train" if train else "val")
    return ImageFolderDataset(root, image_size, train=train, hflip=hflip and train, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Image I/O helpers


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [-1, 1] -> (B, H, W, 3) uint8, rounding to the nearest level as torchvision does."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, H, W)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)


def from_uint8_images(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3), or one (H, W, 3), -> float32 (B, 3, H, W), or (3, H, W), in [-1, 1].

    The inverse of `to_uint8_images`, and official VAR's `ToTensor` (x / 255) then `x * 2 - 1` (the same floats).
    """
    pixels = torch.as_tensor(pixels)
    if pixels.dtype != torch.uint8 or pixels.ndim not in (3, 4) or pixels.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (H, W, 3) or (B, H, W, 3), got {pixels.dtype} of shape "
                         f"{tuple(pixels.shape)}")
    return pixels.movedim(-1, -3).float() / 127.5 - 1.0  # channels first: (..., 3, H, W)


def _wrap_words(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of `text` into lines no wider than `width` pixels (a single long word is left to clip)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def save_image_grid(images: torch.Tensor | list[torch.Tensor], path: str | Path, nrow: int = 8,
                    labels: list[str] | None = None, padding: int = 2) -> None:
    """Write images in [-1, 1] as a PNG grid with `nrow` images per row (as torchvision's `make_grid`).

    `images` is (B, 3, H, W) or a list of (3, H, W). `labels`, one string per image, are printed in a white caption
    strip under each image, word-wrapped to its width (small images clip long words).
    """
    if isinstance(images, (list, tuple)):
        images = torch.stack(list(images))  # (B, 3, H, W)
    pixels = to_uint8_images(images)  # (B, H, W, 3)
    count, height, width, _ = pixels.shape
    if labels is not None and len(labels) != count:
        raise ValueError(f"got {len(labels)} labels for {count} images")
    font = ImageFont.load_default()
    line_height = 11  # the default font is about 11 px tall
    captions = [_wrap_words(str(label), font, width) for label in labels] if labels is not None else []
    caption_height = max(len(lines) for lines in captions) * line_height + 1 if captions else 0
    columns, rows = min(nrow, count), math.ceil(count / nrow)
    cell_width, cell_height = width + padding, height + caption_height + padding
    grid = Image.new("RGB", (columns * cell_width + padding, rows * cell_height + padding), (255, 255, 255))
    for i in range(count):
        left, top = padding + (i % nrow) * cell_width, padding + (i // nrow) * cell_height
        grid.paste(Image.fromarray(pixels[i]), (left, top))
        if captions:  # drawn on its own strip, so a long word is clipped instead of spilling onto the neighbour
            strip = Image.new("RGB", (width, caption_height), (255, 255, 255))
            for line_index, line in enumerate(captions[i]):
                ImageDraw.Draw(strip).text((0, line_index * line_height), line, fill=(0, 0, 0), font=font)
            grid.paste(strip, (left, top + height))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
