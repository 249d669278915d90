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
def test_05_scaling_laws_fits_an_irreducible_term_and_an_interval(out_dir):
    """05's lesson, at its --fast settings: over five sizes trained alike (two seeds each), the biggest model's mean
    held-out loss is below the smallest's and the pure power law L = a·N^b falls (b < 0); the fit L = E + A·N^-α
    returns an irreducible term E below every measured loss, α > 0, and a bootstrap interval for α; the sizes'
    per-seed losses are reported, and the printed means are their means.

    Measured at the --fast settings (4 steps × 4 images, stand-in tokenizer): d1 6.19, d5 5.99-6.02, b near -0.008.
    A broken ladder (every size the same model), a fit on the wrong axis, an E above the data or a bootstrap that
    never varies the seeds would not show it."""
    run_tutorial("05_scaling_laws.py", out_dir)
    assert_png_files(out_dir, ["scaling.png"])
    report = json.loads((out_dir / "scaling.json").read_text())
    sizes = sorted(report["sizes"], key=lambda size: size["params"])
    assert len(sizes) >= 5
    assert len({size["params"] for size in sizes}) == len(sizes), "two sizes are the same"
    for size in sizes:
        assert len(size["final_losses"]) == len(report["settings"]["seeds"]) >= 2
        assert size["final_loss"] == pytest.approx(sum(size["final_losses"]) / len(size["final_losses"]))
        assert len(set(size["final_losses"])) > 1, "the seeds trained identical models"
    assert sizes[-1]["final_loss"] < sizes[0]["final_loss"], "the biggest model did not beat the smallest"
    assert report["fit_params"]["exponent"] < 0, "the fitted loss does not fall with model size"
    fit = report["fit_irreducible"]
    assert 0 <= fit["E"] < min(size["final_loss"] for size in sizes)
    assert fit["alpha"] > 0 and fit["A"] > 0
    low, high = fit["alpha_interval_95"]
    assert math.isfinite(low) and math.isfinite(high) and 0 < low <= high
    # the fitted curve passes near the points it was fitted to (R² in L, not in log L)
    assert fit["r2"] > 0.5
    assert len(report["sizes_separated"]) == len(sizes) - 1


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


@pytest.fixture(scope="module")
def ablations(out_dir):
    """07 in --fast mode (two seeds, both protocols), run once for the tests below: (report, stdout)."""
    stdout = run_tutorial("07_ablations.py", out_dir)
    return json.loads((out_dir / "07_ablations.json").read_text()), stdout


@pytest.mark.slow
def test_07_ablations_lists_every_row_of_both_tables(out_dir, ablations):
    """07.json lists rows 1-7 of the equal-steps table (the paper's protocol) and of the equal-FLOPs table, each with
    the fields docs and tests read (row, protocol, steps, seeds, fd_mean, fd_std, judge_mean, relative_cost), finite;
    the means are the means of the per-seed values, and so is each paired (within-seed) difference to the row above;
    the AR row is the cost reference; rows 3-5 share one model."""
    report, _ = ablations
    assert_png_files(out_dir, ["07_ablations.png", "07_ablation_samples.png"])
    rows = report["rows"]
    assert [(r["protocol"], r["row"]) for r in rows] == [(p, i) for p in ("equal_steps", "equal_flops")
                                                        for i in range(1, 8)]
    for r in rows:
        for key in ("steps", "seeds", "fd_mean", "fd_std", "judge_mean", "relative_cost"):
            assert math.isfinite(r[key]), f"{r['protocol']} row {r['row']}: {key} is {r[key]}"
        assert r["seeds"] == len(r["fd_per_seed"]) == len(report["seeds"]) >= 2
        assert r["fd_mean"] == pytest.approx(sum(r["fd_per_seed"]) / r["seeds"])
        assert r["fd_std"] >= 0 and 0 <= r["judge_mean"] <= 1
        assert r["paper_note"] == ("quoted from MaskGIT" if r["row"] == 1 else "")
    for protocol in ("equal_steps", "equal_flops"):
        table = [r for r in rows if r["protocol"] == protocol]
        assert table[0]["relative_cost"] == 1.0 and table[0]["model"] == "ar"
        assert table[0]["sequential_steps"] > table[1]["sequential_steps"], "VAR must take fewer sequential steps"
        assert table[1]["params"] < table[2]["params"] < table[6]["params"]
        assert table[2]["held_out_loss_mean"] == table[3]["held_out_loss_mean"] == table[4]["held_out_loss_mean"]
        for r in table[1:]:  # the paired (within-seed) difference has the difference of the means as its mean
            paired = r["fd_paired_delta_to_previous"]
            assert paired["mean"] == pytest.approx(r["fd_mean"] - table[r["row"] - 2]["fd_mean"], abs=1e-9)
            assert paired["std"] >= 0


@pytest.mark.slow
def test_07_protocols_give_equal_steps_or_equal_flops(ablations):
    """Equal steps (the paper's protocol): every row trains as many steps as the AR row, the scale-up row included.
    Equal FLOPs: every model's counted training FLOPs are the budget (row 6's), up to rounding to whole steps, so the
    cheaper AR trains more steps than row 6 and the bigger row 7 fewer."""
    report, _ = ablations
    steps_table = [r for r in report["rows"] if r["protocol"] == "equal_steps"]
    assert all(r["steps"] == steps_table[0]["steps"] for r in steps_table)
    assert steps_table[6]["steps"] >= steps_table[5]["steps"]
    flops_table = [r for r in report["rows"] if r["protocol"] == "equal_flops"]
    budget = report["equal_flops_budget"]
    for r in flops_table:
        per_step = report["flops_per_training_step"][r["model"]]
        assert r["training_flops"] == r["steps"] * per_step
        assert abs(r["training_flops"] - budget) <= per_step / 2 + 1e-6 * budget, f"row {r['row']} is off budget"
    assert flops_table[0]["steps"] > flops_table[5]["steps"] > flops_table[6]["steps"]


@pytest.mark.slow
def test_07_rows_1_and_2_differ_only_in_order_and_tokenizer(ablations):
    """Row 2 (VAR without AdaLN) has the AR's depth, width, heads, FFN ratio, label dropout, init scale and its
    attention temperature 1/√head_dim (attn_scale_mul 1.0, no attention normalization); the AdaLN rows keep the
    official 0.25/√head_dim. Every row trains with the same recipe and a learning rate from the sweep's candidates."""
    report, _ = ablations
    ar, row2, row3 = (report["configs"][name] for name in ("ar", "ar_to_var", "adaln"))
    for key in ("depth", "width", "num_heads", "mlp_ratio", "num_classes", "vocab_size", "cond_drop_rate",
                "norm_eps", "init_head", "init_std", "drop_rate"):
        assert row2[key] == ar[key], key
    assert row2["attn_scale_mul"] == 1.0 and not row2["attn_l2_norm"] and not row2["adaln"]
    assert row3["attn_scale_mul"] == 0.25 and row3["adaln"]
    candidates = [float(x) for x in report["settings"]["learning_rates"].split(",")]
    assert all(r["learning_rate"] in candidates for r in report["rows"])
    for name, entry in report["learning_rate_sweep"].items():  # the chosen rate is the sweep's lowest loss
        assert entry["chosen"] == float(min(entry["losses"], key=entry["losses"].get)) == report["learning_rates"][name]


@pytest.mark.slow
def test_07_reports_class_information_per_scale_and_the_right_chance(ablations):
    """Per row: held-out loss with the true and the null label, per scale (K scales for VAR, one map for the AR);
    the class information is null − true, overall and per scale. Chance is 1/15 for the 15 shape classes (printed).
    Both tokenizers report codebook use in (0, 1] and a reconstruction distance per seed."""
    report, stdout = ablations
    assert report["num_classes"] == 15 and report["chance"] == pytest.approx(1 / 15)
    assert "chance 0.067" in stdout
    scales = len(report["configs"]["attn_norm"]["patch_nums"])
    for r in report["rows"]:
        per_scale_true, per_scale_null = r["held_out_loss_per_scale_true"], r["held_out_loss_per_scale_null"]
        assert len(per_scale_true) == len(per_scale_null) == (1 if r["model"] == "ar" else scales)
        assert r["class_information_per_scale"] == pytest.approx([n - t for n, t in zip(per_scale_null,
                                                                                         per_scale_true)])
        assert r["class_information_mean"] == pytest.approx(r["held_out_loss_null_mean"] - r["held_out_loss_mean"],
                                                            abs=1e-6)
    for name in ("multi_scale", "one_scale"):
        entries = report["tokenizers"][name]
        assert [e["seed"] for e in entries] == report["seeds"]
        assert len({e["fingerprint"] for e in entries}) == len(entries), "the seeds share a tokenizer"
        for e in entries:
            assert 0 < e["usage"] <= 1 and math.isfinite(e["frechet_distance"]) and math.isfinite(e["psnr"])


def test_reuse_is_keyed_on_every_setting(tmp_path):
    """A cached run is reused only when every setting matches: changing any one entry (seed, learning rate,
    tokenizer fingerprint, data) names another file, and a file whose stored settings differ is not reused."""
    sys.path.insert(0, str(REPO / "tutorials"))
    import common
    settings = dict(model="ar", steps=10, learning_rate=1e-3, seed=0, tokenizer="abc", data={"seed": 0})
    path, reusable = common.cached(str(tmp_path), settings)
    assert not reusable
    Path(path).write_bytes(b"checkpoint")
    assert not common.cached(str(tmp_path), settings)[1], "reused before the settings were marked"
    common.mark_cached(path, settings)
    assert common.cached(str(tmp_path), settings) == (path, True)
    for key, value in [("steps", 11), ("learning_rate", 3e-3), ("seed", 1), ("tokenizer", "abd"),
                       ("data", {"seed": 1})]:
        other_path, other_reusable = common.cached(str(tmp_path), {**settings, key: value})
        assert other_path != path and not other_reusable, key
    Path(path[:-3] + ".json").write_text(json.dumps({**settings, "seed": 5}))  # a stale or colliding settings file
    assert not common.cached(str(tmp_path), settings)[1]


def test_tutorial_flags_survive_a_notebook_kernel(monkeypatch, tmp_path):
    """Inside a notebook kernel the kernel's own arguments (`-f kernel.json`) are not parsed: the flags come from
    MINVAR_TUTORIAL_ARGS; from a shell an unknown flag is still an error."""
    sys.path.insert(0, str(REPO / "tutorials"))
    import common
    with pytest.raises(SystemExit):
        common.parse_args("test", argv=["-f", "/tmp/kernel.json", "--out-dir", str(tmp_path)])
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # any module object: only its presence is looked at
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/tmp/kernel.json"])
    monkeypatch.setenv("MINVAR_TUTORIAL_ARGS", f"--fast --out-dir '{tmp_path}'")
    args = common.parse_args("test")
    assert args.fast and args.seed == 0 and args.out_dir == str(tmp_path)
