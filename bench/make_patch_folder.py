"""Cut a few large photos into a small real-image classification folder: one class per photo, 32 px patches.

minvar may not download data, so its real-data experiments need photos the user already has. This script turns any
handful of photos into the layout `train_tokenizer.py`, `train_var.py` and `evaluate.py` read (`train/<class>/` and
`val/<class>/` PNGs). Each photo is resized so its short side is `--short-side` pixels and made grey (with
`--colour` it keeps its three channels); training
patches come from its top three quarters and held-out patches from its bottom quarter, so no held-out pixel was
ever seen in training. Classes that share a texture (grass and gravel, say) make it harder than it looks.

The README's experiment used ten of the photos that ship inside the scikit-image wheel (`pip download --no-deps
scikit-image`, then unzip `skimage/data/`; nothing is installed): astronaut, brick, camera, chelsea, coffee, coins,
grass, gravel, moon, motorcycle_left.
    python bench/make_patch_folder.py --photos /tmp/skphotos/*.png --out /tmp/photos32
A colour folder (docs/results.md) from ten colour photos of the same wheel and matplotlib's
`mpl-data/sample_data/grace_hopper.jpg`:
    python bench/make_patch_folder.py --colour --photos astronaut.png chelsea.png ... --out /tmp/colour32
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def cut_patches(photo: Image.Image, count: int, size: int, rows: tuple[int, int], rng: np.random.Generator):
    """`count` random size×size crops whose rows lie within [rows[0], rows[1]) of the photo."""
    width = photo.width
    top_max = rows[1] - size
    if top_max < rows[0] or width < size:
        raise ValueError(f"a {width}×{rows[1] - rows[0]} region cannot hold a {size}×{size} patch; "
                         f"raise --short-side")
    tops = rng.integers(rows[0], top_max + 1, count)
    lefts = rng.integers(0, width - size + 1, count)
    return [photo.crop((int(x), int(y), int(x) + size, int(y) + size)) for x, y in zip(lefts, tops)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", nargs="+", required=True, help="photo files; each file's stem names a class")
    parser.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    parser.add_argument("--size", type=int, default=32, help="patch side in pixels")
    parser.add_argument("--short-side", type=int, default=192, help="each photo is resized to this short side")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--val-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--colour", action="store_true", help="keep the photos' colours (default: grey patches, "
                        "stored as RGB with three equal channels)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    for path in sorted(args.photos):
        try:
            photo = Image.open(path).convert("RGB" if args.colour else "L")
        except OSError as error:
            sys.exit(f"cannot read photo {path}: {error}")
        scale = args.short_side / min(photo.size)
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        split_row = photo.height * 3 // 4
        name = Path(path).stem
        for split, count, rows in (("train", args.train_per_class, (0, split_row)),
                                   ("val", args.val_per_class, (split_row, photo.height))):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, patch in enumerate(cut_patches(photo, count, args.size, rows, rng)):
                patch.convert("RGB").save(folder / f"{i:05d}.png")
        print(f"{name}: {args.train_per_class} train + {args.val_per_class} val patches from a "
              f"{photo.width}×{photo.height} {'colour' if args.colour else 'grey'} photo")


if __name__ == "__main__":
    main()
