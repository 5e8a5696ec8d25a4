"""The three distributions and what each one loads.

The daemon (``lighthouse-store``) and the client (``lighthouse-store-client``)
both depend on the protocol distribution (``lighthouse-store-proto``, built
from ``protos/``), never on each other; the storage layer loads no grpc.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lighthouse_client

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(statement: str) -> set[str]:
    """Top-level module names loaded by a fresh interpreter running ``statement``."""
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return {name.split(".")[0] for name in json.loads(out)}


def test_the_storage_layer_loads_neither_grpc_nor_the_client() -> None:
    loaded = loaded_after("import lighthouse_store.lmdb_store")
    assert "lmdb" in loaded and "lighthouse_proto" in loaded  # the probe sees imports
    assert not {m for m in loaded if m == "grpc" or m.startswith("grpc_")}
    assert "lighthouse_client" not in loaded


def test_no_daemon_module_loads_the_client_library() -> None:
    statement = (
        "import pkgutil, importlib, lighthouse_store; "
        "[importlib.import_module(m.name) for m in "
        "pkgutil.walk_packages(lighthouse_store.__path__, 'lighthouse_store.')"
        " if m.name != 'lighthouse_store.__main__']"
    )
    loaded = loaded_after(statement)
    assert "grpc" in loaded  # the server modules were imported
    assert "lighthouse_client" not in loaded and "tenacity" not in loaded


def test_the_client_does_not_export_generated_modules() -> None:
    assert not {"pb", "pb_grpc"} & set(lighthouse_client.__all__)
    assert not hasattr(lighthouse_client, "pb")


@pytest.mark.parametrize(
    ("source", "name", "not_wanted"),
    [
        (".", "lighthouse-store", "lighthouse-store-client"),
        ("clients/python", "lighthouse-store-client", "lighthouse-store"),
    ],
)
def test_each_distribution_installs_alone_from_a_checkout(
    tmp_path: Path, source: str, name: str, not_wanted: str
) -> None:
    # pip resolves every dependency (a dry run installs nothing): one that
    # no index has would fail here, as the daemon's dependency on the client did.
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "-c",
            "constraints.txt",
            source,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    planned = json.loads(report.read_text())["install"]
    installs = {i["metadata"]["name"]: i["download_info"]["url"] for i in planned}
    assert name in installs and not_wanted not in installs
    assert installs["lighthouse-store-proto"] == (ROOT / "protos").as_uri()
