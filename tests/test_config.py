"""Settings: flags beat environment variables beat defaults; bad values are refused."""

from __future__ import annotations

import argparse

import pytest

from lighthouse_store import config

MIB = 1024 * 1024


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return p


def test_preallocate_accepts_zero_and_sizes_and_rejects_negatives() -> None:
    assert config.Config().preallocate == 64 * MIB
    assert config.from_args(parser().parse_args(["--preallocate", "0"]), {}).preallocate == 0
    env = {"LIGHTHOUSE_PREALLOCATE": "16MiB"}
    assert config.from_args(parser().parse_args([]), env).preallocate == 16 * MIB
    with pytest.raises(config.ConfigError, match="preallocate"):
        config.from_args(parser().parse_args(["--preallocate=-1"]), {})
    with pytest.raises(config.ConfigError, match="map_size"):
        config.from_args(parser().parse_args(["--map-size", "0"]), {})


def test_the_tail_budget_is_a_setting() -> None:
    assert config.Config().tail_bytes == config.TAIL_BYTES == 16 * MIB
    assert config.from_args(parser().parse_args(["--tail-bytes", "0"]), {}).tail_bytes == 0
    env = {"LIGHTHOUSE_TAIL_BYTES": "4MiB"}
    assert config.from_args(parser().parse_args([]), env).tail_bytes == 4 * MIB
    flag_wins = config.from_args(parser().parse_args(["--tail-bytes", "1m"]), env)
    assert flag_wins.tail_bytes == MIB
    with pytest.raises(config.ConfigError, match="tail_bytes"):
        config.from_args(parser().parse_args(["--tail-bytes", "lots"]), {})
    with pytest.raises(config.ConfigError, match="tail_bytes"):
        config.from_args(parser().parse_args(["--tail-bytes", "-1"]), {})


def test_the_shutdown_grace_is_a_setting() -> None:
    assert config.Config().shutdown_grace_seconds == 10.0
    args = parser().parse_args(["--shutdown-grace-seconds", "2.5"])
    assert config.from_args(args, {}).shutdown_grace_seconds == 2.5
    env = {"LIGHTHOUSE_SHUTDOWN_GRACE_SECONDS": "0"}
    assert config.from_args(parser().parse_args([]), env).shutdown_grace_seconds == 0.0
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(config.ConfigError, match="shutdown_grace_seconds"):
            config.from_args(parser().parse_args([f"--shutdown-grace-seconds={bad}"]), {})


def test_durability_is_one_of_two_named_modes() -> None:
    assert config.Config().durability is config.Durability.FSYNC
    env = {"LIGHTHOUSE_DURABILITY": "ASYNC"}
    assert config.from_args(parser().parse_args([]), env).durability is config.Durability.ASYNC
    flag_wins = config.from_args(parser().parse_args(["--durability", "fsync"]), env)
    assert flag_wins.durability is config.Durability.FSYNC
    with pytest.raises(config.ConfigError, match="durability: must be 'fsync' or 'async'"):
        config.from_args(parser().parse_args(["--durability", "sometimes"]), {})
