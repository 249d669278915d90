"""minvar's own self-describing run checkpoints (tokenizer, VAR, AR baseline), and loading either kind of file
(minvar's or the released official ones) into a model.

Paper: the models of Section 3.2 and Table 1, as released by the official repository (docs/official_model.md).

A minvar run checkpoint is one dict: {"kind", "config", "model", "optimizer", "step", "class_names",
"minvar_version", ...}, written atomically (temporary file, then rename), so a kill during a save never leaves a
broken latest checkpoint. `load_tokenizer` and `load_var` also accept the released official files, through
minvar/io/official.py, whose safe reading (`read_file`, weights_only=True) and readable strict loading they share.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, fields
from typing import Any, Dict

import torch

from minvar.ar import AR, ARConfig
from minvar.io.official import (CheckpointError, kind_of_state_dict, load_official_var, load_official_vqvae, read_file,
                                strict_load)
from minvar.var import VAR, VARConfig
from minvar.vqvae import VQVAE, VQVAEConfig

MINVAR_VERSION = "0.1.0"  # written into every checkpoint; minvar.__version__ and pyproject.toml's version are this



# ----------------------------------------------------------------------------------------------------------------
# minvar run checkpoints
def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then `os.replace`: atomic on POSIX and Windows, so readers
    (and a run killed during a save) see the old or the new file, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # the temporary file must sit in the destination's folder: os.replace is atomic only within one file system
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(handle, "wb") as file:
            try:
                torch.save(obj, file)
            except RuntimeError as error:
                # torch's zip writer reports a short write (a full disk) as RuntimeError("... unexpected pos ...");
                # it is an OSError like any other failed write, and callers handle it as one
                raise OSError(f"writing {temporary} failed ({error})") from error
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt too: never leave a half-written temporary file behind
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def save_checkpoint(path: str, kind: str, model: torch.nn.Module, config, step: int, class_names=None,
                    optimizer=None, **extra) -> None:
    """Write one self-describing checkpoint atomically: a temporary file in the same folder, then `os.replace`."""
    # the version goes into the file, for whoever reads it in a year
    payload = {"kind": kind, "minvar_version": MINVAR_VERSION, "config": asdict(config),
               "model": model.state_dict(), "step": int(step), "class_names": list(class_names or []),
               "optimizer": optimizer.state_dict() if optimizer is not None else None, **extra}
    atomic_save(payload, path)


def load_checkpoint(path_or_dict, kind: str) -> Dict[str, Any]:
    """Read a minvar checkpoint of one kind ('minvar-tokenizer', 'minvar-var', 'minvar-ar'), with clear errors."""
    data = read_file(path_or_dict)
    where = path_or_dict if isinstance(path_or_dict, (str, os.PathLike)) else "the checkpoint"
    found = data.get("kind")
    if found is None:
        guess = kind_of_state_dict(data)
        hint = "" if guess == "unknown" else f"; it looks like an official {guess} file: use load_official_{guess}"
        raise CheckpointError(f"{where} is not a minvar checkpoint (no 'kind' field){hint}")
    if found != kind:
        raise CheckpointError(f"{where} is a {found!r} checkpoint, but a {kind!r} one is needed here")
    return data


def config_from_dict(config_class, values: Dict[str, Any]):
    """Rebuild a config dataclass, refusing fields this version does not know (a mismatched config)."""
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(f"the checkpoint's {config_class.__name__} has fields {unknown} that this minvar "
                              f"version does not know; was it written by another version?")
    # asdict() keeps tuples, but a checkpoint written as JSON-like data may hold them as lists (patch_nums): the
    # configs compare and hash their schedules as tuples, so they are turned back
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config_class(**values)


def load_tokenizer(path_or_dict) -> VQVAE:
    """A minvar tokenizer checkpoint, or an official VQVAE state dict, -> a frozen VQVAE in eval mode."""
    data = read_file(path_or_dict)
    if "kind" not in data and kind_of_state_dict(data) == "vqvae":  # the released vae_ch160v4096z32.pth
        return load_official_vqvae(data)
    data = load_checkpoint(path_or_dict if "kind" not in data else data, "minvar-tokenizer")
    vae = VQVAE(config_from_dict(VQVAEConfig, data["config"]))
    # EMA weights, when the run kept them, are the ones to use: they are the smoother of the two
    strict_load(vae, data.get("ema_model") or data["model"], "VQVAE")
    return vae.eval().requires_grad_(False)


def load_var(path_or_dict, use_ema: bool = True) -> VAR:
    """A minvar VAR checkpoint (its EMA weights if present and `use_ema`) or an official one -> VAR in eval mode."""
    data = read_file(path_or_dict)
    if "kind" not in data and kind_of_state_dict(data) == "var":  # a released var_dN.pth
        return load_official_var(data)
    data = load_checkpoint(path_or_dict if "kind" not in data else data, "minvar-var")
    var = VAR(config_from_dict(VARConfig, data["config"]))  # the architecture from the config, then strict weights
    weights = data["ema_model"] if use_ema and data.get("ema_model") is not None else data["model"]
    if weights is not data["model"]:
        # Buffers are not learned, so the live model's are the right ones. Runs of minvar before the EMA copied
        # buffers averaged the block-causal mask too, and -inf minus -inf left NaN in the EMA's copy.
        weights = {**weights, **{name: data["model"][name] for name, _ in var.named_buffers() if name in weights}}
    strict_load(var, weights, "VAR")
    return var.eval()


def save_ar(path: str, ar: AR, step: int, class_names=None, optimizer=None, **extra) -> None:
    """A self-describing checkpoint of the raster-scan baseline (kind "minvar-ar"), written atomically."""
    save_checkpoint(path, "minvar-ar", ar, ar.config, step, class_names, optimizer, **extra)


def load_ar(path_or_dict) -> AR:
    """An AR checkpoint written by `save_ar` -> AR in eval mode (weights_only loading, errors in words)."""
    data = load_checkpoint(path_or_dict, "minvar-ar")
    ar = AR(config_from_dict(ARConfig, data["config"]))
    strict_load(ar, data["model"], "AR")
    return ar.eval()
