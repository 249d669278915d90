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
COLUMNS = ["config", "params", "dtype", "mode", "batch", "steps/s", "images/s", "peak mem"]


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


def test_bench_token_cache_quick(tmp_path):
    """bench_token_cache.py --quick times train_var.py's step with and without the token cache, interleaved."""
    path = tmp_path / "cache.json"
    result = subprocess.run([sys.executable, str(BENCH / "bench_token_cache.py"), "--quick", "--json", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(path.read_text())
    assert [row["variant"] for row in saved["rows"]] == ["on the fly", "cache"]
    for row in saved["rows"]:
        assert 0 < row["min"] <= row["steps_per_s"] <= row["max"]
    assert saved["speedup"] == pytest.approx(saved["rows"][1]["steps_per_s"] / saved["rows"][0]["steps_per_s"])
