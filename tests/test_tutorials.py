"""The tutorials (tutorials/*.py) run end to end in --fast mode and write what they promise, as scripts and as
notebooks.

Students read the tutorials top to bottom and run them as scripts, so that is how they are tested: each one in a
subprocess, `python tutorials/NN_name.py --fast --out-dir DIR`, from the repository root with OMP_NUM_THREADS=1.
`--runs-dir` points at an empty folder, so a local quickstart run is never picked up: every tutorial takes its
stand-in path (train a few steps with train_tokenizer.py / train_var.py). All tutorials share one output folder, so
a stand-in trained by one is reused by the next; 03 (which trains them) runs first so that they are trained once.
Any order works; only the time changes.

Students also open them as notebooks: every file is cut into `# %%` cells (the percent format that Jupyter with
jupytext, VS Code and PyCharm read), a markdown cell before each code cell, and tutorial 02 is run cell by cell the
way a kernel runs it. Those runs are marked slow; the check of the cells is not.
"""
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES, REPO, USING_FULL_DATA

TUTORIALS = sorted((REPO / "tutorials").glob("0*.py"))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tutorial_figures")


def run_tutorial(name: str, out_dir: Path, *extra: str) -> str:
    """Run one tutorial in --fast mode as a student would; fail with its output if it exits non-zero."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONIOENCODING="utf-8", MPLBACKEND="Agg")
    command = [sys.executable, str(REPO / "tutorials" / name), "--fast", "--out-dir", str(out_dir),
               "--runs-dir", str(out_dir / "no_quickstart_here"), *extra]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (f"{name} exited with {result.returncode}\n--- stdout (end) ---\n"
                                    f"{result.stdout[-4000:]}\n--- stderr (end) ---\n{result.stderr[-4000:]}")
    return result.stdout


def notebook_cells(path: Path):
    """The cells of a percent-format file, as jupytext reads it: [(kind, lines)], kind "markdown" or "code" after a
    `# %% [markdown]` or `# %%` line (any other `[...]` kind is returned as written); what comes before the first
    marker is a cell of kind None."""
    cells = [(None, [])]
    for line in path.read_text(encoding="utf-8").splitlines():
        marker = re.match(r"# %%(.*)$", line)
        if marker:
            kind = re.match(r"\s*(\[.*?\])?", marker.group(1)).group(1)
            cells.append(("code" if kind is None else "markdown" if kind == "[markdown]" else kind, []))
        else:
            cells[-1][1].append(line)
    return cells


def assert_png_files(out_dir: Path, names) -> None:
    """Each file exists, is a PNG (signature), and decodes to a non-empty image."""
    for name in names:
        path = out_dir / name
        assert path.is_file(), f"{name} was not written"
        with open(path, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG file"
        with Image.open(path) as image:
            image.load()  # decodes every byte: a truncated file fails here
            assert image.width > 10 and image.height > 10, f"{name} is an empty image"


@pytest.mark.parametrize("path", TUTORIALS, ids=[path.name for path in TUTORIALS])
def test_tutorial_is_cut_into_notebook_cells(path):
    """The tutorial opens as a notebook that reads as a lesson: `# %%` cells from the first line on, the first cell a
    markdown title that keeps the run command, a markdown cell (comment lines only, not empty) right before every code
    cell, no two numbered steps (`common.section`) in one code cell, and no code that reads `__doc__` or `__file__`,
    which a notebook kernel does not set to this file."""
    cells = notebook_cells(path)
    assert not any(line.strip() for line in cells[0][1]), "code before the first `# %%` line"
    cells = cells[1:]
    assert cells and cells[0][0] == "markdown", "the first cell is not a markdown cell"
    assert any(f"python tutorials/{path.name}" in line for line in cells[0][1]), "the first cell lost the run command"
    assert sum(kind == "code" for kind, _ in cells) >= 2, "not cut into cells"
    for number, ((previous_kind, _), (kind, lines)) in enumerate(zip([(None, [])] + cells, cells), start=1):
        text = "\n".join(lines)
        assert kind in ("markdown", "code"), f"cell {number} is of kind {kind}"
        if kind == "markdown":
            assert all(line == "#" or line.startswith("# ") or not line.strip() for line in lines), \
                f"markdown cell {number} has a line that is not a comment"
            assert any(line.strip("# ") for line in lines), f"markdown cell {number} is empty"
        else:
            assert previous_kind == "markdown", f"code cell {number} has no markdown cell before it"
            assert text.count("common.section(") <= 1, f"code cell {number} holds more than one numbered step"
            assert not re.search(r"\b__(doc|file)__\b", text), f"code cell {number} reads __doc__ or __file__"


@pytest.mark.slow
def test_03_training_trains_both_stages_and_plots_the_logs(out_dir):
    """03 trains a tokenizer and a VAR through the scripts' main() and plots the loss curves read from log.txt."""
    stdout = run_tutorial("03_training.py", out_dir)
    assert_png_files(out_dir, ["03_loss_curves.png", "03_final_grids.png"])
    assert (out_dir / "standin_fast" / "var" / "checkpoint.pt").is_file()
    # the VAR loss of the first logged step is printed before the last one: "loss 6.238 -> 5.847 nats per token"
    first, last = map(float, re.search(r"VAR:\s+loss ([\d.]+) -> ([\d.]+) nats", stdout).groups())
    assert last < first, "the VAR training loss did not fall at all"


@pytest.mark.slow
def test_01_tokenizer_round_trip_and_pyramid(out_dir):
    """01 rebuilds Algorithm 1 by hand (same tokens as the library), checks Algorithm 1 -> 2, draws the pyramid."""
    stdout = run_tutorial("01_tokenizer.py", out_dir)
    assert_png_files(out_dir, ["01_token_maps.png", "01_residual.png", "01_reconstruction_pyramid.png"])
    assert "same tokens as vae.quantize.encode (the library's Algorithm 1): True" in stdout
    round_trip = float(re.search(r"Algorithm 1 -> 2 round trip: .* = ([-+0-9.e]+)", stdout).group(1))
    assert round_trip < 1e-4


@pytest.fixture(scope="module")
def script_run_02(out_dir):
    """02 run once as a script into the shared folder: its stdout (used by two tests)."""
    return run_tutorial("02_next_scale_prediction.py", out_dir)


@pytest.mark.slow
def test_02_next_scale_prediction_kv_cache_matches_teacher_forcing(out_dir, script_run_02):
    """02's teacher-forced logits and KV-cached logits agree (the printed difference is below 1e-4), and the last
    column of its coarse-to-fine figure (f̂ after the finest scale, decoded) is exactly generate()'s sample."""
    stdout = script_run_02
    assert_png_files(out_dir, ["02_block_causal_mask.png", "02_sequence_layout.png", "02_cfg_schedule.png",
                               "02_cfg_samples.png", "02_coarse_to_fine.png"])
    match = re.search(r"teacher-forcing vs KV-cache max abs logit difference: ([-+0-9.e]+)", stdout)
    assert match, "02 did not print the teacher-forcing vs KV-cache difference"
    assert float(match.group(1)) < 1e-4
    assert "the same image as generate() with this seed: True" in stdout


# What a notebook kernel does with a tutorial, written out: its own `-f kernel.json` in sys.argv, `ipykernel` imported,
# the working folder the notebook's (tutorials/), and every code cell run in turn in ONE namespace without `__file__`.
NOTEBOOK_KERNEL = """
import json, sys, types
cells = json.load(open(sys.argv[1], encoding="utf-8"))
sys.argv = ["ipykernel_launcher.py", "-f", "kernel.json"]
sys.modules["ipykernel"] = types.ModuleType("ipykernel")
namespace = {"__name__": "__main__"}
for number, source in enumerate(cells, start=1):
    exec(compile(source, f"<code cell {number}>", "exec"), namespace)
"""


@pytest.mark.slow
def test_02_runs_as_a_notebook_cell_by_cell_with_the_scripts_results(out_dir, script_run_02, tmp_path):
    """Opened as a notebook, 02 runs cell by cell in one kernel namespace, takes its flags from MINVAR_TUTORIAL_ARGS
    (argparse would reject the kernel's `-f kernel.json`) and prints the same story and numbers and draws the same
    figures, pixel for pixel, as the script run on the same stand-in models."""
    notebook_dir = tmp_path / "notebook"
    shutil.copytree(out_dir / "standin_fast", notebook_dir / "standin_fast")  # the script run's models
    cells = [("\n".join(lines)) for kind, lines in notebook_cells(REPO / "tutorials" / "02_next_scale_prediction.py")
             if kind == "code"]
    (tmp_path / "cells.json").write_text(json.dumps(cells), encoding="utf-8")
    flags = ["--fast", "--out-dir", str(notebook_dir), "--runs-dir", str(notebook_dir / "no_quickstart_here")]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONIOENCODING="utf-8", MPLBACKEND="Agg",
               MINVAR_TUTORIAL_ARGS=shlex.join(flags))
    result = subprocess.run([sys.executable, "-c", NOTEBOOK_KERNEL, str(tmp_path / "cells.json")],
                            cwd=REPO / "tutorials", env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (f"the notebook run failed\n--- stdout (end) ---\n{result.stdout[-4000:]}\n"
                                    f"--- stderr (end) ---\n{result.stderr[-4000:]}")

    def story(stdout: str, folder: Path) -> str:
        """From the first step on (the model loading above it says whether it trained or reused), folder-free."""
        return stdout[stdout.index("1. The block-causal mask"):].replace(str(folder), "<out-dir>")
    assert story(result.stdout, notebook_dir) == story(script_run_02, out_dir)
    figures = sorted(path.name for path in notebook_dir.glob("02_*.png"))
    assert figures == ["02_block_causal_mask.png", "02_cfg_samples.png", "02_cfg_schedule.png",
                       "02_coarse_to_fine.png", "02_sequence_layout.png"]
    for name in figures:
        with Image.open(notebook_dir / name) as notebook, Image.open(out_dir / name) as script:
            assert np.array_equal(np.asarray(notebook), np.asarray(script)), f"{name} differs from the script's"


@pytest.mark.slow
def test_04_editing_keeps_the_source_tokens(out_dir):
    """04 in-paints, out-paints and class-edits, and the kept tokens are the source's at every scale."""
    stdout = run_tutorial("04_editing.py", out_dir)
    assert_png_files(out_dir, ["04_keep_masks.png", "04_editing.png"])
    assert stdout.count("kept tokens equal the source's at every scale: True") == 3


@pytest.mark.slow
def test_05_scaling_laws_shows_loss_falling_with_model_size(out_dir):
    """05's lesson, at its --fast settings: over five sizes trained alike, the biggest model's held-out loss is below
    the smallest's and the fitted power law L = a·N^b has a negative exponent b (loss falls as N grows).

    Measured at the --fast settings (4 steps × 4 images, stand-in tokenizer), seeds 0-3: d1 6.19, d5 5.99-6.02,
    b between -0.0074 and -0.0085. A broken ladder (every size the same model), a fit on the wrong axis or a
    training loop that does not train would not show it."""
    run_tutorial("05_scaling_laws.py", out_dir)
    assert_png_files(out_dir, ["scaling.png"])
    report = json.loads((out_dir / "scaling.json").read_text())
    sizes = sorted(report["sizes"], key=lambda size: size["params"])
    assert len(sizes) >= 5
    assert len({size["params"] for size in sizes}) == len(sizes), "two sizes are the same"
    assert all(math.isfinite(size["final_loss"]) for size in sizes)
    assert sizes[-1]["final_loss"] < sizes[0]["final_loss"], "the biggest model did not beat the smallest"
    assert report["fit_params"]["exponent"] < 0, "the fitted loss does not fall with model size"
    assert math.isfinite(report["fit_params"]["r2"])


@pytest.fixture(scope="module")
def fixture_dir(official_weight_files, tmp_path_factory):
    """The parity data as tutorial 06 reads it: the full copy, or the compact one with its weights rebuilt."""
    if USING_FULL_DATA:
        return FIXTURES
    folder = tmp_path_factory.mktemp("official_var_tiny_rebuilt")
    for name in ("config.json", "var_samples.pt"):
        (folder / name).write_bytes((FIXTURES / name).read_bytes())
    for name, path in official_weight_files.items():
        (folder / f"{name}_state_dict.pt").write_bytes(path.read_bytes())
    return folder


@pytest.mark.slow
def test_06_official_checkpoints_explains_and_loads_the_official_layout(out_dir, fixture_dir):
    """Without the released files, 06 prints where to get them and, with the fixture, reproduces the official
    code's samples token for token through the same official-checkpoint loading path."""
    missing = out_dir / "no_checkpoints"
    stdout = run_tutorial("06_official_checkpoints.py", out_dir, "--vae", str(missing / "vae.pth"),
                          "--var", str(missing / "var.pth"), "--fixture-dir", str(fixture_dir))
    assert "huggingface.co/FoundationVision/var" in stdout
    assert_png_files(out_dir, ["06_official_layout_samples.png"])
    assert stdout.count("tokens identical to the official run: True") == 2


@pytest.mark.slow
def test_06_official_checkpoints_samples_when_the_files_are_there(out_dir, official_weight_files):
    """With files at --vae/--var (here the fixture's official-layout weights stand in for the released ones), 06
    loads them through the official-checkpoint path, samples, and writes its figure."""
    stdout = run_tutorial("06_official_checkpoints.py", out_dir, "--vae", str(official_weight_files["vae"]),
                          "--var", str(official_weight_files["var"]))
    assert_png_files(out_dir, ["06_official_samples.png"])
    assert "4,612,867 parameters" in stdout and "1,375,620 parameters" in stdout


@pytest.mark.slow
def test_07_ablations_writes_every_row_of_the_table(out_dir):
    """07 trains the five models, samples the seven rows and writes the table: every row with finite numbers, the
    AR row as the cost reference (relative cost 1), AdaLN off with fewer parameters than on, a bigger row 7."""
    run_tutorial("07_ablations.py", out_dir)
    assert_png_files(out_dir, ["07_ablations.png", "07_ablation_samples.png"])
    rows = json.loads((out_dir / "07_ablations.json").read_text())["rows"]
    assert [row["row"] for row in rows] == list(range(1, 8))
    for row in rows:
        for key in ("params", "seconds_per_image", "relative_cost", "frechet_distance", "judge_accuracy"):
            assert math.isfinite(row[key]), f"row {row['row']}: {key} is {row[key]}"
        assert row["seconds_per_image"] > 0 and 0 <= row["judge_accuracy"] <= 1
    assert rows[0]["relative_cost"] == 1.0 and rows[0]["model"] == "ar"
    assert rows[1]["params"] < rows[2]["params"] < rows[6]["params"]
    assert rows[2]["params"] == rows[3]["params"] == rows[4]["params"], "rows 3-5 must share one model"
