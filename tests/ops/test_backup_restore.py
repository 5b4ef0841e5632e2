"""Backup and restore as docs/operations.md ("Backup and restore") tells it: `pg_dump
--format=custom` of a running cluster's database, `pg_restore` into a fresh database, and a
new cluster (its own, empty NATS and Redis) on the restored database serves the same accounts,
roster, vCard (XEP-0054) and offline message (XEP-0160)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devtools.localservers import LocalPostgres, postgres_bin_dir
from tests.conftest import Users
from tests.support import postgres as test_postgres
from tests.support.cluster import Cluster, new_cluster
from tests.support.xmpp import RawClient, ask_iq, eventually, raw_login


async def _login(cluster: Cluster, jid: str, pw: str, resource: str) -> RawClient:
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    bound = await raw_login(raw, jid, pw, resource)
    assert b'type="result"' in bound, bound
    return raw


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{args[0]}: {done.stdout}{done.stderr}"


async def _fill(cluster: Cluster) -> tuple[str, str, str, str]:
    """Two accounts; alice's vCard and roster; a message for bob, offline."""
    users = await Users(cluster).open()
    try:
        alice, pw_a = await users.create("alice", "alice-pw")
        bob, pw_b = await users.create("bob", "bob-pw")
        a = await _login(cluster, alice, pw_a, "desk")
        try:
            sets = {
                "v": "<vCard xmlns='vcard-temp'><FN>Alice Restored</FN></vCard>",
                "r": f"<query xmlns='jabber:iq:roster'><item jid='{bob}' name='Bob'>"
                     "<group>Friends</group></item></query>",
            }
            for sid, child in sets.items():
                reply = await ask_iq(a, f"<iq type='set' id='{sid}'>{child}</iq>", sid)
                assert b'type="result"' in reply, reply
            await a.send(f"<message to='{bob}' type='chat' id='m1'><body>from the backup</body>"
                         "</message>".encode())

            async def stored() -> bool:
                return await users.offline.count(bob) == 1

            await eventually(stored, 10, "offline message stored")
        finally:
            await a.close()
        return alice, pw_a, bob, pw_b
    finally:
        await users.close()


async def test_a_cluster_on_a_restored_dump_serves_the_same_data(
    postgres: LocalPostgres, tmp_path: Path
) -> None:
    bin_dir = postgres_bin_dir()
    dump = tmp_path / "stanzad.dump"
    original = new_cluster()
    try:
        original.start_servers()
        original.start_core()
        original.start_cm()
        alice, pw_a, bob, pw_b = await _fill(original)
        # online: pg_dump reads one consistent snapshot while the services run; as the
        # owner role: the services' application role may not read the sequences' state
        assert original.database_owner_url
        _run(str(bin_dir / "pg_dump"), "--format=custom", f"--file={dump}",
             original.database_owner_url)
    finally:
        original.stop()
    assert dump.stat().st_size > 0

    restored_url = test_postgres.new_database()
    _run(str(bin_dir / "pg_restore"), "--no-owner", "--exit-on-error",
         f"--dbname={restored_url}", str(dump))

    restored = new_cluster()
    restored.database_url = restored_url
    try:
        restored.start_servers()  # a NATS and a Redis of its own: nothing of the old one
        restored.start_core()
        restored.start_cm()
        a = await _login(restored, alice, pw_a, "desk")
        try:
            vcard = await ask_iq(a, "<iq type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>",
                               "v2")
            assert b"<FN>Alice Restored</FN>" in vcard, vcard
            roster = await ask_iq(
                a, "<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>", "r2")
            assert f'jid="{bob}"'.encode() in roster and b"<group>Friends</group>" in roster
        finally:
            await a.close()
        b = await _login(restored, bob, pw_b, "back")
        try:
            await b.send(b"<presence/>")  # XEP-0160: stored messages come after it
            got = await b.read_until(b"from the backup", timeout=15)
            assert f'from="{alice}/desk"'.encode() in got
        finally:
            await b.close()
        # a wrong password is still refused: the SCRAM keys came back, not a blank account
        wrong = RawClient("127.0.0.1", restored.c2s_port)
        try:
            with pytest.raises(PermissionError, match="not-authorized"):
                await raw_login(wrong, alice, "nope", "x")
        finally:
            await wrong.close()
    finally:
        restored.stop()
