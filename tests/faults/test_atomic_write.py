"""megaspeech.fs.atomic_path / write_atomic: every small-file writer of the project goes through them."""
import pytest

from megaspeech.fs import atomic_path, write_atomic


def test_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "manifest.json"
    write_atomic(p, "old")
    write_atomic(p, b"\x00new bytes")
    assert p.read_bytes() == b"\x00new bytes"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["manifest.json"]


def test_writer_error_keeps_the_old_file(tmp_path):
    p = tmp_path / "checkpoint.pt"
    write_atomic(p, "complete old version")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(p) as tmp:
            tmp.write_text("half of the new")
            raise OSError("disk full")
    assert p.read_text() == "complete old version"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_suffix_for_writers_that_append_one(tmp_path):
    import numpy as np
    p = tmp_path / "codes.cache"
    with atomic_path(p, suffix=".npz") as tmp:
        np.savez(tmp, a=np.arange(3))  # would write codes.cache.npz without the suffix
    assert np.load(p)["a"].tolist() == [0, 1, 2]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["codes.cache"]
