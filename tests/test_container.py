"""The Dockerfile builds and runs: buildah builds it (chroot isolation, vfs
storage, no container engine) on a Debian base made with debootstrap
(scripts/debian_base_image.py), and the image runs under ``buildah run`` on the
host's network, its entrypoint as the image declares it.

The checks: the daemon runs as the image's non-root user, on loopback, with
its store in the ``/data`` volume; gRPC health (real grpcurl) and an append
read back, also after a restart; the image's HEALTHCHECK, run as the image
declares it, against ``/health``, passing while the store serves and failing
once it cannot write.

Needs root (debootstrap, and buildah's chroot isolation and mounts) with
buildah and debootstrap installed: ``./dev test`` installs them when it runs as
root (as CI does). Without them the tests are skipped, saying so. buildah's
storage is a temporary directory (``CONTAINERS_STORAGE_CONF``), deleted at the
end; the base's root filesystem is cached (see the script).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import (
    append,
    error_info,
    events,
    grpcurl_path,
    read_stream,
)

from lighthouse_store.testing import DaemonProcess

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/lighthouse-store:test"
USER_ID = 10001  # the Dockerfile's useradd --uid


def _missing() -> str:
    tools = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    if tools:
        return (
            f"not installed: {', '.join(tools)} (apt-get install buildah debootstrap; "
            "./dev test installs them when it runs as root)"
        )
    if os.geteuid() != 0:
        return "needs root: debootstrap, and buildah's chroot isolation and mounts"
    return ""


@dataclass(frozen=True)
class Buildah:
    """buildah on storage of its own (vfs: no overlay or fuse needed)."""

    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run(
            ["buildah", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
        out: str = proc.stdout
        return out

    def image_config(self, image: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self("inspect", "--type", "image", image))["Docker"][
            "config"
        ]
        return config


@dataclass(frozen=True)
class Image:
    name: str
    config: dict[str, Any]

    def env(self, name: str) -> str:
        entries: list[str] = self.config["Env"]
        (value,) = [e.split("=", 1)[1] for e in entries if e.startswith(name + "=")]
        return value


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Generator[Buildah, None, None]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    storage = tmp_path_factory.mktemp("buildah")
    conf = storage / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{storage}/graph"\nrunroot = "{storage}/run"\n'
    )
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "BUILDAH_ISOLATION": "chroot"}
    yield Buildah(env)
    subprocess.run(["buildah", "rm", "--all"], env=env, capture_output=True, timeout=120)
    # Gigabytes (vfs copies every layer whole), and rm is quicker than rmtree.
    subprocess.run(["rm", "-rf", str(storage)], check=True, timeout=300)


@pytest.fixture(scope="module")
def image(buildah: Buildah) -> Image:
    base = subprocess.run(
        [sys.executable, "scripts/debian_base_image.py"],
        cwd=ROOT, env=buildah.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert base.returncode == 0, base.stderr
    # --format docker: an OCI image config has no HEALTHCHECK (buildah drops it).
    buildah(
        "bud", "--isolation", "chroot", "--format", "docker",
        "--build-arg", f"BASE_IMAGE={base.stdout.strip()}", "-t", IMAGE, str(ROOT),
    )  # fmt: skip
    return Image(IMAGE, buildah.image_config(IMAGE))


class ContainerDaemon(DaemonProcess):
    """The image's entrypoint under ``buildah run`` in one working container.

    Chroot isolation keeps the host's network (so the daemon's loopback is the
    host's) and its pid namespace: the pid on the ready line is the daemon's
    pid here too, and :meth:`stop` signals it, as ``docker stop`` signals a
    container's first process; ``buildah run`` then exits with its status.
    The image's ``/data`` volume is a directory of the working container's, kept
    across runs, as an engine's anonymous volume is across restarts.
    """

    def __init__(
        self, buildah: Buildah, image: Image, container: str, env: dict[str, str], log: Path
    ) -> None:
        super().__init__(Path("/data"), env=buildah.env, log_path=log)
        self.buildah, self.image, self.container = buildah, image, container
        self.container_env = env

    def run_argv(self, *command: str) -> list[str]:
        flags = [f for name, value in self.container_env.items() for f in ("-e", f"{name}={value}")]
        return ["buildah", "run", "--isolation", "chroot", "--network", "host", *flags,
                self.container, "--", *command]  # fmt: skip

    def command(self) -> list[str]:
        return self.run_argv(*self.image.config["Entrypoint"])

    @property
    def pid(self) -> int:
        return int(self.ready["pid"])

    def _signal_and_wait(self, sig: int, timeout: float) -> int:
        self.close_channels()
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reap(kill=True)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, run in the container as an engine runs it."""
        kind, *command = self.image.config["Healthcheck"]["Test"]
        assert kind == "CMD"
        return subprocess.run(
            self.run_argv(*command), env=self.env, capture_output=True, text=True, timeout=60
        )


@pytest.fixture(scope="module")
def container(buildah: Buildah, image: Image) -> Generator[str, None, None]:
    """One working container for the module (each costs a copy of the image
    with vfs); each test keeps its store in a directory of its own in /data."""
    name = f"lighthouse-test-{uuid.uuid4().hex[:8]}"
    buildah("from", "--name", name, image.name)
    yield name
    buildah("rm", name)


def loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_status(pid: int, field: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1:]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def mount_points(pid: int) -> list[str]:
    return [line.split()[4] for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]


def grpc_health(address: str) -> str:
    proc = subprocess.run(
        [str(grpcurl_path()), "-plaintext", address, "grpc.health.v1.Health/Check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    status: str = json.loads(proc.stdout)["status"]
    return status


def test_the_image_runs_the_daemon_as_its_user_on_loopback_with_the_store_in_its_volume(
    buildah: Buildah, image: Image, container: str, tmp_path: Path
) -> None:
    config = image.config
    assert config["User"] == "lighthouse"
    assert list(config["Volumes"]) == ["/data"]
    assert image.env("LIGHTHOUSE_DATA_DIR") == "/data"
    host, _, port = image.env("LIGHTHOUSE_LISTEN").rpartition(":")
    assert (host, port) == ("127.0.0.1", "50051")
    assert config["Entrypoint"] == ["lighthouse-store", "serve"]
    # The image's listening host, on a free port: the test shares the host's network.
    env = {"LIGHTHOUSE_LISTEN": f"{host}:0", "LIGHTHOUSE_PREALLOCATE": "2MiB"}
    daemon = ContainerDaemon(buildah, image, container, env, tmp_path / "daemon.log")
    with daemon:
        assert daemon.address.startswith("127.0.0.1:")
        assert proc_status(daemon.pid, "Uid") == [str(USER_ID)] * 4
        assert os.readlink(f"/proc/{daemon.pid}/root") != "/"  # in the image's root
        assert "/data" in mount_points(daemon.pid)  # the volume, mounted over the image's
        assert grpc_health(daemon.address) == "SERVING"
        sent = events(3, type="Shipped", data=b'{"n": 1}')
        assert append(daemon.stub(), "orders-1", sent).last_position == 3
        store = Path(f"/proc/{daemon.pid}/root/data/lmdb/data.mdb")
        assert store.stat().st_uid == USER_ID
        assert [e.event_id for e in read_stream(daemon.stub(), "orders-1")] == [
            e.event_id for e in sent
        ]
    assert daemon.proc is not None and daemon.proc.returncode == 0  # drained, exit 0
    with daemon:  # the same container again: the volume kept the store
        assert grpc_health(daemon.address) == "SERVING"
        got = read_stream(daemon.stub(), "orders-1")
        assert [(e.event_id, e.data) for e in got] == [(e.event_id, e.data) for e in sent]


def http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def fill_the_store(daemon: ContainerDaemon) -> None:
    """Append 8 KB events until the 1 MiB map refuses even one (bounded)."""
    stub = daemon.stub()
    for _ in range(400):
        try:
            append(stub, "filler", events(1, data=b"x" * 8000))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert error_info(err).reason == "STORAGE_FULL"
            return
    raise AssertionError("a 1 MiB map took 400 events of 8 KB")


def wait_for_status(url: str, want: int, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    while (status := http_get(url)[0]) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return status


def test_the_healthcheck_follows_http_health_and_fails_once_the_store_cannot_write(
    buildah: Buildah, image: Image, container: str, tmp_path: Path
) -> None:
    http = f"127.0.0.1:{loopback_port()}"
    env = {
        "LIGHTHOUSE_LISTEN": "127.0.0.1:0",
        "LIGHTHOUSE_HTTP_LISTEN": http,
        "LIGHTHOUSE_DATA_DIR": "/data/full",
        "LIGHTHOUSE_MAP_SIZE": "1MiB",
        "LIGHTHOUSE_MAX_MAP_SIZE": "1MiB",
        "LIGHTHOUSE_PREALLOCATE": "0",
    }
    daemon = ContainerDaemon(buildah, image, container, env, tmp_path / "daemon.log")
    with daemon:
        status, body = http_get(f"http://{http}/health")
        assert status == 200, body
        assert {"status", "level", "checks"} <= set(body)
        assert grpc_health(daemon.address) == "SERVING"
        check = daemon.healthcheck()
        assert check.returncode == 0, check.stderr
        fill_the_store(daemon)
        assert wait_for_status(f"http://{http}/health", 503) == 503
        check = daemon.healthcheck()
        assert check.returncode != 0, check.stdout
    check = daemon.healthcheck()  # nothing answers
    assert check.returncode != 0
