"""Released weights by name (minvar/io/pretrained.py), exercised on a local file:// "mirror" and a temporary table entry.

Nothing here touches the network: the tests point `base_url` at a temporary folder and add a table entry whose size
and SHA-256 are computed from the file the test wrote. What is protected: a truncated or altered download is
refused and deleted, the right one is accepted and cached under its final name, a partial download is resumed
(not restarted), and an unreachable server ends in an error that says where to put the file by hand.
"""
import hashlib
import os

import pytest

from minvar.io import pretrained
from minvar.io.pretrained import DownloadError, ReleasedFile, download

PAYLOAD = os.urandom(3 * pretrained.CHUNK + 12345)  # a few read steps, not a whole number of them


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    """(base_url, server folder, cache folder) with a table entry "test" -> test.pth describing PAYLOAD."""
    server, cache = tmp_path / "server", tmp_path / "cache"
    server.mkdir()
    entry = ReleasedFile("test.pth", len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(pretrained.RELEASED, "test", entry)
    return server.as_uri(), server, cache


def fetch(base_url, cache, **kwargs):
    return download("test", cache_dir=cache, base_url=base_url, retries=1, retry_wait=0, progress=False, **kwargs)


def test_the_right_file_is_accepted_and_cached(mirror):
    """The published size and hash match: the file lands under its final name, and a second call reuses it."""
    base_url, server, cache = mirror
    (server / "test.pth").write_bytes(PAYLOAD)
    path = fetch(base_url, cache)
    assert path == cache / "test.pth" and path.read_bytes() == PAYLOAD
    assert not (cache / "test.pth.part").exists()
    (server / "test.pth").unlink()  # no server any more: the cached, checked file is enough
    assert fetch(base_url, cache) == path


@pytest.mark.parametrize("size_known", [True, False])
def test_truncated_download_is_refused(mirror, size_known, monkeypatch):
    """A server that delivers only part of the file: refused (by size, or by hash where no size is published)."""
    base_url, server, cache = mirror
    if not size_known:
        entry = ReleasedFile("test.pth", None, hashlib.sha256(PAYLOAD).hexdigest())
        monkeypatch.setitem(pretrained.RELEASED, "test", entry)
    (server / "test.pth").write_bytes(PAYLOAD[:-1000])
    expected = f"ended after {len(PAYLOAD) - 1000:,} of {len(PAYLOAD):,} bytes" if size_known else "SHA-256 .* differs"
    with pytest.raises(DownloadError, match=expected):
        fetch(base_url, cache)
    assert not (cache / "test.pth").exists()  # never under the final name


def test_altered_download_is_refused_and_deleted(mirror):
    """One changed byte, same size: the SHA-256 differs, the file is deleted and never gets its final name."""
    base_url, server, cache = mirror
    altered = bytearray(PAYLOAD)
    altered[len(altered) // 2] ^= 0xFF
    (server / "test.pth").write_bytes(bytes(altered))
    with pytest.raises(DownloadError, match="differs from the published"):
        fetch(base_url, cache)
    assert not (cache / "test.pth").exists() and not (cache / "test.pth.part").exists()


def test_partial_download_is_resumed(mirror):
    """A .part holding the first half is continued, not restarted: the server's copy now has garbage in its first
    half, so only a download that keeps the partial file's bytes and fetches the rest gives the published hash."""
    base_url, server, cache = mirror
    half = len(PAYLOAD) // 2
    cache.mkdir()
    (cache / "test.pth.part").write_bytes(PAYLOAD[:half])
    (server / "test.pth").write_bytes(bytes(half) + PAYLOAD[half:])
    assert fetch(base_url, cache).read_bytes() == PAYLOAD


def test_unreachable_server_says_where_to_put_the_file(mirror):
    """No server (a folder that does not exist): every attempt fails, and the error names the final path."""
    _, _, cache = mirror
    with pytest.raises(DownloadError, match="put it at .*test.pth"):
        fetch((cache / "nowhere").as_uri(), cache)


def test_unknown_name_lists_the_released_ones(tmp_path):
    with pytest.raises(ValueError, match="d16"):
        download("d17", cache_dir=tmp_path)


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert pretrained.cache_folder() == tmp_path / "elsewhere"
    assert pretrained.cache_folder(tmp_path / "given") == tmp_path / "given"
