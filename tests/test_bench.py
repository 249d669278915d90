"""The benchmark scripts run end to end (bench/bench_var.py, bench/bench_tokenizer.py with --quick).

They are scripts, so they are run as a user would, in a subprocess; the tests check the printed table (every
expected row and column, positive rates) and the --json file, never the speed itself.
"""
import json
import pathlib
import subprocess
import sys

import pytest

from minvar import VAR, VARConfig, VQVAE, VQVAEConfig

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
pytestmark = pytest.mark.slow  # each test runs a benchmark script in a subprocess
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
        if r["mode"] == "train":  # both benches give training rows their MFU (minvar/evaluation/flops.py)
            assert 0 < float(r["MFU"].rstrip("%")) < 100
        else:
            assert r["MFU"] == "-"


def check_json(saved: dict, table: list, model) -> None:
    """The --json rows are the printed rows, and describe the model that was timed.

    `model` is rebuilt here from the saved config, so its parameter count is computed independently of the script.
    """
    rows = saved["rows"]
    assert len(rows) == len(table)
    for r, printed in zip(rows, table):
        assert (r["dtype"], r["mode"]) == (printed["dtype"], printed["mode"])
        assert r["steps_per_s"] > 0 and r["images_per_s"] == pytest.approx(r["batch"] * r["steps_per_s"])
        assert float(printed["steps/s"]) == pytest.approx(r["steps_per_s"], rel=0.01)  # printed with 3 digits
        assert r["params_m"] * 1e6 == pytest.approx(sum(p.numel() for p in model.parameters()))


def config_from_json(config_class, saved_config: dict):
    """A config dataclass from the JSON copy (the preset name dropped, lists back to tuples)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved_config.items() if k != "name"}
    return config_class(**values)


def test_bench_var_quick(tmp_path):
    """bench_var.py --quick times training and KV-cached generation (with decode) in fp32 and bf16 autocast."""
    table = run_quick("bench_var.py", tmp_path / "var.json")
    check_rows(table, "tiny", ["train", "generate"])
    saved = json.loads((tmp_path / "var.json").read_text())
    assert saved["var_config"]["depth"] == 4
    check_json(saved, table, VAR(config_from_json(VARConfig, saved["var_config"])))


def test_bench_tokenizer_quick(tmp_path):
    """bench_tokenizer.py --quick times tokenizer training, encoding and decoding in fp32 and bf16 autocast."""
    table = run_quick("bench_tokenizer.py", tmp_path / "tokenizer.json")
    check_rows(table, "tiny", ["train", "encode", "decode"])
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["vqvae_config"]["image_size"] == 32
    check_json(saved, table, VQVAE(config_from_json(VQVAEConfig, saved["vqvae_config"])))


@pytest.fixture(scope="module")
def cost_quick(tmp_path_factory):
    """bench_cost.py --quick, run once: (its JSON, the figure's path)."""
    figure = tmp_path_factory.mktemp("bench_cost") / "cost.png"
    result = subprocess.run([sys.executable, str(BENCH / "bench_cost.py"), "--quick", "--out", str(figure)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(figure.with_suffix(".json").read_text()), figure


def test_bench_cost_quick(cost_quick):
    """bench_cost.py --quick measures AR (with and without KV cache) and VAR at two sides and fits exponents: the
    step counts are n² and K exactly, recomputing the prefix costs more FLOPs than the cache, and the figure and
    JSON are written."""
    saved, figure = cost_quick
    rows = {(r["side"], r["variant"]): r for r in saved["rows"]}
    assert rows[(4, "AR, KV cache")]["steps"] == 16 and rows[(4, "VAR")]["steps"] == 4
    assert rows[(4, "AR, no cache")]["flops"] > rows[(4, "AR, KV cache")]["flops"] > 0
    assert all(r["seconds"] > 0 for r in saved["rows"])
    assert set(saved["exponents"]) == {"AR, KV cache", "AR, no cache", "VAR"}
    assert saved["exponents"]["AR, no cache"]["steps"] == pytest.approx(2.0)
    assert figure.is_file() and figure.stat().st_size > 1000


def test_bench_cost_table_at_two_batches(cost_quick):
    """bench_cost.py's cost table (--quick: a 4×4 map at batch 1 and 2): every variant at every batch, the exact
    sequential steps (n² for the AR, K for VAR), counted FLOPs per image that do not depend on the batch, and the
    lesson of the FLOP column: VAR does MORE arithmetic than the KV-cached AR and less than the AR that recomputes
    its prefix (so any wall-time win over a cached AR comes from the step count, not from arithmetic)."""
    table = {(r["side"], r["batch"], r["variant"]): r for r in cost_quick[0]["table"]}
    assert set(table) == {(4, b, v) for b in (1, 2) for v in ("AR, KV cache", "AR, no cache", "VAR")}
    for batch in (1, 2):
        assert table[(4, batch, "AR, KV cache")]["steps"] == table[(4, batch, "AR, no cache")]["steps"] == 16
        assert table[(4, batch, "VAR")]["steps"] == 4
        assert table[(4, batch, "AR, KV cache")]["var_flops_ratio"] > 1 > table[(4, batch, "AR, no cache")][
            "var_flops_ratio"]
        assert all(r["seconds_per_image"] > 0 for r in table.values())
    for variant in ("AR, KV cache", "AR, no cache", "VAR"):
        assert table[(4, 2, variant)]["flops_per_image"] == pytest.approx(table[(4, 1, variant)]["flops_per_image"])


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
