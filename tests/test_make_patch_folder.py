"""bench/make_patch_folder.py: the real-image folders of docs/results.md (a 64×48 photo: milliseconds)."""
import pathlib

import numpy as np
from PIL import Image

from conftest import load_bench_script

make_patch_folder = load_bench_script("make_patch_folder")

HEIGHT, WIDTH, SIZE = 48, 64, 8


def row_coded_photo(path: pathlib.Path) -> None:
    """A photo whose red channel is the row index, green the column and blue a constant: every pixel says where it
    came from, and the three channels differ."""
    rows, columns = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")
    pixels = np.stack([rows * 4, columns * 3, np.full_like(rows, 200)], axis=-1).astype(np.uint8)  # (H, W, 3)
    Image.fromarray(pixels).save(path)


def patches(folder: pathlib.Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))])  # (N, S, S, 3)


def cut(tmp_path, *flags):
    photo = tmp_path / "coded.png"
    row_coded_photo(photo)
    out = tmp_path / ("colour" if flags else "grey")
    # short side = the photo's own, so no resampling blurs the row code
    make_patch_folder.main(["--photos", str(photo), "--out", str(out), "--size", str(SIZE), "--short-side",
                            str(HEIGHT), "--train-per-class", "40", "--val-per-class", "20", *flags])
    return patches(out / "train" / "coded"), patches(out / "val" / "coded")


def test_colour_keeps_three_channels_and_held_out_rows_stay_unseen(tmp_path):
    """--colour keeps the photo's pixels as they are (three different channels); held-out patches come only from
    the bottom quarter of rows and training patches only from the rows above it."""
    train, val = cut(tmp_path, "--colour")
    assert train.shape == (40, SIZE, SIZE, 3) and val.shape == (20, SIZE, SIZE, 3)
    assert (train[..., 2] == 200).all() and not np.array_equal(train[..., 0], train[..., 1])
    split_row = HEIGHT * 3 // 4
    assert (train[..., 0] // 4).max() < split_row <= (val[..., 0] // 4).min()
    # each patch is a crop: its red code grows by one row per pixel row, its green code by one column per column
    assert (np.diff(train[..., 0].astype(int), axis=1) == 4).all() and (np.diff(val[..., 1].astype(int), axis=2) == 3).all()


def test_grey_is_the_default(tmp_path):
    """Without --colour the patches are grey: three equal channels."""
    train, val = cut(tmp_path)
    for images in (train, val):
        assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
