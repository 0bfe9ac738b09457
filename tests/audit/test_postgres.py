"""PostgreSQL specifics: bounded failure, recovery through a proxy, replicas sharing one chain.

The outage tests put a loopback TCP forwarder (:class:`TcpProxy`, its own thread and loop)
between the store and the real server and stop/start it; the server itself is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.audit_support import PERSON, make_record, pg_schema, with_query

from samtykke_gateway.audit import VerifyResult, open_store
from samtykke_gateway.audit.postgres import PostgresStore
from samtykke_gateway.exceptions import AuditUnavailableError

pytestmark = [pytest.mark.postgres]

__all__ = ["pg_schema"]  # the fixture, re-exported for pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpProxy:
    """Loopback forwarder to ``target`` that can be stopped (dropping every connection)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = _free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("proxy did not start")

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()
            await asyncio.sleep(0.05)  # let the transports really close their sockets
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(5)
        self._loop = self._thread = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def proxy(pg_schema: tuple[str, str]) -> Iterator[tuple[TcpProxy, str]]:
    """(proxy, store URL through the proxy)."""
    from urllib.parse import urlsplit

    url, schema = pg_schema
    parts = urlsplit(url)
    p = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    p.start()
    netloc = parts.netloc.rpartition("@")
    via = parts._replace(netloc=f"{netloc[0]}{netloc[1]}127.0.0.1:{p.port}").geturl()
    yield p, with_query(via, schema=schema, connect_timeout="2")
    p.stop()


@pytest.mark.anyio
async def test_closed_port_is_audit_unavailable_within_the_timeout(
    pg_schema: tuple[str, str],
) -> None:
    _, schema = pg_schema
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/test?schema={schema}&connect_timeout=2"
    store = open_store(url)
    started = time.monotonic()
    with pytest.raises(AuditUnavailableError):
        await store.open()
    assert time.monotonic() - started < 4.0
    with pytest.raises(AuditUnavailableError):
        await store.append(make_record(0))
    await store.close()


@pytest.mark.anyio
async def test_outage_and_recovery_without_restart(proxy: tuple[TcpProxy, str]) -> None:
    tcp, url = proxy
    store = open_store(url)
    await store.open()
    try:
        await store.append(make_record(0))
        tcp.stop()
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.append(make_record(i)) for i in range(1, 6)), return_exceptions=True
        )
        assert all(isinstance(r, AuditUnavailableError) for r in results), results
        with pytest.raises(AuditUnavailableError):
            await store.ping()
        assert time.monotonic() - started < 8.0  # appends ~2 s, ping ~2 s
        tcp.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                await store.append(make_record(99))
                break
            except AuditUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        recovered_after = time.monotonic() - started
        await store.ping()
        assert await store.verify() == VerifyResult(True, 2, None, None)
        logging.getLogger(__name__).info("recovered after %.1f s", recovered_after)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_failures_log_no_personal_data(
    proxy: tuple[TcpProxy, str], caplog: pytest.LogCaptureFixture
) -> None:
    tcp, url = proxy
    store = open_store(url)
    await store.open()
    try:
        caplog.set_level(logging.DEBUG)
        tcp.stop()
        with pytest.raises(AuditUnavailableError) as info:
            await store.append(make_record(0))
        assert PERSON not in str(info.value)
        assert info.value.__cause__ is None and info.value.__context__ is None
    finally:
        await store.close()
    assert PERSON not in caplog.text
    assert "audit store append failed" in caplog.text


@pytest.mark.anyio
async def test_newer_schema_refuses_to_open(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    store = open_store(with_query(url, schema=schema))
    await store.open()
    await store.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{schema}".schema_version (version) VALUES (99)')
    with pytest.raises(AuditUnavailableError) as info:
        await open_store(with_query(url, schema=schema)).open()
    assert info.value.reason == "audit_schema_too_new"


def test_display_url_hides_the_password() -> None:
    store = open_store("postgresql://gw:s3cret@db.example:5432/audit?schema=a_b&sslmode=require")
    assert isinstance(store, PostgresStore)
    assert "s3cret" not in store.url_for_display
    assert store.url_for_display.startswith("postgresql://gw:***@db.example:5432/audit?")
    other = open_store("postgres://db/audit?password=s3cret")
    assert "s3cret" not in other.url_for_display
    with pytest.raises(ValueError, match="schema"):
        open_store("postgresql://db/audit?schema=Robert');DROP")
    with pytest.raises(ValueError, match="max_batch"):
        open_store("postgresql://db/audit?max_batch=many")


# -- several replicas, one chain ----------------------------------------------------------------

PROCESSES = 4
PER_PROCESS = 50


def _replica(url: str, replica: int, start: Any) -> None:
    async def main() -> None:
        store = open_store(url)
        await store.open()  # all replicas migrate at once: the advisory lock serialises them
        start.wait(30)
        try:
            await asyncio.gather(
                *(
                    store.append(make_record(i, correlation_id=f"r{replica}-{i}"))
                    for i in range(PER_PROCESS)
                )
            )
        finally:
            await store.close()

    asyncio.run(main())


def test_replicas_in_separate_processes_keep_one_chain(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    store_url = with_query(url, schema=schema, max_batch="8")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_replica, args=(store_url, r, start)) for r in range(PROCESSES)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * PROCESSES

    async def check() -> None:
        store = open_store(store_url)
        await store.open()
        try:
            assert await store.verify() == VerifyResult(True, PROCESSES * PER_PROCESS, None, None)
            got = {r.correlation_id for r in await store.export(subject=PERSON)}
            assert got == {f"r{r}-{i}" for r in range(PROCESSES) for i in range(PER_PROCESS)}
        finally:
            await store.close()

    asyncio.run(check())
    import psycopg

    with psycopg.connect(url) as conn:
        seqs = [s for (s,) in conn.execute(f'SELECT seq FROM "{schema}".disclosure ORDER BY seq')]
        interleaved = conn.execute(
            f"SELECT count(*) FROM (SELECT record::jsonb->>'correlation_id' AS c,"
            f" lag(record::jsonb->>'correlation_id') OVER (ORDER BY seq) AS p FROM \"{schema}\".disclosure) t"
            " WHERE split_part(c, '-', 1) <> split_part(p, '-', 1)"
        ).fetchone()
    assert seqs == list(range(1, PROCESSES * PER_PROCESS + 1))
    assert interleaved is not None and interleaved[0] >= PROCESSES - 1  # writers really overlapped


@pytest.mark.anyio
@pytest.mark.parametrize("text", ["\x00", "a\udc80b", "'; DROP TABLE disclosure; --", "æøå\u202e"])
async def test_hostile_text_round_trips(pg_schema: tuple[str, str], text: str) -> None:
    url, schema = pg_schema
    record = make_record(0, subject=text, path=f"/api/{text}", metadata={text: [text]})
    store = open_store(with_query(url, schema=schema))
    await store.open()
    try:
        await store.append(record)
        assert (await store.verify()).ok
        assert await store.export(subject=text) == [record]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_sessions_force_synchronous_commit_and_a_lock_timeout(
    pg_schema: tuple[str, str],
) -> None:
    url, schema = pg_schema
    # A server/role/URL default of synchronous_commit=off must not weaken "durable on return".
    store = open_store(with_query(url, schema=schema, options="-csynchronous_commit%3Doff"))
    assert isinstance(store, PostgresStore)
    await store.open()
    try:

        async def show(conn: Any) -> list[str]:
            out = []
            for name in ("synchronous_commit", "lock_timeout", "search_path"):
                cur = await conn.execute(f"SHOW {name}")
                out.append((await cur.fetchone())[0])
            return out

        got = await store._with_connection("test", show, limit_seconds=5)
        assert got == ["on", "4s", schema]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_replica_stuck_holding_the_chain_head_costs_a_bounded_wait(
    pg_schema: tuple[str, str],
) -> None:
    import psycopg

    url, schema = pg_schema
    store = open_store(with_query(url, schema=schema, write_timeout="1"))
    await store.open()
    stuck = await psycopg.AsyncConnection.connect(url)
    try:
        await store.append(make_record(0))
        await stuck.execute(f'SELECT seq FROM "{schema}".chain_head WHERE id = 1 FOR UPDATE')
        started = time.monotonic()
        with pytest.raises(AuditUnavailableError, match="55P03"):  # lock_not_available
            await store.append(make_record(1))
        assert time.monotonic() - started < 1.5
        await stuck.rollback()
        await store.append(make_record(2))
        assert await store.verify() == VerifyResult(True, 2, None, None)
    finally:
        await stuck.close()
        await store.close()
