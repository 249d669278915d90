"""The token cache (minvar/training/token_cache.py) and train_var.py's use of it.

What is protected: training from the cache is bit-identical to encoding every batch on the fly (same seed, no
augmentation: same weights, exactly); a changed tokenizer, a changed image file and a changed built-in dataset
each make the cache rebuild rather than be read stale, and an unchanged one is reused; a cache with flips holds the
mirror image's tokens as its second view. Resume and DDP with the cache are covered by tests/test_scripts.py, whose
runs use the cache by default.
"""
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import train_tokenizer  # noqa: E402
import train_var  # noqa: E402
from minvar.io.checkpoint import load_tokenizer  # noqa: E402
from minvar.io.data import ImageFolderDataset, ShapesDataset  # noqa: E402
from minvar.training.schedule import cosine_lr_at, lr_wd_at  # noqa: E402
from minvar.training.token_cache import TokenDataset, load_or_build_token_cache  # noqa: E402

VAR_ARGS = ["--device", "cpu", "--num-images", "8", "--batch-size", "4", "--width", "64", "--depth", "1",
            "--base-learning-rate", "0.5", "--warmup-steps", "2", "--log-every", "1", "--sample-every", "0",
            "--save-every", "0", "--steps", "5"]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    """A tokenizer trained for 3 steps (its tokens need not be good, only fixed)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer.main(["--out-dir", str(out), "--steps", "3", "--device", "cpu", "--num-images", "4",
                          "--batch-size", "4", "--warmup-steps", "1", "--log-every", "0", "--grid-every", "0",
                          "--save-every", "0"])
    return out / "checkpoint.pt"


def test_cached_training_is_bit_identical_to_on_the_fly(tokenizer_path, tmp_path, monkeypatch):
    """Same seed, no augmentation: the cached run computes exactly the weights of the on-the-fly run."""
    monkeypatch.setattr(train_var, "sample_grid", lambda *args, **kwargs: None)
    common = ["--tokenizer", str(tokenizer_path), *VAR_ARGS]
    train_var.main(["--out-dir", str(tmp_path / "cached"), *common])
    train_var.main(["--out-dir", str(tmp_path / "fly"), *common, "--encode-on-the-fly"])
    assert (tmp_path / "cached" / "token_cache.pt").is_file() and not (tmp_path / "fly" / "token_cache.pt").exists()
    cached = torch.load(tmp_path / "cached" / "checkpoint.pt", weights_only=True)
    fly = torch.load(tmp_path / "fly" / "checkpoint.pt", weights_only=True)
    for key in fly["model"]:
        assert torch.equal(cached["model"][key], fly["model"][key]), key


def test_cache_is_rebuilt_for_a_changed_tokenizer_or_data_and_reused_otherwise(tokenizer_path, tmp_path):
    vae = load_tokenizer(str(tokenizer_path))
    path = str(tmp_path / "token_cache.pt")
    messages = []
    dataset = ShapesDataset(6, seed=0)
    first = load_or_build_token_cache(path, vae, dataset, False, log=messages.append)
    assert first["tokens"].shape == (1, 6, sum(pn * pn for pn in vae.patch_nums)) and first["tokens"].dtype == torch.uint16
    expected = torch.cat(vae.img_to_idx(torch.stack([dataset[i][0] for i in range(6)])), dim=1)  # (6, L)
    assert torch.equal(first["tokens"][0].long(), expected)
    load_or_build_token_cache(path, vae, dataset, False, log=messages.append)
    assert "reusing" in messages[-1]

    with torch.no_grad():  # another tokenizer: one codebook vector moved
        vae.quantize.embedding.weight[0] += 1.0
    load_or_build_token_cache(path, vae, dataset, False, log=messages.append)
    assert "encoding" in messages[-1]
    load_or_build_token_cache(path, vae, ShapesDataset(6, seed=1), False, log=messages.append)  # other data
    assert "encoding" in messages[-1]


def test_folder_cache_follows_the_files_and_holds_mirror_images(tokenizer_path, tmp_path):
    vae = load_tokenizer(str(tokenizer_path))
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    dataset = ImageFolderDataset(tmp_path / "data", 32, train=True, hflip=True)
    path, messages = str(tmp_path / "token_cache.pt"), []
    cache = load_or_build_token_cache(path, vae, dataset, True, log=messages.append)
    assert cache["tokens"].shape[:2] == (2, 4)
    image = ImageFolderDataset(tmp_path / "data", 32, train=False)[0][0][None]  # (1, 3, 32, 32), the centre crop
    assert torch.equal(cache["tokens"][1, 0].long(), torch.cat(vae.img_to_idx(image.flip(-1)), dim=1)[0])
    tokens = TokenDataset(cache)
    assert {tokens.set_epoch(epoch) or tokens[0][0].tolist() == cache["tokens"][1, 0].tolist() for epoch in range(8)} \
        == {True, False}  # both views are drawn over epochs
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / "b" / "1.png")
    load_or_build_token_cache(path, vae, ImageFolderDataset(tmp_path / "data", 32, hflip=True), True,
                              log=messages.append)
    assert "encoding" in messages[-1]


def last_logged(out_dir, field: str) -> tuple:
    """(step, value of `field`) of the last "step N loss ..." line of a run's log.txt."""
    lines = [line for line in (out_dir / "log.txt").read_text().splitlines() if re.match(r"step \d+ loss", line)]
    words = lines[-1].split()
    return int(words[1]), float(words[words.index(field) + 1])


@pytest.mark.parametrize("script", ["train_var", "train_tokenizer"])
def test_minutes_budget_stops_in_time_with_the_schedule_completed(script, tokenizer_path, tmp_path, monkeypatch):
    """--minutes 0.1: the run chooses a total from its own speed, stops there with the schedule of that total at its
    end (the last logged lr is the schedule's value at the last step, low in the decay) and records the total in
    the checkpoint. (The log prints the lr with 3 significant digits, hence rel=5e-3; how long the run took is not
    asserted: timings belong in benchmarks.)"""
    monkeypatch.setattr(train_var, "sample_grid", lambda *args, **kwargs: None)
    out = tmp_path / script
    if script == "train_var":
        arguments = [a for a in VAR_ARGS if a not in ("--steps", "5")]
        train_var.main(["--out-dir", str(out), "--tokenizer", str(tokenizer_path), *arguments, "--minutes", "0.1"])
        peak = 0.5 * 4 / 256  # base lr × batch / 256
        expected = lambda step, total: lr_wd_at(step, total, peak, 2)[0]  # noqa: E731
    else:
        train_tokenizer.main(["--out-dir", str(out), "--minutes", "0.1", "--device", "cpu", "--num-images", "4",
                              "--batch-size", "4", "--warmup-steps", "2", "--log-every", "1", "--grid-every", "0",
                              "--save-every", "0", "--restart-every", "0"])
        peak = 3e-3
        expected = lambda step, total: cosine_lr_at(step, total, peak, 2)  # noqa: E731
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    step, lr = last_logged(out, "lr")
    assert "--minutes 0.1:" in (out / "log.txt").read_text()
    assert checkpoint["step"] == checkpoint["total_steps"] == checkpoint["args"]["steps"] == step > 3
    assert lr == pytest.approx(expected(step - 1, step), rel=5e-3) and lr < 0.5 * peak  # decayed to the end
