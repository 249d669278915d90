"""Tests for minvar/io/data.py: the built-in shapes dataset, image folders, and the image I/O helpers."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from minvar.io.data import (MAX_TILT_DEGREES, DataError, ImageFolderDataset, ShapesDataset, build_dataset,
                         dataset_fingerprint,
                         from_uint8_images, save_image_grid, to_uint8_images)


def write_png(path, size=(40, 30), seed=0, mode="RGB"):
    """A small noise image (so every crop differs) saved at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# ShapesDataset


def test_shapes_items_depend_only_on_seed_and_index():
    """Item i is a pure function of (seed, i): the same in any access order or dataset instance (hence in any
    DataLoader worker), and different for another index or another seed (held-out data is another seed)."""
    dataset = ShapesDataset(50, image_size=32, seed=3)
    backwards = {i: dataset[i][0] for i in reversed(range(10))}
    fresh = ShapesDataset(50, image_size=32, seed=3)
    for i in range(10):
        assert torch.equal(fresh[i][0], backwards[i])
    assert not torch.equal(dataset[0][0], dataset[dataset.num_classes][0])  # same class, another image
    assert not torch.equal(dataset[0][0], ShapesDataset(50, image_size=32, seed=4)[0][0])


def test_shapes_items_have_image_shape_and_range():
    """Images are float32 (3, H, W) in [-1, 1] and use that range (not a constant or a [0, 1] image)."""
    for size in (32, 64):
        image, label = ShapesDataset(5, image_size=size)[2]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1 and image.max() - image.min() > 1.0
        assert isinstance(label, int)


def test_shapes_cover_every_class_with_matching_names():
    """Every class appears and labels index `class_names` (15 unique shape x colour names)."""
    dataset = ShapesDataset(60, image_size=32)
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert dataset.num_classes == len(dataset.class_names) == len(set(dataset.class_names)) == 15
    assert set(labels) == set(range(dataset.num_classes))


def test_shapes_colour_is_recoverable_from_pixels():
    """The colour named by the label is the dominant channel of the strongly coloured pixels: colour jitter and the
    tinted background never make a red shape look green or blue."""
    dataset = ShapesDataset(90, image_size=32, seed=7)
    for i in range(len(dataset)):
        image, label = dataset[i]
        saturation = image.max(dim=0).values - image.min(dim=0).values  # (H, W); the grey background is below 0.2
        shape_pixels = image[:, saturation > 0.6]  # (3, n) fully covered shape pixels
        assert shape_pixels.shape[1] > 10, "the shape should cover a visible area"
        colour = dataset.class_names[label].split()[0]
        assert ["red", "green", "blue"][shape_pixels.mean(dim=1).argmax()] == colour



def shape_mask(image: torch.Tensor) -> np.ndarray:
    """(H, W) bool: the strongly coloured pixels, i.e. the shape (the background is grey)."""
    return (image.max(dim=0).values - image.min(dim=0).values > 0.6).numpy()


def test_shapes_stand_upright_within_the_tilt_limit():
    """A bar's long axis is within MAX_TILT_DEGREES of level, and a triangle's apex points up (no more of its area
    above its bounding box's middle than below). Both fail for shapes drawn at any rotation (MAX_TILT_DEGREES 180)."""
    dataset = ShapesDataset(150, image_size=32, seed=3)
    for i in range(len(dataset)):
        image, label = dataset[i]
        shape = dataset.class_names[label].split()[1]
        ys, xs = np.nonzero(shape_mask(image))
        if shape == "bar":  # the principal axis of the pixel cloud
            covariance = np.cov(np.stack([xs, ys]))
            eigenvalues, eigenvectors = np.linalg.eigh(covariance)
            axis = eigenvectors[:, -1]  # the long axis
            tilt = np.degrees(np.arctan2(abs(axis[1]), abs(axis[0])))
            assert tilt <= MAX_TILT_DEGREES + 6, f"item {i}: bar tilted {tilt:.0f} degrees"
        if shape == "triangle":  # tilted the full 30 degrees, one side is vertical and the two are equal
            middle = (ys.min() + ys.max()) / 2
            assert ys.mean() > middle - 0.5, f"item {i}: the triangle's area lies above its middle (apex down)"

# ---------------------------------------------------------------------------------------------------------------
# ImageFolderDataset


def test_class_subfolders_give_sorted_class_ids(tmp_path):
    """Sub-folders sorted by name are classes 0..N-1; extensions match case-insensitively; non-images, hidden and
    empty folders are ignored; items come out as (3, S, S) in [-1, 1]."""
    write_png(tmp_path / "dogs" / "a.png")
    write_png(tmp_path / "cats" / "b.PNG")
    write_png(tmp_path / "cats" / "nested" / "c.png")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    write_png(tmp_path / ".ipynb_checkpoints" / "d.png")
    (tmp_path / "empty").mkdir()
    dataset = ImageFolderDataset(tmp_path, image_size=16, train=False)
    assert dataset.class_names == ["cats", "dogs"] and dataset.num_classes == 2
    assert [label for _, label in dataset.samples] == [0, 0, 1]
    image, label = dataset[2]
    assert image.shape == (3, 16, 16) and label == 1 and -1 <= image.min() and image.max() <= 1


def test_flat_folder_is_one_class_named_after_it(tmp_path):
    """A folder of images without class sub-folders is one class named after the folder."""
    for i in range(3):
        write_png(tmp_path / "flowers" / f"{i}.jpg", seed=i)
    dataset = ImageFolderDataset(tmp_path / "flowers", image_size=16)
    assert dataset.class_names == ["flowers"] and len(dataset) == 3
    assert {dataset[i][1] for i in range(3)} == {0}


@pytest.mark.parametrize("make_path, message", [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: write_png(root / "single.png"), "is a file"),
    (lambda root: root, "no images"),
])
def test_unusable_data_path_raises_a_helpful_error(tmp_path, make_path, message):
    """A missing folder, a file, or a folder without images is a DataError (a ValueError) that names the path,
    says what was wrong and suggests what to pass instead."""
    (tmp_path / "no_images_here").mkdir()
    path = make_path(tmp_path)
    with pytest.raises(DataError, match=message) as error:
        ImageFolderDataset(path, image_size=16)
    assert isinstance(error.value, ValueError)
    assert str(path) in str(error.value) and "sub-folder" in str(error.value)


def test_corrupt_image_is_skipped_with_a_warning(tmp_path):
    """A file that is not a readable image is replaced by the next readable one, with a warning naming the file,
    and is counted; the run goes on."""
    write_png(tmp_path / "a" / "0.png", seed=0)
    bad = tmp_path / "a" / "1.png"
    bad.write_bytes(b"definitely not a png" * 10)
    write_png(tmp_path / "a" / "2.png", seed=2)
    dataset = ImageFolderDataset(tmp_path, image_size=16, train=False)
    with pytest.warns(UserWarning, match="1.png"):
        image, _ = dataset[1]
    assert torch.equal(image, dataset[2][0])
    assert dataset.num_skipped == 1 and dataset.bad_paths == {bad}


def test_all_images_unreadable_raises(tmp_path):
    """When no file can be read the dataset raises DataError instead of looping forever."""
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(b"garbage")
    dataset = ImageFolderDataset(tmp_path, image_size=16)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="could be read"):
        dataset[0]


def test_grayscale_palette_and_transparent_images_become_rgb(tmp_path):
    """Grayscale, palette and RGBA files load as 3-channel images; fully transparent pixels become white."""
    write_png(tmp_path / "gray.png", mode="L")
    write_png(tmp_path / "palette.gif", mode="P")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "transparent.png")
    dataset = ImageFolderDataset(tmp_path, image_size=8, train=False)
    images = {path.name: dataset[i][0] for i, (path, _) in enumerate(dataset.samples)}
    assert all(image.shape == (3, 8, 8) for image in images.values())
    assert torch.all(images["transparent.png"] == 1)


def test_centre_crop_is_deterministic_and_central(tmp_path):
    """Evaluation crops the centre (after resizing the shorter side to 1.125x) and ignores seed and epoch."""
    stripes = np.zeros((20, 60, 3), dtype=np.uint8)  # left third red, middle green, right third blue
    stripes[:, :20, 0] = stripes[:, 20:40, 1] = stripes[:, 40:, 2] = 255
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    first = ImageFolderDataset(tmp_path, image_size=16, train=False, seed=0)[0][0]
    other = ImageFolderDataset(tmp_path, image_size=16, train=False, seed=5)
    other.set_epoch(3)
    assert torch.equal(first, other[0][0])
    assert first[:, 8, 8].argmax() == 1  # the green middle stripe is at the centre of the crop


def test_random_crop_reproducible_from_seed_index_epoch(tmp_path):
    """Training crops and flips depend only on (seed, index, epoch): the same triple gives the same tensor whatever
    the global RNGs do (exact resume), and new epochs give new crops."""
    write_png(tmp_path / "wide.png", size=(120, 20))
    dataset = ImageFolderDataset(tmp_path, image_size=16, train=True, hflip=True, seed=1)
    dataset.set_epoch(4)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    reference = dataset[0][0]
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    again = ImageFolderDataset(tmp_path, image_size=16, train=True, hflip=True, seed=1)
    again.set_epoch(4)
    assert torch.equal(again[0][0], reference)
    crops = []
    for epoch in range(5):
        dataset.set_epoch(epoch)
        crops.append(dataset[0][0])
    assert any(not torch.equal(crops[0], crop) for crop in crops[1:])


def test_build_dataset_picks_source_and_split(tmp_path):
    """No path gives shapes (training and held-out seeds differ); a folder with train/ and val/ gives one per split."""
    train, held_out = build_dataset(None, 32, train=True, num_images=20), build_dataset(None, 32, train=False, num_images=20)
    assert isinstance(train, ShapesDataset) and len(train) == 20
    assert not torch.equal(train[0][0], held_out[0][0])
    write_png(tmp_path / "train" / "cat" / "0.png")
    write_png(tmp_path / "train" / "dog" / "0.png")
    write_png(tmp_path / "val" / "cat" / "0.png")
    assert len(build_dataset(str(tmp_path), 16, train=True)) == 2
    validation = build_dataset(str(tmp_path), 16, train=False)
    assert len(validation) == 1 and not validation.train


# ---------------------------------------------------------------------------------------------------------------
# image I/O helpers


def test_to_uint8_images_maps_range_and_layout():
    """-1 -> 0, +1 -> 255, out-of-range values clamp, and channels move last: (B, 3, H, W) -> (B, H, W, 3)."""
    images = torch.zeros(2, 3, 4, 5)
    images[0, 0], images[0, 1], images[1, 2] = -1.0, 1.0, 3.0
    pixels = to_uint8_images(images)
    assert pixels.shape == (2, 4, 5, 3) and pixels.dtype == np.uint8
    assert (pixels[0, ..., 0] == 0).all() and (pixels[0, ..., 1] == 255).all() and (pixels[1, ..., 2] == 255).all()


def test_from_uint8_images_inverts_to_uint8_images():
    """0 -> -1 and 255 -> +1, channels move first for a batch and for one image, every one of the 256 levels comes
    back unchanged through `to_uint8_images`, and a float array (already converted) is refused."""
    pixels = np.random.default_rng(0).permutation(256).astype(np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    pixels[..., 1] = 255 - pixels[..., 1]  # the channels differ, so a wrong channel order would show
    images = from_uint8_images(pixels)
    assert images.shape == (1, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    assert np.array_equal(to_uint8_images(images), pixels)
    assert torch.equal(from_uint8_images(pixels[0]), images[0])
    with pytest.raises(ValueError, match="uint8 images"):
        from_uint8_images(pixels.astype(np.float32))


def test_save_image_grid_places_images_with_padding(tmp_path):
    """The grid has `nrow` images per row with `padding` px between them, each tile holds its image's exact pixels,
    captions add height, and a list of (3, H, W) tensors works like a batch."""
    images = torch.rand(5, 3, 8, 8) * 2 - 1
    save_image_grid(list(images), tmp_path / "grid.png", nrow=3, padding=2)
    grid = np.array(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 + 2 * 10, 2 + 3 * 10, 3)
    expected = to_uint8_images(images)
    assert np.array_equal(grid[2:10, 2:10], expected[0]) and np.array_equal(grid[12:20, 12:20], expected[4])
    save_image_grid(images, tmp_path / "labelled.png", nrow=3, labels=["red circle"] * 5)
    assert Image.open(tmp_path / "labelled.png").height > grid.shape[0]


def test_dataset_fingerprint_follows_the_images(tmp_path):
    """The fingerprint that keys the token cache and the judge: equal for the same data, different when a folder
    gains an image or an image's bytes change (same name and size), and when a shapes parameter changes."""
    import os
    (tmp_path / "cls").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "cls" / f"{name}.png")
    before = dataset_fingerprint(ImageFolderDataset(tmp_path, 8))
    assert before == dataset_fingerprint(ImageFolderDataset(tmp_path, 8))
    assert before["files"] == 2 and dataset_fingerprint(ImageFolderDataset(tmp_path, 16)) != before
    Image.new("RGB", (8, 8), (200, 20, 30)).save(tmp_path / "cls" / "c.png")
    added = dataset_fingerprint(ImageFolderDataset(tmp_path, 8))
    assert added["files"] == 3 and added["listing_sha256"] != before["listing_sha256"]
    stat = os.stat(tmp_path / "cls" / "a.png")
    os.utime(tmp_path / "cls" / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # an edit
    assert dataset_fingerprint(ImageFolderDataset(tmp_path, 8))["listing_sha256"] != added["listing_sha256"]
    shapes = dataset_fingerprint(ShapesDataset(num_images=8, image_size=16, seed=0))
    assert shapes == dataset_fingerprint(ShapesDataset(num_images=8, image_size=16, seed=0))
    assert shapes != dataset_fingerprint(ShapesDataset(num_images=8, image_size=16, seed=1))
    with pytest.raises(TypeError, match="cannot fingerprint"):
        dataset_fingerprint(torch.utils.data.TensorDataset(torch.zeros(2)))
