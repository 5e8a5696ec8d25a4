"""The per-process registry of open LMDB directories (_dir_claims.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lighthouse_client._dir_claims import claim_dir, release_dir


def test_a_directory_is_claimed_once_until_released(tmp_path: Path) -> None:
    key = claim_dir(tmp_path / "d", "ReadCache")
    with pytest.raises(ValueError, match="ReadCache"):  # the message names the owner
        claim_dir(tmp_path / "d", "Outbox")
    release_dir(key)
    release_dir(key)  # a second release is ignored
    release_dir(claim_dir(tmp_path / "d", "Outbox"))


def test_two_spellings_of_one_directory_are_one_claim(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    key = claim_dir(tmp_path / "d", "ReadCache")
    try:
        with pytest.raises(ValueError):
            claim_dir(tmp_path / "link", "Outbox")
        with pytest.raises(ValueError):
            claim_dir(tmp_path / "x" / ".." / "d", "Outbox")
    finally:
        release_dir(key)


def test_different_directories_do_not_clash(tmp_path: Path) -> None:
    a = claim_dir(tmp_path / "a", "ReadCache")
    b = claim_dir(tmp_path / "b", "ReadCache")
    release_dir(a)
    release_dir(b)
