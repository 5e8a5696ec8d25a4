"""Settings: one table drives flags, variables, the config file, bounds and the README."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lighthouse_store import config, settings
from lighthouse_store.settings import Bool, Count, Ratio, Seconds, Setting, declare, nested, setting

MIB = 1024 * 1024
README = Path(__file__).resolve().parent.parent / "README.md"
NUMERIC = [s for s in config.TABLE if isinstance(s.kind, settings.Bounded)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return p


def load(
    argv: list[str] | None = None,
    env: dict[str, str] | None = None,
    file: str | None = None,
    tmp_path: Path | None = None,
) -> config.Config:
    """from_args with only these sources: flags, variables, a config file's text."""
    argv = list(argv or [])
    if file is not None:
        assert tmp_path is not None
        path = tmp_path / "lighthouse.toml"
        path.write_text(file)
        argv += ["--config", str(path)]
    return config.from_args(parser().parse_args(argv), env or {})


def value_at(cfg: config.Config, s: Setting) -> Any:
    value: Any = cfg
    for name in s.path:
        value = getattr(value, name)
    return value


def other_value(s: Setting) -> tuple[str, Any]:
    """A valid value of ``s`` that is not its default: (as a flag spells it, parsed)."""
    kind = s.kind
    if isinstance(kind, settings.Bounded):
        value = kind.high if kind.high != s.default else kind.low
    elif isinstance(kind, settings.Choice):
        value = next(m for m in kind.enum if m != s.default)
    elif isinstance(kind, settings.FilePath):
        value = Path("elsewhere/store")
    elif isinstance(kind, settings.HostPort):
        value = "127.0.0.1:7"
    elif isinstance(kind, settings.FileOrStream):
        value = "elsewhere/store.log"
    elif isinstance(kind, settings.OptionalFile):
        value = "elsewhere/file.pem"
    elif isinstance(kind, settings.Bool):
        value = not s.default
    else:
        raise AssertionError(f"no sample for {type(kind).__name__}: add one here")
    return kind.show(value), value


def test_a_log_file_is_a_path_or_a_dash_for_stderr() -> None:
    kind = settings.FileOrStream("stderr")
    assert kind.parse("-") == "-" and kind.parse(" - ") == "-"
    assert kind.parse("logs/store.log") == "logs/store.log"
    for bad in ("", "  ", "a\0b", 3):
        with pytest.raises(ValueError):
            kind.parse(bad)


def toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the table ---------------------------------------------------------------


def test_every_config_field_is_a_setting() -> None:
    """No tunable in Config without a flag: every leaf field is in the table."""

    def leaves(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        out = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            here = (*path, f.name)
            out += leaves(value, here) if dataclasses.is_dataclass(value) else [here]
        return out

    assert sorted(leaves(config.Config())) == sorted(s.path for s in config.TABLE)
    assert len(config.TABLE) >= 28


def test_names_flags_and_variables_are_unique_and_derived_from_the_name() -> None:
    names = [s.name for s in config.TABLE]
    assert len(set(names)) == len(names)
    for s in config.TABLE:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", s.name), s.name
        assert s.flag == "--" + s.name.replace("_", "-")
        assert s.env == "LIGHTHOUSE_" + s.name.upper()
    assert config.TABLE[0].flag == "--listen"
    new = {"--log-level", "--page-events", "--reader-threads", "--max-batch-bytes",
           "--subscribe-fell-behind-events", "--ack-delay-ms"}  # fmt: skip
    assert new <= {s.flag for s in config.TABLE}


@pytest.mark.parametrize("s", config.TABLE, ids=lambda s: s.name)
def test_each_setting_has_help_and_a_default_its_own_parser_accepts(s: Setting) -> None:
    assert len(s.help) > 10
    assert s.group
    # The default as --help and the README print it reads back as the default,
    # so it is also within the bounds.
    assert s.kind.parse(s.kind.show(s.default)) == s.default
    assert value_at(config.Config(), s) == s.default


@pytest.mark.parametrize("s", config.TABLE, ids=lambda s: s.name)
def test_each_setting_is_read_from_its_flag_its_variable_and_the_file(
    s: Setting, tmp_path: Path
) -> None:
    text, value = other_value(s)
    assert value != s.default
    is_switch = isinstance(s.kind, settings.Bool)  # --name / --no-name
    flag = (s.flag if value else "--no-" + s.flag[2:]) if is_switch else f"{s.flag}={text}"
    assert value_at(load([flag]), s) == value
    assert value_at(load(env={s.env: text}), s) == value
    assert value_at(load(file=f"{s.name} = {toml_string(text)}\n", tmp_path=tmp_path), s) == value


def test_precedence_is_flag_then_variable_then_file_then_default(tmp_path: Path) -> None:
    file = "max_queue = 300\ndurability = 'async'\n"
    env = {"LIGHTHOUSE_MAX_QUEUE": "200"}
    assert load().max_queue == 10_000
    assert load(file=file, tmp_path=tmp_path).max_queue == 300
    assert load(env=env, file=file, tmp_path=tmp_path).max_queue == 200
    assert load(["--max-queue", "100"], env=env, file=file, tmp_path=tmp_path).max_queue == 100
    # Per setting: the file still sets what the flags and variables leave alone.
    mixed = load(["--max-queue", "100"], env=env, file=file, tmp_path=tmp_path)
    assert mixed.durability is config.Durability.ASYNC


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text("page_events = 7\n")
    assert load(env={"LIGHTHOUSE_CONFIG": str(path)}).page_events == 7
    other = tmp_path / "from-flag.toml"
    other.write_text("page_events = 9\n")
    assert load(["--config", str(other)], env={"LIGHTHOUSE_CONFIG": str(path)}).page_events == 9


def test_the_file_takes_natural_toml_types_or_flag_strings(tmp_path: Path) -> None:
    cfg = load(file="""
map_size = "2GiB"
tail_bytes = 1048576
shutdown_grace_seconds = 2.5
reader_threads = "8"
log_level = "warning"
subscribe_page_events = 50
""", tmp_path=tmp_path)  # fmt: skip
    assert cfg.map_size == 2 << 30 and cfg.tail_bytes == MIB
    assert cfg.shutdown_grace_seconds == 2.5 and cfg.reader_threads == 8
    assert cfg.log_level is config.LogLevel.WARNING
    assert cfg.subscriptions.page_events == 50


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("map_size = true", "map_size: not a size: True"),
        ("max_queue = 1.5", "max_queue: not a whole number: 1.5"),
        ("durability = 1", "durability: must be 'fsync' or 'async', got 1"),
        ("data_dir = 7", "data_dir: must be a path"),
        ("shutdown_grace_seconds = nan", "shutdown_grace_seconds: not a number of seconds"),
        ("limits = { max_queue = 1 }", "unknown setting 'limits'"),
    ],
)
def test_the_file_refuses_values_of_the_wrong_type(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "lighthouse.toml"
    with pytest.raises(config.ConfigError, match=r"^" + re.escape(f"{path}: {message}")):
        load(file=line + "\n", tmp_path=tmp_path)


def test_an_unknown_key_is_an_error_naming_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lighthouse.toml"
    with pytest.raises(config.ConfigError) as caught:
        load(file="max_queue = 5\nmapsize = '1GiB'\n", tmp_path=tmp_path)
    assert str(caught.value) == f"{path}: unknown setting 'mapsize' (did you mean 'map_size'?)"


def test_a_file_that_is_not_toml_or_not_there_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "lighthouse.toml"
    with pytest.raises(config.ConfigError, match=r"^" + re.escape(f"{path}: not a valid TOML")):
        load(file="map_size = \n", tmp_path=tmp_path)
    missing = tmp_path / "missing.toml"
    with pytest.raises(config.ConfigError, match=r"^" + re.escape(f"{missing}: cannot read")):
        load(["--config", str(missing)])
    with pytest.raises(config.ConfigError, match=r"^--config: must name a file"):
        load(["--config", ""])


# -- bounds --------------------------------------------------------------------


@pytest.mark.parametrize("s", NUMERIC, ids=lambda s: s.name)
def test_each_numeric_setting_refuses_values_outside_its_bounds(s: Setting, tmp_path: Path) -> None:
    kind = s.kind
    assert isinstance(kind, settings.Bounded)
    default: Any = s.default
    assert kind.low <= default <= kind.high
    step = 1 if isinstance(kind.high, int) else 0.5
    above, below = kind.high + step, kind.low - step
    with pytest.raises(config.ConfigError, match=f"^{s.flag}: must be at most "):
        load([f"{s.flag}={above}"])
    with pytest.raises(config.ConfigError, match=f"^{s.env}: must be at most "):
        load(env={s.env: str(above)})
    path = tmp_path / "lighthouse.toml"
    with pytest.raises(
        config.ConfigError, match=r"^" + re.escape(f"{path}: {s.name}: must be at least ")
    ):
        load(file=f"{s.name} = {below}\n", tmp_path=tmp_path)  # a TOML number may be negative
    if kind.low > 0:
        with pytest.raises(config.ConfigError, match=f"^{s.flag}: must be at least "):
            load([f"{s.flag}={below}"])
    # The bounds themselves are allowed.
    for edge in (kind.low, kind.high):
        assert kind.parse(kind.show(edge)) == edge


def test_the_map_size_bounds_are_what_the_issue_names() -> None:
    with pytest.raises(config.ConfigError, match=r"^--map-size: must be at least 1MiB, got '1'$"):
        load(["--map-size", "1"])
    with pytest.raises(config.ConfigError, match=r"^--map-size: must be at least 1MiB, got '4096'"):
        load(["--map-size", "4096"])
    with pytest.raises(config.ConfigError, match=r"^--map-size: must be at most 16TiB"):
        load(["--map-size", "17t"])
    assert load(["--map-size", "1MiB"]).map_size == MIB
    assert load(["--reader-threads", "64"]).reader_threads == 64
    with pytest.raises(config.ConfigError, match=r"^--reader-threads: must be at most 64"):
        load(["--reader-threads", "65"])


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_data_dir_is_refused_wherever_it_comes_from(tmp_path: Path, empty: str) -> None:
    with pytest.raises(config.ConfigError, match=r"^--data-dir: must not be empty"):
        load([f"--data-dir={empty}"])
    with pytest.raises(config.ConfigError, match=r"^LIGHTHOUSE_DATA_DIR: must not be empty"):
        load(env={"LIGHTHOUSE_DATA_DIR": empty})
    path = tmp_path / "lighthouse.toml"
    with pytest.raises(config.ConfigError, match=r"^" + re.escape(f"{path}: data_dir: must not")):
        load(file=f"data_dir = '{empty}'\n", tmp_path=tmp_path)


# -- settings as they were before the table: their behaviour stays -----------


def test_preallocate_accepts_zero_and_sizes_and_rejects_negatives() -> None:
    assert config.Config().preallocate == 64 * MIB
    assert load(["--preallocate", "0"]).preallocate == 0
    assert load(env={"LIGHTHOUSE_PREALLOCATE": "16MiB"}).preallocate == 16 * MIB
    with pytest.raises(config.ConfigError, match=r"^--preallocate: not a size: '-1'"):
        load(["--preallocate=-1"])


def test_the_tail_budget_is_a_setting() -> None:
    assert config.Config().tail_bytes == config.TAIL_BYTES == 16 * MIB
    assert load(["--tail-bytes", "0"]).tail_bytes == 0
    env = {"LIGHTHOUSE_TAIL_BYTES": "4MiB"}
    assert load(env=env).tail_bytes == 4 * MIB
    assert load(["--tail-bytes", "1m"], env).tail_bytes == MIB
    for bad in ("lots", "-1", "1.5m", "4 MiBs"):
        with pytest.raises(config.ConfigError, match=f"^--tail-bytes: not a size: '{bad}'"):
            load([f"--tail-bytes={bad}"])


def test_the_shutdown_grace_is_a_setting() -> None:
    assert config.Config().shutdown_grace_seconds == 10.0
    assert load(["--shutdown-grace-seconds", "2.5"]).shutdown_grace_seconds == 2.5
    assert load(env={"LIGHTHOUSE_SHUTDOWN_GRACE_SECONDS": "0"}).shutdown_grace_seconds == 0.0
    for bad in ("-1", "soon", "nan", "inf", "1e3"):
        with pytest.raises(config.ConfigError, match=r"^--shutdown-grace-seconds: not a number"):
            load([f"--shutdown-grace-seconds={bad}"])


def test_durability_is_one_of_two_named_modes() -> None:
    assert config.Config().durability is config.Durability.FSYNC
    env = {"LIGHTHOUSE_DURABILITY": "ASYNC"}
    assert load(env=env).durability is config.Durability.ASYNC
    assert load(["--durability", "fsync"], env).durability is config.Durability.FSYNC
    with pytest.raises(config.ConfigError, match=r"^--durability: must be 'fsync' or 'async'"):
        load(["--durability", "sometimes"])


def test_the_log_level_is_a_setting_too() -> None:
    assert config.Config().log_level is config.LogLevel.INFO
    assert load(env={"LIGHTHOUSE_LOG_LEVEL": "debug"}).log_level is config.LogLevel.DEBUG
    with pytest.raises(config.ConfigError, match=r"^--log-level: must be 'DEBUG', 'INFO', "):
        load(["--log-level", "loud"])


def test_errors_name_the_flag_or_the_variable_that_set_the_value() -> None:
    with pytest.raises(
        config.ConfigError, match=r"^LIGHTHOUSE_MAX_QUEUE: not a whole number: 'many'"
    ):
        load(env={"LIGHTHOUSE_MAX_QUEUE": "many"})
    with pytest.raises(config.ConfigError, match=r"^--max-queue: not a whole number"):
        load(["--max-queue=many"])
    with pytest.raises(config.ConfigError, match=r"^LIGHTHOUSE_DURABILITY: must be"):
        load(env={"LIGHTHOUSE_DURABILITY": "never"})


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1", ":50051",
               "127.0.0.1:", "127.0.0.1:5e4", "127.0.0.1:\u0665\u0660\u0660"],
)  # fmt: skip
def test_listen_must_be_host_and_a_port_in_range(listen: str) -> None:
    """gRPC would take an out-of-range port as "any free port" and serve there."""
    with pytest.raises(config.ConfigError, match=r"^--listen: must be host:port"):
        load([f"--listen={listen}"])


def test_listen_accepts_ports_0_to_65535_and_ipv6() -> None:
    for listen in ("127.0.0.1:0", "127.0.0.1:65535", "localhost:50051", "[::1]:7000"):
        assert load(["--listen", listen]).listen == listen


def test_the_http_endpoint_is_a_host_and_port_or_off() -> None:
    assert config.Config().http_listen == "127.0.0.1:9464"
    assert load(["--http-listen", "127.0.0.1:0"]).http_listen == "127.0.0.1:0"
    assert load(["--http-listen", "[::1]:9464"]).http_listen == "[::1]:9464"
    assert load(env={"LIGHTHOUSE_HTTP_LISTEN": " OFF "}).http_listen == "off"
    for bad in ("offf", "9464", "127.0.0.1:70000", ""):
        with pytest.raises(config.ConfigError, match=r"^--http-listen: must be host:port"):
            load([f"--http-listen={bad}"])


def test_metrics_are_on_unless_switched_off_and_the_stall_time_is_a_setting() -> None:
    assert config.Config().metrics is config.Switch.ON
    assert load(["--metrics", "off"]).metrics is config.Switch.OFF
    with pytest.raises(config.ConfigError, match=r"^--metrics: must be 'on' or 'off'"):
        load(["--metrics", "maybe"])
    assert config.Config().writer_stall_seconds == 5.0
    assert load(["--writer-stall-seconds", "0.5"]).writer_stall_seconds == 0.5


def test_the_queue_byte_bound_is_a_setting(tmp_path: Path) -> None:
    assert config.Config().max_queued_bytes == 256 * MIB
    assert load(env={"LIGHTHOUSE_MAX_QUEUED_BYTES": "64m"}).max_queued_bytes == 64 * MIB
    # An append must fit in the queue, or it would be refused for ever.
    with pytest.raises(config.ConfigError, match=r"^--max-queued-bytes \(8192\) must be at least"
                       r" LIGHTHOUSE_MAX_APPEND_BYTES \(16384\)"):  # fmt: skip
        load(["--max-queued-bytes", "8k"], {"LIGHTHOUSE_MAX_APPEND_BYTES": "16k"})
    path = tmp_path / "lighthouse.toml"
    expected = f"--max-queued-bytes (8192) must be at least {path}: max_append_bytes (16384)"
    with pytest.raises(config.ConfigError, match=r"^" + re.escape(expected)):
        load(["--max-queued-bytes", "8k"], file="max_append_bytes = '16k'", tmp_path=tmp_path)
    fits = load(["--max-queued-bytes=16k", "--max-append-bytes=16k"])
    assert fits.max_queued_bytes == fits.limits.max_append_bytes == 16 * 1024


# -- kinds no setting uses yet, through a table of their own -------------------


@dataclass(frozen=True)
class _Shedding:
    at: float = setting("Shedding", Ratio(0.5, 1.0), 0.9, "shed load above this utilisation")


@dataclass(frozen=True)
class _Example:
    tls: bool = setting("Example", Bool(), False, "serve TLS only")
    grace: float = setting("Example", Seconds(0, 5), 1.0, "a number of seconds")
    workers: int = setting("Example", Count(1, 8), 2, "a count")
    shedding: _Shedding = nested(_Shedding, prefix="shed_")


def test_a_new_setting_is_one_field_and_gets_a_flag_a_variable_and_a_file_key() -> None:
    table = settings.table(_Example)
    assert [(s.name, s.flag, s.env) for s in table] == [
        ("tls", "--tls", "LIGHTHOUSE_TLS"),
        ("grace", "--grace", "LIGHTHOUSE_GRACE"),
        ("workers", "--workers", "LIGHTHOUSE_WORKERS"),
        ("shed_at", "--shed-at", "LIGHTHOUSE_SHED_AT"),
    ]
    p = argparse.ArgumentParser()
    settings.add_arguments(p, table)

    def resolve(argv: list[str], env: dict[str, str], file: dict[str, object]) -> _Example:
        flags = vars(p.parse_args(argv))
        return settings.resolve(_Example, table, flags=flags, environ=env,
                                file_values=file, file_name="f.toml").value  # fmt: skip

    assert resolve([], {}, {}) == _Example()
    assert resolve(["--tls", "--shed-at", "75%"], {}, {}) == _Example(
        True, shedding=_Shedding(0.75)
    )
    assert resolve(["--no-tls"], {"LIGHTHOUSE_TLS": "yes"}, {"tls": True}).tls is False
    assert resolve([], {"LIGHTHOUSE_TLS": "on"}, {"tls": False}).tls is True
    assert resolve([], {}, {"tls": True, "shed_at": 0.6}) == _Example(True, shedding=_Shedding(0.6))
    with pytest.raises(
        config.ConfigError, match=r"^LIGHTHOUSE_TLS: must be true or false, got 'maybe'"
    ):
        resolve([], {"LIGHTHOUSE_TLS": "maybe"}, {})
    with pytest.raises(config.ConfigError, match=r"^f.toml: tls: must be true or false, got 1"):
        resolve([], {}, {"tls": 1})
    with pytest.raises(config.ConfigError, match=r"^--shed-at: must be at most 100%, got '120%'"):
        resolve(["--shed-at", "120%"], {}, {})
    with pytest.raises(
        config.ConfigError, match=r"^f.toml: shed_at: must be at least 50%, got 0.25"
    ):
        resolve([], {}, {"shed_at": 0.25})


@dataclass(frozen=True)
class _Shared:
    """A class the settings cannot annotate (it belongs to another package)."""

    port: int = 7
    host: str = "localhost"


def test_a_shared_class_gets_its_fields_declared_where_it_is_nested() -> None:
    @dataclass(frozen=True)
    class Top:
        shared: _Shared = nested(
            _Shared,
            "peer_",
            port=declare("Peer", Count(1, 9), "a port"),
            host=declare("Peer", settings.HostPort(), "a host"),
        )

    (port, _) = settings.table(Top)
    assert (port.name, port.default, port.path) == ("peer_port", 7, ("shared", "port"))

    @dataclass(frozen=True)
    class Undeclared:
        shared: _Shared = nested(_Shared, port=declare("Peer", Count(1, 9), "a port"))

    with pytest.raises(TypeError, match=r"_Shared.host is not declared as a setting"):
        settings.table(Undeclared)

    @dataclass(frozen=True)
    class Misspelt:
        shared: _Shared = nested(_Shared, prot=declare("Peer", Count(1, 9), "a port"))

    with pytest.raises(TypeError, match=r"_Shared has no fields \['prot'\]"):
        settings.table(Misspelt)


# -- the README, --help and the printed table ------------------------------------

BEGIN = "<!-- settings table: generated by scripts/generate_readme_settings.py -->\n"
END = "<!-- end of the settings table -->\n"


def test_the_readme_holds_exactly_the_generated_settings_table() -> None:
    text = README.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "README lost its table markers"
    block = text.split(BEGIN)[1].split(END)[0]
    assert block == config.markdown_table(), (
        "README.md's settings table is out of date: run scripts/generate_readme_settings.py"
    )
    for s in config.TABLE:
        assert f"| `{s.flag}` | `{s.env}` | `{s.kind.show(s.default)}` |" in block


def test_the_readme_config_file_example_is_a_valid_config(tmp_path: Path) -> None:
    section = README.read_text().split("## Configuration")[1].split("\n## ")[0]
    (example,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    cfg = load(file=example, tmp_path=tmp_path)
    assert cfg != config.Config()


def test_python_m_config_prints_the_table() -> None:
    proc = subprocess.run([sys.executable, "-m", "lighthouse_store.config"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert proc.stdout == config.markdown_table()


def test_help_names_every_flag_its_variable_default_and_bounds() -> None:
    text = "".join(parser().format_help().split())  # as argparse wraps it for this terminal
    for s in config.TABLE:
        assert s.flag in text
        assert f"[{s.env}]" in text, s.env
    assert "(default64GiB;1MiB-16TiB)[LIGHTHOUSE_MAP_SIZE]" in text


def test_workers_default_to_zero_meaning_one_per_usable_cpu() -> None:
    assert config.Config().workers == 0  # resolved at start: cpus.usable_cpus()
    assert load(["--workers", "1"]).workers == 1
    assert load(env={"LIGHTHOUSE_WORKERS": "4"}).workers == 4
    with pytest.raises(config.ConfigError, match=r"^--workers: not a whole number: 'all'"):
        load(["--workers", "all"])


def test_a_config_goes_to_a_worker_as_json_and_comes_back_the_same(tmp_path: Path) -> None:
    # Every setting away from its default, so that none is dropped on the way.
    cfg = load(
        ["--workers", "3", "--data-dir", str(tmp_path / "d"), "--log-level", "DEBUG",
         "--durability", "async", "--shutdown-grace-seconds", "2.5", "--map-size", "1GiB",
         "--max-append-bytes", "2MiB", "--subscribe-page-events", "7"]
    )  # fmt: skip
    wire = json.loads(json.dumps(config.to_json(cfg)))
    assert set(wire) == {s.name for s in config.TABLE}
    back = config.from_json(wire)
    assert back == cfg
    assert isinstance(back.data_dir, Path) and back.durability is config.Durability.ASYNC
    assert back.limits.max_append_bytes == 2 * MIB and back.subscriptions.page_events == 7
