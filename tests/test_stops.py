"""Runs that survive the real world (minvar/training/stops.py, minvar/training/run.py): clean stops, saves by the
clock, protected run folders, honest resumes, files that heal.

The signals are real: each training script runs as a subprocess (`python train_var.py`, as a user starts it), and
the test sends SIGINT, SIGTERM or SIGKILL once the run's log shows a training step. Every stopped run is resumed,
and the run pieced together from the stops ends with the weights and optimizer state of a run never stopped, bit
for bit (tiny models, fp32, one thread). The rest runs in-process, on tiny runs.
docs/results.md, Faults, lists every fault tried here and what minvar does.
"""
import errno
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

if str(REPO) not in sys.path:  # the scripts live at the repository root, beside the minvar package
    sys.path.insert(0, str(REPO))
import evaluate  # noqa: E402
import sample  # noqa: E402
import train_tokenizer  # noqa: E402
import train_var  # noqa: E402
from minvar.io import checkpoint as checkpoint_module  # noqa: E402
from minvar.training.distributed import Distributed  # noqa: E402
from minvar.training.stops import STOP_SIGNALS, StopSignals  # noqa: E402
from test_scripts import TOKENIZER_ARGS, VAR_ARGS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# fp32 and one thread: the same arithmetic in every process, so resumed runs can be compared bit for bit
EXACT = ["--precision", "fp32", "--threads", "1"]


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    """Weights and optimizer state identical, bit for bit."""
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and len(state_a) > 0
    for index in state_a:
        for name, value in state_a[index].items():
            assert torch.equal(value, state_b[index][name]), (index, name)


def logged_steps(out_dir) -> list:
    path = out_dir / "log.txt"
    return [int(s) for s in re.findall(r"^step (\d+) loss", path.read_text(), re.M)] if path.exists() else []


def launch(command: list, output):
    """A script in a subprocess from the repository root, its output (tqdm included) into a file, not a pipe (a
    full pipe would block it)."""
    with open(output, "w") as file:  # the child has its own copy of the file
        return subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=file,
                                stderr=subprocess.STDOUT)


def wait_until(condition, process, output, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the run ended before {what}:\n{output.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.02)


def stop(process, number: int, output) -> str:
    """Send the signal, wait for the exit; returns the run's output."""
    process.send_signal(number)
    process.wait(timeout=300)
    return output.read_text()


def start_and_wait_for_a_step(command: list, out_dir, output):
    """Start `command` and return its process once it has logged a step past those already in the log."""
    past = max(logged_steps(out_dir), default=0)
    process = launch(command, output)
    wait_until(lambda: max(logged_steps(out_dir), default=0) > past, process, output, "a training step")
    return process


def check_clean_stop(returncode: int, text: str, number: int, out_dir, command: list) -> int:
    """Exit 128 + signal, no traceback, one stop line naming the step, whose command is the run's own plus --resume,
    and the checkpoint (and the log) at that step. Returns the step."""
    assert returncode == 128 + number, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if "stopped at step" in line]
    assert len(lines) == 1, text[-3000:]
    step = int(re.search(r"stopped at step (\d+)", lines[0]).group(1))
    assert lines[0].startswith(signal.Signals(number).name)
    arguments = command[1:] + ([] if "--resume" in command else ["--resume"])
    assert lines[0].endswith("continue with: " + shlex.join(["python", *arguments])), lines[0]
    assert load(out_dir / "checkpoint.pt")["step"] == step == max(logged_steps(out_dir))  # the step it was in, saved
    return step


@pytest.fixture()
def no_sample_grid(monkeypatch):
    """Skip train_var's end-of-run sample grid in-process (the stopped runs' grids are off by --sample-every 0 and
    the end grid is exercised by tests/test_scripts.py)."""
    monkeypatch.setattr(train_var, "sample_grid", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    """A tokenizer trained for 3 steps (its tokens need not be good, only fixed)."""
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer.main(["--out-dir", str(out), "--steps", "3", *TOKENIZER_ARGS, *EXACT])
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def finished_var(tokenizer_path, tmp_path_factory):
    """A finished 4-step VAR run: (its folder, the flags it ran with). Tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("finished") / "var"
    flags = ["--tokenizer", str(tokenizer_path), *VAR_ARGS, "--steps", "4", *EXACT]
    with pytest.MonkeyPatch.context() as patch:  # no end-of-run sample grid (seconds on a small CPU)
        patch.setattr(train_var, "sample_grid", lambda *args, **kwargs: None)
        train_var.main(["--out-dir", str(out), *flags])
    return out, flags


def copy_of(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "run")


def exit_message(function, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        function(argv)
    assert isinstance(exit_info.value.code, str), "expected an error message, not a bare exit status"
    return exit_info.value.code


# ------------------------------------------------------------------------------------------------------------------
# 1-2. clean stops, saves by the clock, exact resume
def test_stop_signals_note_the_first_stop_and_a_second_ctrl_c_exits_at_once():
    """Once the steps have begun, a signal only sets the flag the training loop reads after its step (SIGUSR1 too,
    and a repeated SIGUSR1 changes nothing); a second Ctrl-C ends the process at once with SystemExit(130), which
    prints no traceback, and so does a first signal before the steps begin (nothing to finish or save). Afterwards
    the handlers that were there before are back (Ctrl-C is a KeyboardInterrupt again)."""
    before = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    with StopSignals(Distributed(), "runs/x") as stops, pytest.raises(SystemExit) as exit_info:
        os.kill(os.getpid(), signal.SIGTERM)  # before the first step: nothing to finish, so at once
        time.sleep(1)
    assert exit_info.value.code == 143 and stops.received is None
    with StopSignals(Distributed(), "runs/x") as stops:
        stops.begin_steps()
        assert stops.after_step(False, torch.device("cpu")) == (False, False)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stops.received == signal.SIGUSR1 and stops.after_step(True, torch.device("cpu")) == (True, True)
        with pytest.raises(SystemExit) as exit_info:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between two bytecodes of the main thread; it never gets this far
        assert exit_info.value.code == 130
    assert {number: signal.getsignal(number) for number in STOP_SIGNALS} == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_var_stops_on_sigint_and_sigterm_survives_sigkill_and_resumes_bit_for_bit(tokenizer_path, tmp_path,
                                                                                 no_sample_grid):
    """train_var.py: Ctrl-C (SIGINT) and SIGTERM each stop the run after the step it is in, with exit status 128 +
    signal, no traceback, the checkpoint of that step and one line naming the command with --resume. While a run
    lives its folder is refused to a second run, naming the first one's pid. A run that saves by the clock
    (--save-minutes) and is then SIGKILLed leaves a checkpoint and no lock: a resume starts at once. The run pieced
    together from the three stops and a last resume ends with an uninterrupted run's weights and optimizer state,
    bit for bit (so neither the stops nor the clock's saves change the trajectory)."""
    flags = ["--tokenizer", str(tokenizer_path), *VAR_ARGS, "--steps", "60", *EXACT]
    out = tmp_path / "stopped"
    command = [sys.executable, "train_var.py", "--out-dir", str(out), *flags]

    process = start_and_wait_for_a_step(command, out, tmp_path / "sigint.txt")
    message = exit_message(train_var.main, ["--out-dir", str(out), *flags, "--resume"])
    assert f"in use by another run (process {process.pid})" in message, message
    text = stop(process, signal.SIGINT, tmp_path / "sigint.txt")
    first = check_clean_stop(process.returncode, text, signal.SIGINT, out, command)

    command += ["--resume"]
    process = start_and_wait_for_a_step(command, out, tmp_path / "sigterm.txt")
    text = stop(process, signal.SIGTERM, tmp_path / "sigterm.txt")
    second = check_clean_stop(process.returncode, text, signal.SIGTERM, out, command)
    assert first < second < 60

    # saves by the clock: --save-minutes 0.0001 saves after nearly every step; SIGKILL cannot be caught
    process = start_and_wait_for_a_step(command + ["--save-minutes", "0.0001"], out, tmp_path / "sigkill.txt")
    wait_until(lambda: load(out / "checkpoint.pt")["step"] > second, process, tmp_path / "sigkill.txt",
               "checkpoint saved by the clock")
    process.kill()
    assert process.wait(timeout=300) == -signal.SIGKILL  # killed mid-run, not finished
    assert load(out / "checkpoint.pt")["step"] > second
    assert train_var.main(["--out-dir", str(out), *flags, "--resume", "--save-minutes", "10"]) == 0  # no stale lock

    train_var.main(["--out-dir", str(tmp_path / "straight"), *flags])
    assert_same_state(load(out / "checkpoint.pt"), load(tmp_path / "straight" / "checkpoint.pt"))
    assert "resume: --save-minutes 10.0 -> 0.0001" in (out / "log.txt").read_text()  # a change that is logged


def test_tokenizer_stops_on_sigint_and_sigterm_and_resumes_bit_for_bit(tmp_path):
    """train_tokenizer.py: SIGINT and SIGTERM each stop the run after the step it is in (exit 128 + signal, no
    traceback, the checkpoint of that step, one line naming --resume), and the twice-stopped run, resumed, ends with
    an uninterrupted run's weights (codebook-usage EMA included), optimizer state and dead-code restart generator,
    bit for bit."""
    flags = ["--steps", "24", *TOKENIZER_ARGS, *EXACT]
    out = tmp_path / "stopped"
    command = [sys.executable, "train_tokenizer.py", "--out-dir", str(out), *flags]
    process = start_and_wait_for_a_step(command, out, tmp_path / "sigint.txt")
    text = stop(process, signal.SIGINT, tmp_path / "sigint.txt")
    first = check_clean_stop(process.returncode, text, signal.SIGINT, out, command)
    command += ["--resume"]
    process = start_and_wait_for_a_step(command, out, tmp_path / "sigterm.txt")
    text = stop(process, signal.SIGTERM, tmp_path / "sigterm.txt")
    assert first < check_clean_stop(process.returncode, text, signal.SIGTERM, out, command) < 24

    assert train_tokenizer.main(["--out-dir", str(out), *flags, "--resume"]) == 0
    train_tokenizer.main(["--out-dir", str(tmp_path / "straight"), *flags])
    resumed, straight = load(out / "checkpoint.pt"), load(tmp_path / "straight" / "checkpoint.pt")
    assert_same_state(resumed, straight)
    assert torch.equal(resumed["restart_rng"], straight["restart_rng"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_sigterm_stops_both_processes_at_one_step_and_resumes_bit_for_bit(tokenizer_path, tmp_path):
    """Two processes under torchrun (gloo): a SIGTERM to the launcher, which forwards it to both workers, stops
    them after one and the same step (a worker that stopped alone would leave the other waiting in a collective,
    and torchrun would have to kill it), rank 0 alone writes one checkpoint of that step and prints one stop line,
    and no worker prints a traceback (torchrun itself reports the signal with its own). Resumed under torchrun, the
    run ends with an uninterrupted two-process run's weights and optimizer state, bit for bit."""
    flags = ["--tokenizer", str(tokenizer_path), *VAR_ARGS, "--steps", "60", "--batch-size", "2", *EXACT]

    def torchrun(out, *extra):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), "train_var.py", "--out-dir", str(out), *flags, *extra]

    out = tmp_path / "stopped"
    process = start_and_wait_for_a_step(torchrun(out), out, tmp_path / "sigterm.txt")
    text = stop(process, signal.SIGTERM, tmp_path / "sigterm.txt")
    assert "Unable to shutdown process" not in text, text[-3000:]  # torchrun did not have to SIGKILL a worker
    assert not re.search(r'File "[^"]*(train_var\.py|minvar)', text), text[-3000:]  # no worker traceback
    lines = [line for line in text.splitlines() if "stopped at step" in line]
    assert len(lines) == 1 and lines[0].startswith("SIGTERM") and "--resume" in lines[0], text[-3000:]
    step = int(re.search(r"stopped at step (\d+)", lines[0]).group(1))
    assert load(out / "checkpoint.pt")["step"] == step == max(logged_steps(out)) < 60

    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in (torchrun(out, "--resume"), torchrun(tmp_path / "straight")):
        result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    assert_same_state(load(out / "checkpoint.pt"), load(tmp_path / "straight" / "checkpoint.pt"))


# ------------------------------------------------------------------------------------------------------------------
# 3. protected run folders
def test_new_run_into_a_run_folder_is_refused_and_move_old_run_moves_it_aside(finished_var, tmp_path, capsys,
                                                                              no_sample_grid):
    """A new run (no --resume) into a folder that holds a checkpoint is refused, with a message naming --resume, a
    new --out-dir and --move-old-run, and the folder is left as it was; --move-old-run moves the old run, whole, to
    a new sibling folder it names, and the new run starts in the emptied folder."""
    folder, flags = finished_var
    run = copy_of(folder, tmp_path)
    before = load(run / "checkpoint.pt")
    message = exit_message(train_var.main, ["--out-dir", str(run), *flags])
    assert str(run) in message and "--resume" in message and "--out-dir" in message and "--move-old-run" in message
    assert_same_state(load(run / "checkpoint.pt"), before)

    capsys.readouterr()
    train_var.main(["--out-dir", str(run), *flags, "--steps", "1", "--move-old-run"])
    moved = tmp_path / "run-old-1"
    assert f"moved the old run in {run} to {moved}" in capsys.readouterr().out
    assert_same_state(load(moved / "checkpoint.pt"), before)
    assert sorted(os.listdir(moved)) == sorted(set(os.listdir(folder)) - {"run.lock"})
    assert load(run / "checkpoint.pt")["step"] == 1 and max(logged_steps(run)) == 1  # a new log, not the old one


# ------------------------------------------------------------------------------------------------------------------
# 4. honest resume
def test_resume_refuses_contradicting_flags_and_takes_left_out_ones_from_the_checkpoint(finished_var, tmp_path,
                                                                                     no_sample_grid):
    """--resume with flags that contradict the checkpoint (architecture, batch size, seed) is an error naming each
    flag with both values, before anything is trained; a default is not a choice, so flags left out take the
    checkpoint's values (`--resume --steps 6` alone trains on with batch 4, not the recipe's 16), and a flag that may
    change (--steps) is logged."""
    folder, flags = finished_var
    run = copy_of(folder, tmp_path)
    message = exit_message(train_var.main, ["--out-dir", str(run), *flags, "--resume", "--depth", "6",
                                            "--batch-size", "8", "--seed", "3"])
    for contradiction in ("--depth 6 (the checkpoint's: 1)", "--batch-size 8 (the checkpoint's: 4)",
                          "--seed 3 (the checkpoint's: 0)"):
        assert contradiction in message, message
    assert "--steps" in message  # the flags that may change are listed
    assert load(run / "checkpoint.pt")["step"] == 4

    assert train_var.main(["--out-dir", str(run), "--resume", "--steps", "6"]) == 0
    resumed = load(run / "checkpoint.pt")
    assert resumed["step"] == 6 and resumed["args"]["batch_size"] == 4 and resumed["args"]["depth"] == 1
    assert "resume: --steps 4 -> 6" in (run / "log.txt").read_text()
    assert "--resume" in train_var.build_parser().format_help() and "may differ" in train_var.build_parser().format_help()


# ------------------------------------------------------------------------------------------------------------------
# 5. files that heal
def test_truncated_token_cache_is_rebuilt_with_a_one_line_warning(finished_var, tmp_path, capsys, no_sample_grid):
    """A token cache cut short (a copy interrupted, a full disk) is rebuilt, with one line naming it, instead of a
    torch.load traceback; the resumed run trains on and the new cache reads back."""
    folder, flags = finished_var
    run = copy_of(folder, tmp_path)
    cache = run / "token_cache.pt"
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    capsys.readouterr()
    assert train_var.main(["--out-dir", str(run), *flags, "--resume", "--steps", "5"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
    assert len(warnings) == 1 and str(cache) in warnings[0] and "rebuilding" in warnings[0], warnings
    assert load(cache)["kind"] == "minvar-token-cache" and load(run / "checkpoint.pt")["step"] == 5


def test_truncated_checkpoint_on_resume_is_an_error_in_words(finished_var, tmp_path):
    """A checkpoint cut short outside minvar (minvar's own writes are atomic) cannot be rebuilt: --resume ends with
    one message naming the file and asking whether it is complete, not a torch.load traceback."""
    folder, flags = finished_var
    run = copy_of(folder, tmp_path)
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:4096])
    message = exit_message(train_var.main, ["--out-dir", str(run), *flags, "--resume"])
    assert str(checkpoint) in message and "is the file complete" in message, message


def test_failed_save_keeps_the_previous_checkpoint_and_says_why(tokenizer_path, tmp_path, monkeypatch,
                                                                no_sample_grid):
    """A checkpoint write that fails halfway (a full disk: OSError ENOSPC) ends the run with one message naming the
    folder and the reason, no traceback; the previous checkpoint is intact, no temporary file is left, and the lock
    is released: once there is space again, --resume continues."""
    real_save = torch.save

    def disk_full_at_step_4(obj, file, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("kind") == "minvar-var" and obj["step"] == 4:
            file.write(b"x" * 1000)  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, file, *args, **kwargs)

    run = tmp_path / "run"
    flags = ["--out-dir", str(run), "--tokenizer", str(tokenizer_path), *VAR_ARGS, "--steps", "4", "--save-every", "2",
             *EXACT]
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module.torch, "save", disk_full_at_step_4)
        message = exit_message(train_var.main, flags)
    assert str(run) in message and os.strerror(errno.ENOSPC) in message and "intact" in message, message
    assert load(run / "checkpoint.pt")["step"] == 2
    assert not [name for name in os.listdir(run) if name.startswith(".tmp-")]
    assert train_var.main([*flags, "--resume"]) == 0 and load(run / "checkpoint.pt")["step"] == 4


# ------------------------------------------------------------------------------------------------------------------
# sampling and evaluation
def test_sample_ctrl_c_keeps_the_finished_samples(finished_var, tmp_path, monkeypatch, capsys):
    """Ctrl-C during sample.py: exit status 130, one line, no traceback, and the PNGs of the batches finished before
    it are kept (samples.npz, which must hold every sample, is not written)."""
    calls = []
    real_generate = sample.generate

    def interrupted_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(sample, "generate", interrupted_second_batch)
    out = tmp_path / "samples"
    status = sample.main(["--checkpoint", str(finished_var[0] / "checkpoint.pt"), "--device", "cpu", "--classes",
                          "red circle,blue ring", "--per-class", "2", "--batch-size", "2", "--out-dir", str(out)])
    assert status == 130
    assert "stopped by Ctrl-C; kept the 2 samples" in capsys.readouterr().out
    assert len(list((out / "images").glob("*red_circle.png"))) == 2 and not (out / "samples.npz").exists()


def test_evaluate_ctrl_c_ends_with_one_line(tokenizer_path, tmp_path, monkeypatch, capsys):
    """Ctrl-C during evaluate.py: exit status 130 and one line saying what is kept, instead of a traceback; no
    half report is written."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "real_images", interrupted)
    out = tmp_path / "ceiling.json"
    assert evaluate.main(["--tokenizer-only", "8", "--tokenizer", str(tokenizer_path), "--out", str(out)]) == 130
    assert "evaluate.py: stopped by Ctrl-C" in capsys.readouterr().out and not out.exists()
