"""The released VAR weights by name: `download("d16")` fetches var_d16.pth from the official Hugging Face repository.

Paper: the VAR-d16 ... d36 models of Table 1 and Section 4, as the official repository releases them.

    from minvar.io.pretrained import download, load
    path = download("vae")                   # ~/.cache/minvar/vae_ch160v4096z32.pth (or $MINVAR_CACHE)
    vae, var = load("d16")                   # both files, loaded strictly, checked to fit together

Names: "vae" (the VQVAE tokenizer every VAR uses), "d16", "d20", "d24", "d30" (256px) and "d36" (512px), the files
the official README links (huggingface.co/FoundationVision/var). Nothing here runs at import; a download happens
only when `download` (or `load`, or `sample.py --pretrained`) is called.

A download goes to `<file>.part` in the cache folder, with a tqdm progress bar. A broken connection is retried, and
each retry resumes where the file stopped (an HTTP Range request; a local `file://` mirror is read from that offset).
The finished file is checked against `RELEASED`: its size and its SHA-256 where those are published. Only then is
it renamed to its final name, so a file under its final name in the cache is always a checked, complete one.

NOTE (what is and is not verified): minvar was written without internet access. The SHA-256 of var_d30.pth is the
one the Hugging Face page of the file shows (Git LFS details, repository commit 3cea5e87); the sizes and the other
hashes could not be read, so they are None: such a file is only checked for being complete, and its computed
SHA-256 is printed with the words "not verified", for the user to compare with the Hugging Face page.
"""
from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from minvar.io.official import load_official_var, load_official_vqvae
from minvar.sampling import check_pair

BASE_URL = "https://huggingface.co/FoundationVision/var/resolve/main"
CACHE_ENV = "MINVAR_CACHE"  # overrides the cache folder
DEFAULT_CACHE = Path("~/.cache/minvar")
CHUNK = 1 << 20  # bytes read per step of the download and of the hash


@dataclass(frozen=True)
class ReleasedFile:
    """One released file and what is published about it (None: not known to minvar, so not checked)."""
    filename: str  # name in the official repository and in the cache folder
    size: Optional[int]  # bytes
    sha256: Optional[str]  # hex digest of the whole file (the Git LFS object id)


RELEASED = {
    "vae": ReleasedFile("vae_ch160v4096z32.pth", None, None),
    "d16": ReleasedFile("var_d16.pth", None, None),
    "d20": ReleasedFile("var_d20.pth", None, None),
    "d24": ReleasedFile("var_d24.pth", None, None),
    "d30": ReleasedFile("var_d30.pth", None, "bd66c1709cc6950dcc76fcce357e212afa28d4c1e216a93b31934c027aea59ae"),
    "d36": ReleasedFile("var_d36.pth", None, None),
}


class DownloadError(RuntimeError):
    """A download that failed or gave a file that is not the released one, with what to do in the message."""


def cache_folder(cache_dir=None) -> Path:
    """`cache_dir`, else $MINVAR_CACHE, else ~/.cache/minvar."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_from(url: str, offset: int, timeout: float):
    """(response stream, bytes it will deliver or None, whether it starts at `offset`) for http(s) or file URLs."""
    if urllib.parse.urlparse(url).scheme == "file":  # a local mirror: seek instead of a Range request
        stream = open(urllib.request.url2pathname(urllib.parse.urlparse(url).path), "rb")
        total = os.fstat(stream.fileno()).st_size
        stream.seek(min(offset, total))
        return stream, total - min(offset, total), True
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    response = urllib.request.urlopen(request, timeout=timeout)
    length = response.headers.get("Content-Length")
    # 206 Partial Content: the server honoured the Range; 200: it sends the whole file again
    return response, int(length) if length else None, response.status == 206 or offset == 0


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to `part` (from its current size), with a progress bar."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        stream, remaining, resumed = _open_from(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # Range Not Satisfiable: the part already holds the whole file
            return
        raise
    if not resumed:
        offset = 0  # the server ignored the Range header: start over
    with stream, open(part, "ab" if offset else "wb") as out, \
            tqdm(total=None if remaining is None else offset + remaining, initial=offset, unit="B", unit_scale=True,
                 desc=part.name[:-len(".part")], disable=not progress) as bar:
        for block in iter(lambda: stream.read(CHUNK), b""):
            out.write(block)
            bar.update(len(block))


def download(name: str, cache_dir=None, base_url: str = BASE_URL, retries: int = 3, timeout: float = 60.0,
             progress: bool = True, retry_wait: float = 2.0) -> Path:
    """The path of released file `name` ("vae", "d16", ..., "d36") in the cache folder, downloaded if absent.

    Up to `retries` further attempts follow a failed one, each resuming the partial file after a pause that
    doubles (`retry_wait`, then twice that, ...).
    Raises DownloadError when every attempt fails (with where to put the file by hand) or when the file is not
    the released one (wrong size or SHA-256; the bad file is deleted).
    """
    if name not in RELEASED:
        raise ValueError(f"unknown released file {name!r}; choose one of {', '.join(RELEASED)}")
    entry = RELEASED[name]
    folder = cache_folder(cache_dir)
    target = folder / entry.filename
    if target.is_file():  # renamed only after its checks passed
        return target
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (entry.filename + ".part")
    url = f"{base_url.rstrip('/')}/{entry.filename}"
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, progress)
            if entry.size is None or part.stat().st_size >= entry.size:
                break
            error = OSError(f"the connection ended after {part.stat().st_size:,} of {entry.size:,} bytes")
        except (urllib.error.URLError, OSError, TimeoutError) as caught:  # HTTPError is a URLError
            error = caught
        if attempt < retries:
            time.sleep(retry_wait * 2 ** attempt)
    else:
        raise DownloadError(
            f"could not download {url} after {retries + 1} attempts ({type(error).__name__}: {error}). Without "
            f"internet access, download {entry.filename} elsewhere (from {BASE_URL}/{entry.filename}) and put it "
            f"at {target} (or point ${CACHE_ENV} at the folder that holds it)" +
            (f"; {part.name} keeps what arrived, and the next call resumes it." if part.exists() else "."))
    verify(part, entry)
    os.replace(part, target)
    return target


def verify(path: Path, entry: ReleasedFile) -> str:
    """Check a downloaded file's size and SHA-256 against the table; delete it and raise if they differ.

    Returns the computed SHA-256. Where the table has no published hash, says so and prints the computed one.
    """
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        path.unlink()
        raise DownloadError(f"{entry.filename}: {size:,} bytes arrived, the released file has {entry.size:,}; "
                            f"the download was deleted, run it again")
    digest = file_sha256(path)
    if entry.sha256 is None:
        print(f"{entry.filename}: SHA-256 {digest} (not verified: minvar has no published value for this file; "
              f"compare it with the Git LFS details on its Hugging Face page)")
    elif digest != entry.sha256:
        path.unlink()
        raise DownloadError(f"{entry.filename}: SHA-256 {digest} differs from the published {entry.sha256}; the "
                            f"file is damaged or not the released one. It was deleted: run the download again")
    return digest


def load(name: str, cache_dir=None, base_url: str = BASE_URL):
    """(vae, var) for a released transformer name ("d16" ... "d36"): both files downloaded if needed, loaded
    strictly (every key and shape), the tokenizer given the transformer's scale schedule (512px for d36)."""
    if name == "vae" or name not in RELEASED:
        raise ValueError(f"load() takes a transformer name ({', '.join(n for n in RELEASED if n != 'vae')}); "
                         f"for the tokenizer alone use load_official_vqvae(download('vae'))")
    var = load_official_var(download(name, cache_dir, base_url))
    vae = load_official_vqvae(download("vae", cache_dir, base_url), patch_nums=var.patch_nums)
    check_pair(var, vae)
    return vae, var
