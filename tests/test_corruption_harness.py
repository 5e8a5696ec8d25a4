"""The corruption harness: bit flips at random offsets of a closed store.

A store of 300 events (5 streams, a few events larger than a page, so that
LMDB has overflow pages too, and a consumer) is written without
preallocation, so every byte of ``data.mdb`` is LMDB's: meta pages, B-tree
pages of every database, and free pages (old copies that LMDB keeps for
reuse). For each of :data:`FLIPS` offsets drawn with a fixed seed, a copy gets
one bit flipped there and is checked in a process of its own
(``corruption_check.py``): ``verify``, then every read of the original
store through the daemon's read code.

Each flip must land in one of these:

- **harmless**: verify finds nothing and every read answers exactly as
  before (the flip hit a free page, or unused space of a page);
- **detected by both**: verify reports it, and the reads that reach it fail
  (``DATA_LOSS``, or the store refuses to open);
- **detected by verify, reads unaffected**: what the flip damaged is
  something no read uses (a stream's ``last_position``, a consumer's
  checkpoint, the older meta page).

What must never happen: a flip verify does not see but a read does (an
error or a different answer), a crash (LMDB reading through a damaged
page), or a read answering with other data and no error when verify is
clean. One case is reported apart, not failed: an index entry damaged so
that it leads to another intact event, or to none (a stream read or
GetEvent answers with another stream's event, or not found): records carry
checksums but LMDB's pages do not, and the read path does not re-derive
each record's stream and revision (it would cost about as much as the read
itself); verify reports every such flip. GetEvent does check the event id
it returns, so a damaged ``event_ids`` value is ``DATA_LOSS``.

The counts are printed (``pytest -s`` shows them) and kept in
``perf/RESULTS.md`` when measured with more flips (``HARNESS_FLIPS=500``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_store_contract import cmd, event

from lighthouse_store import lmdb_format, records
from lighthouse_store.config import Durability
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import ReadQuery

FLIPS = int(os.environ.get("HARNESS_FLIPS", "30"))
SEED = int(os.environ.get("HARNESS_SEED", "17"))
CHECKER = Path(__file__).with_name("corruption_check.py")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The store, closed, and a JSON of what each read of it answers."""
    base = tmp_path_factory.mktemp("harness")
    data_dir = base / "pristine"
    store = LmdbEventStore(data_dir, map_size=1 << 26, durability=Durability.ASYNC)
    rng = random.Random(SEED)
    try:
        for i in range(100):
            size = 6000 if i % 25 == 0 else rng.randrange(20, 400)
            store.commit([cmd(f"s{i % 5}", *[event(data=bytes([i]) * size) for _ in range(3)])])
        store.commit([], {"billing": 120})
        page = store.read_page(ReadQuery(), None, 1000, 1 << 30)
    finally:
        store.close()
    decoded = [records.decode(r) for r in page.records]
    streams = sorted({e.stream for e in decoded})
    original = {
        "records": {e.position: r.hex() for e, r in zip(decoded, page.records, strict=True)},
        "streams": {s: [e.position for e in decoded if e.stream == s] for s in streams},
        "ids": {uuid.UUID(e.event_id).bytes.hex(): e.position for e in decoded},
    }
    answers = base / "original.json"
    answers.write_text(json.dumps(original))
    return data_dir, answers


def _classify(result: dict[str, Any]) -> str:
    seen_by_verify = bool(result["verify"])
    failed = bool(result["errors"]) or result["open_error"] is not None
    wrong = bool(result["wrong"])
    if not seen_by_verify:
        return "harmless" if not (failed or wrong) else "MISSED BY VERIFY"
    if wrong and not failed:
        return "index misroutes a read (verify reports it)"
    if failed:
        return "detected by verify and by reads"
    return "detected by verify, reads unaffected"


def test_bit_flips_are_detected_or_harmless(pristine: tuple[Path, Path], tmp_path: Path) -> None:
    data_dir, answers = pristine
    size = lmdb_format.data_file(data_dir).stat().st_size
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    details: list[str] = []
    for n in range(FLIPS):
        offset, bit = rng.randrange(size), rng.randrange(8)
        copy = tmp_path / f"flip{n}"
        shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("lock.mdb", "LOCK"))
        with open(lmdb_format.data_file(copy), "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ (1 << bit)]))
        proc = subprocess.run(
            [sys.executable, str(CHECKER), str(copy), str(answers)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            outcome = f"CRASH (exit {proc.returncode})"
            details.append(f"offset {offset} bit {bit}: {outcome}: {proc.stderr[-500:]}")
        else:
            result = json.loads(proc.stdout)
            outcome = _classify(result)
            said = (result["verify"] + result["errors"] + result["wrong"])[:2]
            details.append(f"offset {offset} (page {offset // 4096}) bit {bit}: {outcome}: {said}")
        outcomes[outcome] += 1
        shutil.rmtree(copy)
    print(f"\ncorruption harness: {FLIPS} flips over {size} bytes (seed {SEED}):")
    for outcome, count in outcomes.most_common():
        print(f"  {count:4d}  {outcome}")
    bad = {o for o in outcomes if o.isupper() or o.startswith(("MISSED", "CRASH"))}
    assert not bad, "\n".join(d for d in details if any(b in d for b in bad))
