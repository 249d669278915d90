"""The three top-level scripts end to end: train_tokenizer.py, train_var.py and sample.py.

They are called in-process through their `main(argv)` (fast: no interpreter start, and their SystemExit messages
can be read), on tiny runs: a few built-in shapes images, batch 4, tens of steps, a 1-block 64-wide VAR. Only the
two-process DDP run goes through a subprocess (`torch.distributed.run`, gloo on CPU).

What is protected: losses fall when overfitting a few images; `--resume` continues exactly (weights and logged
losses) for both trainers, dead-code restarts included; two DDP processes train the same weights as one process on
the same global batch; a corrupt image is skipped and counted, not fatal; a wrong or missing checkpoint is refused
with a message that says what is wrong; sample.py writes a readable grid, per-sample PNGs and a guided-diffusion
`samples.npz`, reproducibly per seed, with classes by name, and zero-shot editing runs.
"""
import contextlib
import math
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO

if str(REPO) not in sys.path:  # the scripts live at the repository root, beside the minvar package
    sys.path.insert(0, str(REPO))
import sample  # noqa: E402
import train_tokenizer  # noqa: E402
import train_var  # noqa: E402
from minvar.io.checkpoint import load_tokenizer  # noqa: E402
from minvar.io.data import ShapesDataset  # noqa: E402
from minvar.vqvae import VQVAE  # noqa: E402

# Small but enough to overfit: a few shapes images, batch 4, a 1-block 64-wide VAR with a high learning rate.
# The tokenizer sees its 4 images as one full batch every step (a smooth loss curve) and restarts dead codes early.
TOKENIZER_ARGS = ["--device", "cpu", "--num-images", "4", "--batch-size", "4", "--warmup-steps", "2",
                  "--restart-every", "5", "--log-every", "1", "--grid-every", "0", "--save-every", "0"]
VAR_ARGS = ["--device", "cpu", "--num-images", "8", "--batch-size", "4", "--width", "64", "--depth", "1",
            "--base-learning-rate", "0.5", "--warmup-steps", "2", "--log-every", "1", "--sample-every", "0",
            "--save-every", "0", "--workers", "0"]


pytestmark = [pytest.mark.slow,  # every test here runs the training scripts
              pytest.mark.usefixtures("one_thread")]  # conftest.py: one intra-op thread for this module


def logged_losses(out_dir) -> dict:
    """{step: loss} from the "step N loss X ..." lines of a run's log.txt (a resumed run appends to the same file)."""
    losses = {}
    with open(os.path.join(out_dir, "log.txt")) as file:
        lines = file.read().splitlines()
    for line in lines:
        match = re.match(r"step (\d+) loss ([0-9.]+)", line)
        if match:
            losses[int(match.group(1))] = float(match.group(2))
    return losses


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=0, atol=atol), \
            f"{key}: max difference {(a[key].float() - b[key].float()).abs().max().item():.3g}"


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@contextlib.contextmanager
def killed_after_saving(module, stop_step: int):
    """Make `module.main` die just after it saves the checkpoint of `stop_step`, as a preempted job would.

    The run keeps its full --steps (so its schedule is the uninterrupted one's); only the process is cut short.
    """
    real_save = module.save_checkpoint

    def save_then_die(path, kind, model, config, step, *args, **kwargs):
        real_save(path, kind, model, config, step, *args, **kwargs)
        if step == stop_step:
            raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            yield


@pytest.fixture()
def no_sample_grid(monkeypatch):
    """Skip train_var's end-of-run sample grid (120 guided samples, seconds on a small CPU) where a test only
    compares weights; the grid itself is exercised by the overfitting run."""
    monkeypatch.setattr(train_var, "sample_grid", lambda *args, **kwargs: None)


# ------------------------------------------------------------------------------------------------------------------
# shared tiny runs
@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    """A tokenizer trained for 30 steps on 4 shapes images: (run folder, checkpoint path)."""
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer.main(["--out-dir", str(out), "--steps", "30", *TOKENIZER_ARGS])
    return out, out / "checkpoint.pt"


@pytest.fixture(scope="module")
def var_run(tokenizer_run, tmp_path_factory):
    """A VAR trained for 30 steps on the same 8 images with that tokenizer: (run folder, checkpoint path)."""
    out = tmp_path_factory.mktemp("var")
    train_var.main(["--out-dir", str(out), "--tokenizer", str(tokenizer_run[1]), "--steps", "30", *VAR_ARGS])
    return out, out / "checkpoint.pt"


def test_compiled_training_equals_eager(tokenizer_run, tmp_path, no_sample_grid):
    """--compile (torch.compile of the training forward) trains the same model as eager code, up to float rounding
    (the compiler may fuse and reorder sums): the same logged losses and weights after 4 steps, and a checkpoint
    with the plain module's keys, which sample.py and --resume read."""
    args = ["--tokenizer", str(tokenizer_run[1]), "--steps", "4", *VAR_ARGS, "--precision", "fp32"]
    train_var.main(["--out-dir", str(tmp_path / "eager"), *args])
    from torch._dynamo.utils import counters
    graphs_before = counters["stats"]["unique_graphs"]
    train_var.main(["--out-dir", str(tmp_path / "compiled"), *args, "--compile"])
    assert counters["stats"]["unique_graphs"] > graphs_before  # the forward really went through the compiler
    eager, compiled = logged_losses(tmp_path / "eager"), logged_losses(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() == {1, 2, 3, 4}
    assert all(abs(eager[s] - compiled[s]) <= 1e-3 * eager[s] for s in eager), (eager, compiled)
    assert_same_weights(load(tmp_path / "compiled" / "checkpoint.pt")["model"],
                        load(tmp_path / "eager" / "checkpoint.pt")["model"], atol=1e-4)


# ------------------------------------------------------------------------------------------------------------------
# 1-2. overfitting
def test_tokenizer_overfits_a_few_images_and_saves_a_loadable_checkpoint(tokenizer_run):
    """The tokenizer's training loss falls clearly on 4 images, and its checkpoint is a complete, loadable
    'minvar-tokenizer' whose weights are the trained ones."""
    out, path = tokenizer_run
    losses = logged_losses(out)
    assert sorted(losses) == list(range(1, 31))
    start = np.mean([losses[s] for s in (1, 2, 3)])
    end = np.mean([losses[s] for s in (28, 29, 30)])
    assert end < 0.7 * start, f"loss {start:.3f} -> {end:.3f}"
    checkpoint = load(path)
    assert checkpoint["kind"] == "minvar-tokenizer" and checkpoint["step"] == 30
    assert checkpoint["class_names"] == ShapesDataset(1).class_names
    vae = load_tokenizer(str(path))
    assert isinstance(vae, VQVAE) and not vae.training and vae.config.image_size == 32
    assert_same_weights(vae.state_dict(), checkpoint["model"], atol=0)


def test_var_overfits_a_few_images(var_run):
    """VAR's cross entropy starts at about ln V (uniform prediction) and falls far below it on 8 images.

    After 30 steps the loss sits at about 0.5 ln V (3.12-3.13 of 6.24 on the CPUs measured so far, on either side of
    0.5 ln V, so the bound is 0.6 ln V): a model that does not learn stays near ln V."""
    out, path = var_run
    losses = logged_losses(out)
    vocab_size = load(path)["config"]["vocab_size"]
    assert losses[1] == pytest.approx(math.log(vocab_size), abs=0.1)
    assert np.mean([losses[s] for s in (28, 29, 30)]) < 0.6 * math.log(vocab_size), losses
    assert (out / "samples_000030.png").is_file()  # the end-of-run sample grid


# ------------------------------------------------------------------------------------------------------------------
# 3. resume
def test_var_resume_equals_uninterrupted(tokenizer_run, tmp_path, no_sample_grid):
    """Stopping after the step-3 checkpoint and running with --resume gives the same weights, optimizer state and
    logged losses at step 6 as 6 steps without a stop (data order, label dropout, schedule, RNG all continue).
    Resuming a finished run again is a clean no-op (a job scheduler may relaunch it)."""
    args = ["--tokenizer", str(tokenizer_run[1]), "--steps", "6", *VAR_ARGS, "--save-every", "3"]
    train_var.main(["--out-dir", str(tmp_path / "straight"), *args])
    with killed_after_saving(train_var, stop_step=3):
        train_var.main(["--out-dir", str(tmp_path / "stopped"), *args])
    assert load(tmp_path / "stopped" / "checkpoint.pt")["step"] == 3
    train_var.main(["--out-dir", str(tmp_path / "stopped"), *args, "--resume"])

    straight, resumed = load(tmp_path / "straight" / "checkpoint.pt"), load(tmp_path / "stopped" / "checkpoint.pt")
    assert resumed["step"] == straight["step"] == 6
    assert_same_weights(resumed["model"], straight["model"], atol=1e-6)
    assert_same_weights(resumed["optimizer"]["state"][0], straight["optimizer"]["state"][0], atol=1e-6)
    straight_losses, resumed_losses = logged_losses(tmp_path / "straight"), logged_losses(tmp_path / "stopped")
    assert [resumed_losses[s] for s in (4, 5, 6)] == [straight_losses[s] for s in (4, 5, 6)]
    assert "resumed from step 3" in (tmp_path / "stopped" / "log.txt").read_text()
    assert "token cache: reusing" in (tmp_path / "stopped" / "log.txt").read_text()  # encoded once, read on resume

    train_var.main(["--out-dir", str(tmp_path / "stopped"), *args, "--resume"])  # already at step 6
    assert_same_weights(load(tmp_path / "stopped" / "checkpoint.pt")["model"], straight["model"], atol=0)


def test_tokenizer_resume_equals_uninterrupted_with_dead_code_restarts(tmp_path):
    """The tokenizer resumes exactly too, across a dead-code restart before the stop: weights, codebook-usage EMA
    and logged losses match, and so does the restart generator's final state (what any later restart draws from;
    a resumed run that re-seeded it would differ here)."""
    # every code is far below a 0.01 hit share at step 2, so that restart re-draws hundreds of codes
    args = ["--steps", "6", *TOKENIZER_ARGS, "--save-every", "3", "--restart-every", "2",
            "--dead-code-threshold", "0.01"]
    train_tokenizer.main(["--out-dir", str(tmp_path / "straight"), *args])
    with killed_after_saving(train_tokenizer, stop_step=3):
        train_tokenizer.main(["--out-dir", str(tmp_path / "stopped"), *args])
    train_tokenizer.main(["--out-dir", str(tmp_path / "stopped"), *args, "--resume"])

    log = (tmp_path / "stopped" / "log.txt").read_text()
    assert re.search(r"step 2: restarted [1-9]", log[:log.index("resumed from step 3")])
    straight, resumed = load(tmp_path / "straight" / "checkpoint.pt"), load(tmp_path / "stopped" / "checkpoint.pt")
    assert resumed["step"] == straight["step"] == 6
    assert_same_weights(resumed["model"], straight["model"], atol=1e-6)  # includes quantize.ema_vocab_hit_SV
    assert torch.equal(resumed["restart_rng"], straight["restart_rng"])
    straight_losses, resumed_losses = logged_losses(tmp_path / "straight"), logged_losses(tmp_path / "stopped")
    assert [resumed_losses[s] for s in (4, 5, 6)] == [straight_losses[s] for s in (4, 5, 6)]


# ------------------------------------------------------------------------------------------------------------------
# 4. DDP
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_equals_one_process_on_the_same_global_batch(tokenizer_run, tmp_path, no_sample_grid):
    """torchrun with 2 CPU processes × batch 2 trains the same weights, and logs the same losses, as 1 process ×
    batch 4: the processes split each global batch, DDP averages their gradients, label dropout agrees."""
    # fp32: bf16 autocast (--precision auto picks it on CPUs with AVX512-BF16) rounds the two splits differently
    args = ["--tokenizer", str(tokenizer_run[1]), "--steps", "4", *VAR_ARGS, "--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "train_var.py", "--out-dir", str(tmp_path / "ddp"), *args, "--batch-size", "2"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    train_var.main(["--out-dir", str(tmp_path / "single"), *args, "--batch-size", "4"])

    ddp, single = load(tmp_path / "ddp" / "checkpoint.pt"), load(tmp_path / "single" / "checkpoint.pt")
    assert ddp["step"] == single["step"] == 4
    assert_same_weights(ddp["model"], single["model"], atol=1e-5)
    ddp_losses, single_losses = logged_losses(tmp_path / "ddp"), logged_losses(tmp_path / "single")
    assert sorted(ddp_losses) == [1, 2, 3, 4]  # only rank 0 writes the log
    for step in ddp_losses:
        assert ddp_losses[step] == pytest.approx(single_losses[step], abs=2e-4)
    assert ddp_losses[4] < ddp_losses[1]  # it trained at all
    assert (tmp_path / "ddp" / "log.txt").read_text().count("token cache: encoding") == 1  # rank 0 built it once


def test_two_node_torchrun_as_the_readme_launches_it_equals_one_process(tokenizer_run, tmp_path, no_sample_grid):
    """The README's multi-node command works: two `torchrun --nnodes 2 --node_rank R --master_addr ... --master_port
    ...` launchers (here both on this machine, one process each, rendezvous on localhost) train the same weights as
    one process on the same global batch, and only node 0's process writes the run folder."""
    args = ["--tokenizer", str(tokenizer_run[1]), "--steps", "4", *VAR_ARGS, "--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = str(free_port())
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                                   str(rank), "--master_addr", "127.0.0.1", "--master_port", port,
                                   "--nproc_per_node", "1", "train_var.py", "--out-dir", str(tmp_path / "nodes"),
                                   *args, "--batch-size", "2"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in (0, 1)]
    outputs = [launcher.communicate(timeout=600)[0] for launcher in launchers]
    for rank, (launcher, output) in enumerate(zip(launchers, outputs)):
        assert launcher.returncode == 0, f"node {rank}:\n{output[-4000:]}"
    train_var.main(["--out-dir", str(tmp_path / "single"), *args, "--batch-size", "4"])

    nodes, single = load(tmp_path / "nodes" / "checkpoint.pt"), load(tmp_path / "single" / "checkpoint.pt")
    assert nodes["step"] == single["step"] == 4
    assert_same_weights(nodes["model"], single["model"], atol=1e-5)
    assert sorted(logged_losses(tmp_path / "nodes")) == [1, 2, 3, 4]  # one log, written by one process


# ------------------------------------------------------------------------------------------------------------------
# 5. corrupt data
def test_corrupt_image_is_skipped_counted_and_named(tokenizer_run, tmp_path):
    """An image folder with one garbage '.png' among good ones trains to the end; the bad file is named in a
    warning and the log's "skipped images" count is positive."""
    data = tmp_path / "data"
    shapes = ShapesDataset(6, image_size=32)
    for i in range(6):
        folder = data / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = ((shapes[i][0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()  # (H, W, 3) uint8
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (data / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image " * 4)

    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="broken.png"):
        train_var.main(["--out-dir", str(out), "--tokenizer", str(tokenizer_run[1]), "--data-path", str(data),
                        "--steps", "2", *VAR_ARGS])  # 2 steps × 4 = 8 draws cover all 7 files
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["step"] == 2 and checkpoint["class_names"] == ["cats", "dogs"]
    last_line = [line for line in (out / "log.txt").read_text().splitlines() if line.startswith("step 2 loss")][0]
    assert int(re.search(r"skipped images (\d+)", last_line).group(1)) > 0, last_line


# ------------------------------------------------------------------------------------------------------------------
# 6. wrong or missing checkpoints
def exit_message(function, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        function(argv)
    assert isinstance(exit_info.value.code, str), "expected an error message, not a bare exit status"
    return exit_info.value.code


def test_wrong_kind_of_checkpoint_is_refused_with_a_clear_message(tokenizer_run, var_run, tmp_path):
    """A VAR checkpoint given as --tokenizer, or a tokenizer given as sample.py's --checkpoint, stops with a message
    naming both kinds; a missing file is reported as missing, with its path."""
    message = exit_message(train_var.main, ["--tokenizer", str(var_run[1]), "--out-dir", str(tmp_path / "a"),
                                            *VAR_ARGS])
    assert "'minvar-var'" in message and "'minvar-tokenizer'" in message, message
    message = exit_message(sample.main, ["--checkpoint", str(tokenizer_run[1]), "--device", "cpu",
                                         "--out-dir", str(tmp_path / "b")])
    assert "'minvar-tokenizer'" in message and "'minvar-var'" in message, message
    missing = str(tmp_path / "no_such_file.pt")
    for function, flag in ((sample.main, "--checkpoint"), (train_var.main, "--tokenizer")):
        message = exit_message(function, [flag, missing, "--device", "cpu", "--out-dir", str(tmp_path / "c")])
        assert missing in message and "does not exist" in message, message


# ------------------------------------------------------------------------------------------------------------------
# 7-8. sampling and editing
def run_sample(var_run, out, *extra) -> dict:
    sample.main(["--checkpoint", str(var_run[1]), "--device", "cpu", "--out-dir", str(out), *extra])
    with np.load(out / "samples.npz") as npz:
        return {key: npz[key] for key in npz.files}


def test_sample_writes_grid_pngs_and_npz_by_class_name_reproducibly(var_run, tmp_path):
    """sample.py with classes by name writes a readable grid.png, one PNG per sample and a guided-diffusion style
    samples.npz (uint8 N×H×W×3 plus labels); the same seed gives identical samples, another seed different ones."""
    names = ShapesDataset(1).class_names
    arrays = run_sample(var_run, tmp_path / "one", "--classes", "red circle,blue ring", "--per-class", "3")
    assert arrays["arr_0"].dtype == np.uint8 and arrays["arr_0"].shape == (6, 32, 32, 3)
    assert arrays["labels"].tolist() == [names.index("red circle")] * 3 + [names.index("blue ring")] * 3
    pngs = sorted((tmp_path / "one" / "images").glob("*.png"))
    assert len(pngs) == 6 and "red_circle" in pngs[0].name and "blue_ring" in pngs[-1].name
    assert np.array_equal(np.asarray(Image.open(pngs[0])), arrays["arr_0"][0])  # the PNGs are the npz's images
    with Image.open(tmp_path / "one" / "grid.png") as grid:
        grid.verify()
    with Image.open(tmp_path / "one" / "grid.png") as grid:
        assert grid.width >= 3 * 32 and grid.height >= 2 * 32  # 2 class rows of 3 samples

    again = run_sample(var_run, tmp_path / "two", "--classes", "red circle,blue ring", "--per-class", "3")
    assert np.array_equal(again["arr_0"], arrays["arr_0"])
    other = run_sample(var_run, tmp_path / "three", "--classes", "red circle,blue ring", "--per-class", "3",
                       "--seed", "1")
    assert not np.array_equal(other["arr_0"], arrays["arr_0"])


def test_sample_unknown_class_name_lists_the_known_ones(var_run, tmp_path):
    """A class name the checkpoint does not know stops sample.py with a message that names it and lists the known
    class names, instead of sampling something else."""
    message = exit_message(sample.main, ["--checkpoint", str(var_run[1]), "--device", "cpu", "--classes",
                                         "purple hexagon", "--out-dir", str(tmp_path)])
    assert "purple hexagon" in message and "red circle" in message and "blue ring" in message, message


def test_sample_edit_inpaints_a_box_and_writes_grid(var_run, tmp_path):
    """sample.py --edit on a PNG with a box in-paints it as a class: grid.png (source, masked, edits) and one
    sample per --per-class are written."""
    source = ((ShapesDataset(1, image_size=32)[0][0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    Image.fromarray(source).save(tmp_path / "source.png")
    out = tmp_path / "edit"
    arrays = run_sample(var_run, out, "--edit", str(tmp_path / "source.png"), "--box", "0.25,0.25,0.75,0.75",
                        "--mode", "inpaint", "--classes", "green bar", "--per-class", "2")
    assert arrays["arr_0"].shape == (2, 32, 32, 3)
    assert arrays["labels"].tolist() == [ShapesDataset(1).class_names.index("green bar")] * 2
    with Image.open(out / "grid.png") as grid:
        grid.verify()
    with Image.open(out / "grid.png") as grid:
        assert grid.width >= 4 * 32  # source, masked source, 2 edits in one row
    assert len(list((out / "images").glob("*.png"))) == 2
