"""HTTP file upload (XEP-0363): slots over XMPP from the upload service, PUT and GET over
HTTP, on the filesystem store and on an S3-compatible server (moto's standalone server)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from slixmpp.exceptions import IqError

from devtools import localservers
from services.upload import files
from shared.store import keys
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import Client

UPLOAD = "upload.localhost"
MAX = 100_000
QUOTA = 150_000


@pytest.fixture(scope="module")
def upload(ways_cluster: Cluster) -> Iterator[int]:
    """The upload service on the filesystem store; its HTTP port."""
    port = ways_cluster.start_upload(STANZAD_UPLOAD_MAX_FILE_BYTES=str(MAX),
                                     STANZAD_UPLOAD_QUOTA_BYTES=str(QUOTA))
    yield port
    if "upload-1" in ways_cluster.procs and ways_cluster.procs["upload-1"].poll() is None:
        ways_cluster.kill("upload-1", 15)


async def _client(cluster: Cluster, users: Users) -> Client:
    jid, pw = await users.create("uploader")
    c = Client(jid, pw)
    for plugin in ("xep_0030", "xep_0363"):
        c.register_plugin(plugin)
    await c.login("127.0.0.1", cluster.c2s_port, presence=False)
    return c


async def _slot(c: Client, name: str, size: int, ctype: str) -> tuple[str, str]:
    iq = await c.plugin["xep_0363"].request_slot(UPLOAD, name, size, ctype, timeout=15)
    return iq["http_upload_slot"]["put"]["url"], iq["http_upload_slot"]["get"]["url"]


async def _secret(cluster: Cluster) -> bytes:
    from shared.store.redis import connect

    redis = connect(cluster.redis_url)
    try:
        return bytes(await redis.get(keys.upload_secret()))
    finally:
        await redis.aclose()


async def test_xep0363_2_discovery_lists_the_service_with_its_max_size(
    ways_cluster: Cluster, ways_users: Users, upload: int
) -> None:
    c = await _client(ways_cluster, ways_users)
    try:
        items = await c.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
        assert UPLOAD in {i[0] for i in items["disco_items"]["items"]}
        info = await c.plugin["xep_0030"].get_info(jid=UPLOAD, timeout=10)
        assert ("store", "file", None, "HTTP File Upload") in info["disco_info"]["identities"]
        assert "urn:xmpp:http:upload:0" in info["disco_info"]["features"]
        [form] = info["disco_info"].iterables
        assert form["values"]["FORM_TYPE"] == ["urn:xmpp:http:upload:0"]
        assert form["values"]["max-file-size"] == str(MAX)
    finally:
        await c.logout()


async def test_xep0363_4_slot_put_get_round_trip_on_the_filesystem(
    ways_cluster: Cluster, ways_users: Users, upload: int
) -> None:
    data = bytes(range(256)) * 100  # 25,600 bytes
    c = await _client(ways_cluster, ways_users)
    try:
        put, get = await _slot(c, "../holiday pic é.jpg", len(data), "image/jpeg")
        assert urlsplit(put).port == upload and "/holiday%20pic%20%C3%A9.jpg?" in put
        async with aiohttp.ClientSession() as http:
            async with http.options(put, headers={
                    "Origin": "https://web.example", "Access-Control-Request-Method": "PUT"}
                    ) as resp:
                assert resp.status == 204 and "PUT" in resp.headers[
                    "Access-Control-Allow-Methods"]
            headers = {"Content-Type": "image/jpeg", "Origin": "https://web.example"}
            async with http.put(put, data=data, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
            async with http.put(put, data=data, headers=headers) as resp:
                assert resp.status == 403  # a slot takes one file
            async with http.get(get, headers={"Origin": "https://web.example"}) as resp:
                assert resp.status == 200
                assert await resp.read() == data
                assert resp.headers["Content-Type"] == "image/jpeg"
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                disposition = resp.headers["Content-Disposition"]
                assert disposition.startswith("inline;") and "%C3%A9" in disposition
            async with http.get(get.replace("sig=", "sig=0")) as resp:
                assert resp.status == 403
        assert metric_value(ways_cluster.metrics("upload-1"), "stanzad_upload_slots_total",
                            result="granted") >= 1
    finally:
        await c.logout()


async def test_active_content_is_served_as_an_attachment_of_bytes(
    ways_cluster: Cluster, ways_users: Users, upload: int
) -> None:
    page = b"<html><script>alert(1)</script></html>"
    c = await _client(ways_cluster, ways_users)
    try:
        put, get = await _slot(c, "x.html", len(page), "text/html")
        async with aiohttp.ClientSession() as http:
            async with http.put(put, data=page, headers={"Content-Type": "image/png"}) as resp:
                assert resp.status == 400  # not the type of the slot
            async with http.put(put, data=page, headers={"Content-Type": "text/html"}) as resp:
                assert resp.status == 201
            async with http.get(get) as resp:
                assert resp.headers["Content-Type"] == "application/octet-stream"
                assert resp.headers["Content-Disposition"].startswith("attachment;")
                assert "sandbox" in resp.headers["Content-Security-Policy"]
    finally:
        await c.logout()


async def test_xep0363_5_file_too_large_carries_the_limit(
    ways_cluster: Cluster, ways_users: Users, upload: int
) -> None:
    c = await _client(ways_cluster, ways_users)
    try:
        with pytest.raises(IqError) as err:
            await _slot(c, "big.bin", MAX + 1, "application/octet-stream")
        error = err.value.iq["error"]
        assert error["condition"] == "not-acceptable" and error["type"] == "modify"
        raw = str(err.value.iq)
        assert "file-too-large" in raw and f"<max-file-size>{MAX}</max-file-size>" in raw
    finally:
        await c.logout()


async def test_quota_per_account(ways_cluster: Cluster, ways_users: Users, upload: int) -> None:
    c = await _client(ways_cluster, ways_users)
    try:
        await _slot(c, "a.bin", 80_000, "application/octet-stream")
        with pytest.raises(IqError) as err:
            await _slot(c, "b.bin", 80_000, "application/octet-stream")
        assert err.value.iq["error"]["condition"] == "resource-constraint"
    finally:
        await c.logout()


async def test_expired_urls_are_refused(ways_cluster: Cluster, ways_users: Users,
                                        upload: int) -> None:
    """URLs signed right but past their expiry (made with the cluster's secret, as the
    service would have made them earlier) are refused, for PUT and for GET."""
    data = b"hello"
    c = await _client(ways_cluster, ways_users)
    try:
        put, get = await _slot(c, "note.txt", len(data), "text/plain")
        secret = await _secret(ways_cluster)
        file_id, name = urlsplit(put).path.split("/")[2], "note.txt"
        base = f"http://127.0.0.1:{upload}"
        past = int(time.time()) - 1
        old_put = files.url(base, secret, "PUT", file_id, name, past, len(data), "text/plain")
        old_get = files.url(base, secret, "GET", file_id, name, past)
        async with aiohttp.ClientSession() as http:
            async with http.put(old_put, data=data, headers={"Content-Type": "text/plain"}
                                ) as resp:
                assert resp.status == 403
            async with http.put(put, data=data, headers={"Content-Type": "text/plain"}) as resp:
                assert resp.status == 201  # the live URL of the same slot works
            async with http.get(old_get) as resp:
                assert resp.status == 403
            async with http.get(get) as resp:
                assert resp.status == 200 and await resp.read() == data
    finally:
        await c.logout()


@pytest.fixture(scope="module")
def s3(ways_cluster: Cluster, upload: int) -> Iterator[tuple[str, Any]]:
    """moto's standalone S3 server with a bucket; the upload service restarted on it."""
    import boto3

    port = localservers.free_port()
    log = open(ways_cluster.workdir / "moto.log", "ab")  # noqa: SIM115
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        localservers.wait_port("127.0.0.1", port, proc=moto)
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket="stanzad-uploads")
        ways_cluster.kill("upload-1", 15)
        ways_cluster.start_upload(
            "upload-s3", STANZAD_UPLOAD_STORAGE="s3", STANZAD_UPLOAD_S3_BUCKET="stanzad-uploads",
            STANZAD_UPLOAD_S3_ENDPOINT=endpoint, STANZAD_UPLOAD_S3_ACCESS_KEY="test",
            STANZAD_UPLOAD_S3_SECRET_KEY="test", STANZAD_UPLOAD_MAX_FILE_BYTES=str(MAX))
        yield endpoint, client
    finally:
        moto.terminate()
        moto.wait(10)


async def test_xep0363_slot_put_get_round_trip_on_s3_bytes_never_pass_the_pods(
    ways_cluster: Cluster, ways_users: Users, s3: tuple[str, Any]
) -> None:
    endpoint, client = s3
    data = b"\x89PNG" + bytes(range(256)) * 40
    c = await _client(ways_cluster, ways_users)
    try:
        for _ in range(30):  # the restarted service takes the upload partition first
            try:
                put, get = await _slot(c, "s3 pic.png", len(data), "image/png")
                break
            except IqError:
                await asyncio.sleep(0.5)
        else:
            raise AssertionError("no slot from the S3-backed service")
        assert put.startswith(endpoint)  # the client PUTs to the store itself
        async with aiohttp.ClientSession() as http:
            async with http.put(put, data=data, headers={"Content-Type": "image/png"}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(get, allow_redirects=False) as resp:
                assert resp.status == 302
                location = resp.headers["Location"]
                assert location.startswith(endpoint)
            async with http.get(get) as resp:  # followed to the store
                assert resp.status == 200 and await resp.read() == data
                assert resp.headers["Content-Type"] == "image/png"
        [obj] = [o for o in client.list_objects_v2(Bucket="stanzad-uploads")["Contents"]
                 if o["Size"] == len(data)]
        assert obj["Key"] in get
    finally:
        await c.logout()
