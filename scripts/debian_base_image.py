"""Make a Debian base image for the Dockerfile without a registry, and print its name.

    sudo python3 scripts/debian_base_image.py
    sudo buildah bud --isolation chroot --format docker \\
        --build-arg BASE_IMAGE=$(sudo python3 scripts/debian_base_image.py) -t lighthouse-store .

For machines that cannot reach Docker Hub (the Dockerfile's default base is
``python:3.11-slim`` from there): debootstrap builds Debian bookworm (variant
minbase, plus ``python3`` and ``python3-venv``, which the Dockerfile needs) from
the Debian mirror this machine's apt uses, and buildah imports it into its image
storage as ``localhost/lighthouse-debian-base:bookworm-<key>``. The certificate
authorities this machine adds to its own trust store (``*.crt`` in
``/usr/local/share/ca-certificates``; for example a proxy that inspects TLS,
which pip inside the build must then trust) are added to the image's.

The root filesystem takes a minute or two to make, so it is kept as a tar file
in ``$LIGHTHOUSE_CI_CACHE`` (default ``~/.cache/lighthouse-ci``) under a key
hashed from everything that goes into it (suite, packages, mirror, machine
architecture, those certificates, and :data:`RECIPE`, raised whenever the
steps below change); a tar with another key is deleted when a new one is made.
A file lock keeps concurrent runs from making it twice. buildah's storage is
whatever its configuration says (``CONTAINERS_STORAGE_CONF``, as
tests/test_container.py sets it). Needs root (debootstrap, ``buildah mount``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3", "python3-venv")
RECIPE = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
IMAGE = "localhost/lighthouse-debian-base"


def cache_dir() -> Path:
    override = os.environ.get("LIGHTHOUSE_CI_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lighthouse-ci"


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The first Debian archive (a URI whose path ends in ``/debian``) in apt's
    sources, one-line (``deb URI suite ...``) or deb822 (``URIs: ...``)."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["deb"]:
                uris = [w for w in words[1:] if not w.startswith("[") and "://" in w][:1]
            elif words[:1] == ["URIs:"]:
                uris = words[1:]
            else:
                continue
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def local_cas() -> list[Path]:
    return sorted(LOCAL_CAS.glob("**/*.crt")) if LOCAL_CAS.is_dir() else []


def architecture() -> str:
    out = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def key(mirror: str) -> str:
    inputs = {
        "recipe": RECIPE,
        "suite": SUITE,
        "variant": VARIANT,
        "packages": PACKAGES,
        "mirror": mirror,
        "arch": architecture(),
        "cas": {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in local_cas()},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def run(cmd: list[str], log: Path | None = None) -> str:
    """Run ``cmd``; on failure, exit with its output (or the end of ``log``)."""
    if log is None:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        output = proc.stderr + proc.stdout
    else:
        with log.open("w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
        output = log.read_text(errors="replace")[-4000:]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit status {proc.returncode}\n{output}")
    return proc.stdout if log is None else ""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def make_rootfs(rootfs: Path, mirror: str, log: Path) -> None:
    # debootstrap mounts /proc, /sys (and may bind /dev) inside the target while
    # it installs; in a mount namespace of its own, they go when it ends, even
    # if it is killed, so nothing of the host stays mounted under the tree.
    run(
        ["unshare", "--mount", "debootstrap", f"--variant={VARIANT}",
         f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
        log,
    )  # fmt: skip
    cas = local_cas()
    if cas:
        target = rootfs / LOCAL_CAS.relative_to("/")
        for ca in cas:
            shutil.copy2(ca, target / ca.name)
        run(["chroot", str(rootfs), "update-ca-certificates"])
    # Packages downloaded and package lists: not needed to run, 100 MB.
    for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / leftovers).glob("*"):
            if path.is_file():
                path.unlink()


def rootfs_tar(mirror: str) -> Path:
    """The root filesystem as a tar file in the cache, made if missing."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tar = cache / f"debian-{SUITE}-{key(mirror)}.tar"
    with locked(cache / "debian-base.lock"):
        if tar.is_file():
            return tar
        work = Path(tempfile.mkdtemp(dir=cache, prefix="rootfs-"))
        try:
            rootfs = work / "rootfs"
            print(f"debian_base_image: debootstrap {SUITE} from {mirror}", file=sys.stderr)
            make_rootfs(rootfs, mirror, work / "debootstrap.log")
            partial = work / "rootfs.tar"
            run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."])
            for old in cache.glob(f"debian-{SUITE}-*.tar"):
                old.unlink()
            partial.rename(tar)
        finally:
            remove_tree(work)
    return tar


def remove_tree(path: Path) -> None:
    """``rm -rf path``, unless something is mounted under it (deleting through
    a mount would delete the mounted files)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        mounted = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    if mounted:
        raise SystemExit(f"not deleting {path}: mounted under it: {', '.join(mounted)}")
    shutil.rmtree(path)


def buildah_import(tar: Path, image: str) -> None:
    """A single-layer image ``image`` from the root filesystem in ``tar``."""
    container = run(["buildah", "from", "scratch"]).strip()
    try:
        mountpoint = run(["buildah", "mount", container]).strip()
        run(["tar", "-C", mountpoint, "--numeric-owner", "-xpf", str(tar)])
        run(["buildah", "umount", container])
        run(["buildah", "config", "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", container])
        run(["buildah", "commit", "--quiet", container, image])
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", help="Debian mirror (default: the one apt uses)")
    args = parser.parse_args()
    mirror = args.mirror or apt_mirror()
    image = f"{IMAGE}:{SUITE}-{key(mirror)}"
    have = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True)
    if have.returncode != 0:
        buildah_import(rootfs_tar(mirror), image)
    print(image)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
