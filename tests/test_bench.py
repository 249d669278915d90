"""The benchmark scripts run end to end (bench/bench_var.py, bench/bench_tokenizer.py with --quick).

They are scripts, so they are run as a user would, in a subprocess; the tests check the printed table (every
expected row and column, positive rates) and the --json file, never the speed itself.
"""
import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
COLUMNS = ["config", "params", "dtype", "mode", "batch", "steps/s", "images/s", "peak mem", "MFU"]


def run_quick(script: str, json_path: pathlib.Path) -> list:
    """Run `script --quick --json json_path`; return the table as a list of {column: cell} dicts."""
    result = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--json", str(json_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    header = lines[0].split("  ")
    assert [cell.strip() for cell in header if cell.strip()] == COLUMNS, lines[0]
    assert set(lines[1]) == {"-", " "}  # the rule under the header
    # cells are separated by two or more spaces; "peak mem" holds a space itself, so split on runs of 2+
    return [dict(zip(COLUMNS, [cell.strip() for cell in line.split("  ") if cell.strip()])) for line in lines[2:]]


def check_rows(table: list, config: str, modes: list) -> None:
    """One row per (dtype, mode), in that order, with the --quick batch and positive, consistent rates."""
    assert [(r["dtype"], r["mode"]) for r in table] == [(d, m) for d in ("fp32", "bf16") for m in modes]
    for r in table:
        assert r["config"] == config and r["batch"] == "2"
        assert float(r["params"].rstrip("M")) > 0
        steps, images = float(r["steps/s"]), float(r["images/s"])
        assert steps > 0 and images > 0
        assert images == pytest.approx(2 * steps, rel=0.02)  # images/s = batch × steps/s (3 significant digits)
        assert r["peak mem"] == "-"  # CPU: no peak-memory counter
        if r["mode"] == "train" and config == "tiny" and "generate" in modes:  # bench_var: MFU of training rows
            assert float(r["MFU"].rstrip("%")) > 0
        else:
            assert r["MFU"] == "-"


def test_bench_var_quick(tmp_path):
    """bench_var.py --quick times training and KV-cached generation (with decode) in fp32 and bf16 autocast."""
    table = run_quick("bench_var.py", tmp_path / "var.json")
    check_rows(table, "tiny", ["train", "generate"])
    saved = json.loads((tmp_path / "var.json").read_text())
    assert len(saved["rows"]) == len(table) and saved["var_config"]["depth"] == 4
    assert all(r["steps_per_s"] > 0 for r in saved["rows"])


def test_bench_tokenizer_quick(tmp_path):
    """bench_tokenizer.py --quick times tokenizer training, encoding and decoding in fp32 and bf16 autocast."""
    table = run_quick("bench_tokenizer.py", tmp_path / "tokenizer.json")
    check_rows(table, "tiny", ["train", "encode", "decode"])
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert len(saved["rows"]) == len(table) and saved["vqvae_config"]["image_size"] == 32


def test_gpu_check_cpu_mode(tmp_path):
    """bench/gpu_check.py --cpu runs every check (kernels, train step, generation, batch search, bf16 vs fp32), so
    the CUDA script cannot rot: its JSON names a real SDPA kernel, positive rates, the capped batch search, and
    bf16 losses within 2% of fp32 on the same batch."""
    result = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--cpu", "--json", str(tmp_path / "g.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "g.json").read_text())
    assert saved["sdpa_training_mask"] and all("scaled_dot_product" in k for k in saved["sdpa_training_mask"])
    assert saved["sdpa_cached_generation"]
    assert saved["train"]["images_per_s"] > 0 and saved["generate"]["images_per_s"] > 0
    assert saved["largest_batch"] == {"d2": 4}  # a tiny model never runs out of memory: the search reaches its cap
    assert len(saved["losses"]["fp32"]) == len(saved["losses"]["bf16"]) == 3
    assert saved["largest_relative_loss_gap"] < 0.02


def test_largest_batch_search():
    """The batch search finds the exact boundary of a monotone 'fits' for every boundary, 0 when nothing fits."""
    sys.path.insert(0, str(BENCH))
    from gpu_check import largest_batch
    for boundary in range(0, 40):
        assert largest_batch(lambda b: b <= boundary, 1, 32) == min(boundary, 32)
