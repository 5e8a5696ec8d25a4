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
    with pytest.raises(config.ConfigError, match="--map-size: must be positive"):
        config.from_args(parser().parse_args(["--map-size", "0"]), {})


def test_the_tail_budget_is_a_setting() -> None:
    assert config.Config().tail_bytes == config.TAIL_BYTES == 16 * MIB
    assert config.from_args(parser().parse_args(["--tail-bytes", "0"]), {}).tail_bytes == 0
    env = {"LIGHTHOUSE_TAIL_BYTES": "4MiB"}
    assert config.from_args(parser().parse_args([]), env).tail_bytes == 4 * MIB
    flag_wins = config.from_args(parser().parse_args(["--tail-bytes", "1m"]), env)
    assert flag_wins.tail_bytes == MIB
    with pytest.raises(config.ConfigError, match="--tail-bytes"):
        config.from_args(parser().parse_args(["--tail-bytes", "lots"]), {})
    with pytest.raises(config.ConfigError, match="--tail-bytes"):
        config.from_args(parser().parse_args(["--tail-bytes", "-1"]), {})


def test_the_shutdown_grace_is_a_setting() -> None:
    assert config.Config().shutdown_grace_seconds == 10.0
    args = parser().parse_args(["--shutdown-grace-seconds", "2.5"])
    assert config.from_args(args, {}).shutdown_grace_seconds == 2.5
    env = {"LIGHTHOUSE_SHUTDOWN_GRACE_SECONDS": "0"}
    assert config.from_args(parser().parse_args([]), env).shutdown_grace_seconds == 0.0
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(config.ConfigError, match="--shutdown-grace-seconds"):
            config.from_args(parser().parse_args([f"--shutdown-grace-seconds={bad}"]), {})


def test_durability_is_one_of_two_named_modes() -> None:
    assert config.Config().durability is config.Durability.FSYNC
    env = {"LIGHTHOUSE_DURABILITY": "ASYNC"}
    assert config.from_args(parser().parse_args([]), env).durability is config.Durability.ASYNC
    flag_wins = config.from_args(parser().parse_args(["--durability", "fsync"]), env)
    assert flag_wins.durability is config.Durability.FSYNC
    with pytest.raises(config.ConfigError, match="--durability: must be 'fsync' or 'async'"):
        config.from_args(parser().parse_args(["--durability", "sometimes"]), {})


def test_errors_name_the_flag_or_the_variable_that_set_the_value() -> None:
    with pytest.raises(config.ConfigError, match=r"^LIGHTHOUSE_MAX_QUEUE: not a size: 'many'"):
        config.from_args(parser().parse_args([]), {"LIGHTHOUSE_MAX_QUEUE": "many"})
    with pytest.raises(config.ConfigError, match=r"^--max-queue: not a size"):
        config.from_args(parser().parse_args(["--max-queue=many"]), {})
    with pytest.raises(config.ConfigError, match=r"^LIGHTHOUSE_DURABILITY: must be"):
        config.from_args(parser().parse_args([]), {"LIGHTHOUSE_DURABILITY": "never"})


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1", ":50051",
               "127.0.0.1:", "127.0.0.1:5e4", "127.0.0.1:\u0665\u0660\u0660"],
)  # fmt: skip
def test_listen_must_be_host_and_a_port_in_range(listen: str) -> None:
    """gRPC would take an out-of-range port as "any free port" and serve there."""
    with pytest.raises(config.ConfigError, match=r"^--listen: must be host:port"):
        config.from_args(parser().parse_args([f"--listen={listen}"]), {})


def test_listen_accepts_ports_0_to_65535_and_ipv6() -> None:
    for listen in ("127.0.0.1:0", "127.0.0.1:65535", "localhost:50051", "[::1]:7000"):
        assert config.from_args(parser().parse_args(["--listen", listen]), {}).listen == listen


def test_the_queue_byte_bound_is_a_setting() -> None:
    assert config.Config().max_queued_bytes == 256 * MIB
    env = {"LIGHTHOUSE_MAX_QUEUED_BYTES": "64m"}
    assert config.from_args(parser().parse_args([]), env).max_queued_bytes == 64 * MIB
    with pytest.raises(config.ConfigError, match="--max-queued-bytes: must be positive"):
        config.from_args(parser().parse_args(["--max-queued-bytes", "0"]), {})
    # An append must fit in the queue, or it would be refused for ever.
    with pytest.raises(config.ConfigError, match=r"--max-queued-bytes \(8192\) must be at least"
                       r" LIGHTHOUSE_MAX_APPEND_BYTES \(16384\)"):  # fmt: skip
        config.from_args(
            parser().parse_args(["--max-queued-bytes", "8k"]),
            {"LIGHTHOUSE_MAX_APPEND_BYTES": "16k"},
        )
    fits = config.from_args(parser().parse_args(["--max-queued-bytes=16k",
                                                 "--max-append-bytes=16k"]), {})  # fmt: skip
    assert fits.max_queued_bytes == fits.limits.max_append_bytes == 16 * 1024
