"""Pinning the chain head outside the database detects what the chain alone cannot: the tail
deleted with the head rewound, or the whole log replaced by a new one."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from samtykke_gateway.audit import open_store
from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.cli.main import main


def _record(i: int, tag: str, day: str = "2026-11-29") -> DisclosureRecord:
    return DisclosureRecord(time=f"{day}T10:00:{i:02d}.000000Z", correlation_id=f"{tag}-{i:08d}",
                            decision="allow", reason="ok", status=200, method="GET", path="/x",
                            subject="01029413157")


def _fill(db: Path, n: int, tag: str = "cid", day: str = "2026-11-29") -> None:
    async def run() -> None:
        store = open_store(f"sqlite:///{db}")
        await store.open()
        for i in range(n):
            await store.append(_record(i, tag, day))
        await store.close()

    asyncio.run(run())


def _verify(capsys: pytest.CaptureFixture[str], db: Path, *anchors: str) -> tuple[int, str]:
    args = ["audit", "verify", "--store", f"sqlite:///{db}"]
    for anchor in anchors:
        args += ["--anchor", anchor]
    code = main(args)
    return code, capsys.readouterr().out


def test_anchor_detects_rewound_tail_and_replaced_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "log.db"
    _fill(db, 10)
    code, out = _verify(capsys, db)
    assert code == 0
    head = next(line.split()[1] for line in out.splitlines() if line.startswith("head: "))
    assert head.startswith("10:")
    assert _verify(capsys, db, head)[0] == 0
    _fill(db, 2)  # the log grows: the old anchor still holds
    code, out = _verify(capsys, db, head)
    assert code == 0 and "anchor 10: held" in out

    # delete the newest 5 rows and rewind the head to a consistent earlier state
    conn = sqlite3.connect(db)
    seq, digest = conn.execute("SELECT seq, hash FROM disclosure WHERE seq = 7").fetchone()
    conn.execute("DELETE FROM disclosure WHERE seq > 7")
    conn.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
    conn.commit()
    conn.close()
    assert _verify(capsys, db)[0] == 0  # the chain alone cannot tell
    code, out = _verify(capsys, db, head)
    assert code == 1 and "BROKEN" in out

    # the whole log replaced by a new one of the same length
    for leftover in tmp_path.glob("log.db*"):
        leftover.unlink()
    _fill(db, 10, tag="new")
    code, out = _verify(capsys, db, head)
    assert code == 1 and "another hash" in out


def test_bad_anchor_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "log.db"
    _fill(db, 1)
    assert main(["audit", "verify", "--store", f"sqlite:///{db}", "--anchor", "x"]) == 2


def _head(out: str) -> str:
    return next(line.split()[1] for line in out.splitlines() if line.startswith("head: "))


def test_anchor_behind_a_purge_is_not_confirmed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "log.db"
    _fill(db, 5, day="2020-01-01")
    early = _head(_verify(capsys, db)[1])  # 5:...
    _fill(db, 5, tag="late", day="2020-01-02")
    head = _head(_verify(capsys, db)[1])  # 10:...
    assert main(["audit", "purge", "--store", f"sqlite:///{db}", "--older-than", "1"]) == 0
    capsys.readouterr()
    # everything was purged: the checkpoint (seq 10) still carries the last hash
    code, out = _verify(capsys, db, head)
    assert code == 0 and "anchor 10: held" in out
    # an anchor before the checkpoint cannot be confirmed any more: not a pass (exit 1)
    code, out = _verify(capsys, db, early)
    assert code == 1 and "anchor 5: NOT CONFIRMED" in out


def test_emptied_log_with_a_forged_checkpoint_breaks_the_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "log.db"
    _fill(db, 8)
    head = _head(_verify(capsys, db)[1])
    seq = int(head.split(":")[0])
    # delete every record and claim a purge up to the anchored seq with another hash
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM disclosure")
    conn.execute("UPDATE chain_checkpoint SET seq = ?, hash = ? WHERE id = 1", (seq, "e" * 64))
    conn.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, "e" * 64))
    conn.commit()
    conn.close()
    assert _verify(capsys, db)[0] == 0  # the chain alone cannot tell
    code, out = _verify(capsys, db, head)
    assert code == 1 and f"anchor {seq}: BROKEN" in out
    # and a forged checkpoint further on hides the anchored record: not confirmed
    conn = sqlite3.connect(db)
    conn.execute("UPDATE chain_checkpoint SET seq = 50 WHERE id = 1")
    conn.execute("UPDATE chain_head SET seq = 50 WHERE id = 1")
    conn.commit()
    conn.close()
    code, out = _verify(capsys, db, head)
    assert code == 1 and f"anchor {seq}: NOT CONFIRMED" in out
