"""A Conversations-like session: two slixmpp clients with the slixmpp-omemo plugin (XEP-0384)
set up end-to-end encryption through PEP alone and exchange an encrypted message.

Each client, once bound, generates its identity, publishes its bundle
(``eu.siacs.conversations.axolotl.bundles:<device>`` and ``urn:xmpp:omemo:2:bundles``) and
its device list with ``publish-options`` ``access_model=open`` (XEP-0060 §7.1.5, XEP-0384
§5.3), announces ``<devicelist>+notify`` (XEP-0163 §4), then the sender downloads the peer's
device list and bundle (XEP-0060 §6.5), builds a session (X3DH) and sends an
``<encrypted/>`` message the server must deliver untouched for the peer to decrypt it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:Accessing plugins:DeprecationWarning")
omemo = pytest.importorskip("omemo")  # the test extra (pyproject.toml): slixmpp-omemo
from omemo.storage import Just, Maybe, Nothing, Storage  # noqa: E402
from omemo.types import DeviceInformation, JSONType  # noqa: E402
from slixmpp.jid import JID  # noqa: E402
from slixmpp.plugins import register_plugin  # noqa: E402
from slixmpp_omemo import XEP_0384  # noqa: E402
from slixmpp_omemo.base_session_manager import TrustLevel  # noqa: E402

from tests.conftest import Users  # noqa: E402
from tests.services.pubsub.test_pep import befriend, caps_known  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.xmpp import Client  # noqa: E402

OLDMEMO = "eu.siacs.conversations.axolotl"
OLDMEMO_DEVICES = f"{OLDMEMO}.devicelist"
TWOMEMO_DEVICES = "urn:xmpp:omemo:2:devices"


class MemoryStorage(Storage):
    """The OMEMO library's key-value storage, in memory (one per client)."""

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self._data[key]) if key in self._data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self._data[key] = value

    async def _delete(self, key: str) -> None:
        self._data.pop(key, None)


class XEP_0384Impl(XEP_0384):
    """Blind trust before verification (BTBV), as Conversations does by default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._memory = MemoryStorage()

    @property
    def storage(self) -> Storage:
        return self._memory

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(
        self, blindly_trusted: frozenset[DeviceInformation], identifier: str | None
    ) -> None:
        return None

    async def _prompt_manual_trust(
        self, manually_trusted: frozenset[DeviceInformation], identifier: str | None
    ) -> None:
        session_manager = await self.get_session_manager()
        for device in manually_trusted:
            await session_manager.set_trust(device.bare_jid, device.identity_key,
                                            TrustLevel.TRUSTED.value)


register_plugin(XEP_0384Impl)


class OmemoClient(Client):
    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        for plugin in ("xep_0004", "xep_0030", "xep_0060", "xep_0115", "xep_0163",
                       "xep_0280", "xep_0334", "xep_0380"):
            self.register_plugin(plugin)
        self.register_plugin("xep_0384", module=sys.modules[__name__])
        self.omemo_ready = asyncio.Event()
        self.add_event_handler("omemo_initialized", lambda *_: self.omemo_ready.set())

    @property
    def omemo(self) -> XEP_0384Impl:
        return self.plugin["xep_0384"]  # type: ignore[no-any-return]

    async def login(self, host: str, port: int, timeout: float = 30,
                    presence: bool = True) -> None:
        """Bound, OMEMO data generated and published, then presence with the caps that
        announce the device lists' +notify (the plugin added them as XEP-0163 interests)."""
        await super().login(host, port, timeout, presence=False)
        await asyncio.wait_for(self.omemo_ready.wait(), timeout)
        await self.plugin["xep_0115"].update_caps(broadcast=False)
        if presence:
            self.send_presence()


@contextlib.asynccontextmanager
async def omemo_online(cluster: Cluster, jid: str, password: str
                       ) -> AsyncIterator[OmemoClient]:
    client = OmemoClient(jid, password)
    await client.login("127.0.0.1", cluster.c2s_port)
    try:
        yield client
    finally:
        await client.logout()


async def next_encrypted(client: OmemoClient, sender: str, timeout: float = 30) -> Any:
    """The next chat message from ``sender`` carrying an OMEMO ``<encrypted/>``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        msg = await asyncio.wait_for(client.messages.get(), remaining)
        if msg["from"].bare == sender and client.omemo.is_encrypted(msg):
            return msg
    raise TimeoutError(f"no encrypted message from {sender}")


async def test_two_clients_set_up_omemo_through_pep_and_exchange_an_encrypted_message(
    pubsub_cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    await befriend(users, alice, bob)
    async with omemo_online(pubsub_cluster, alice, pw_a) as a, \
            omemo_online(pubsub_cluster, bob, pw_b) as b:
        await caps_known(users, alice)
        await caps_known(users, bob)
        a_device = (await (await a.omemo.get_session_manager())
                    .get_own_device_information())[0].device_id
        b_device = (await (await b.omemo.get_session_manager())
                    .get_own_device_information())[0].device_id
        # the device lists and bundles are on PEP, open to anyone (XEP-0384 §5.3.2)
        for owner, device in ((alice, a_device), (bob, b_device)):
            got = await b.plugin["xep_0060"].get_items(JID(owner), OLDMEMO_DEVICES, timeout=20)
            assert f'id="{device}"' in str(got) or f"id='{device}'" in str(got), got
            bundle = await a.plugin["xep_0060"].get_items(
                JID(owner), f"{OLDMEMO}.bundles:{device}", timeout=20)
            assert "identityKey" in str(bundle), bundle
        # publish-options became the node's configuration (XEP-0060 §7.1.5)
        config = await a.plugin["xep_0060"].get_node_config(JID(alice), OLDMEMO_DEVICES,
                                                            timeout=20)
        access = config.xml.find(".//{jabber:x:data}field[@var='pubsub#access_model']")
        assert access is not None and access.findtext("{jabber:x:data}value") == "open"

        # alice writes to bob: she fetches his device list and bundle, builds a session
        plain = a.make_message(mto=JID(bob), mbody="meet at noon", mtype="chat")
        encrypted, errors = await a.omemo.encrypt_message(plain, JID(bob))
        assert encrypted is not None and not errors, errors
        assert encrypted.xml.find(f"{{{OLDMEMO}}}encrypted") is not None
        encrypted.send()
        received = await next_encrypted(b, alice)
        assert "meet at noon" not in str(received)  # the server saw only ciphertext
        decrypted, sender = await b.omemo.decrypt_message(received)
        assert decrypted["body"] == "meet at noon"
        assert sender.bare_jid == alice and sender.device_id == a_device

        # and bob answers on the session alice's key exchange opened
        reply = b.make_message(mto=JID(alice), mbody="noon it is", mtype="chat")
        encrypted, errors = await b.omemo.encrypt_message(reply, JID(alice))
        assert encrypted is not None and not errors, errors
        encrypted.send()
        received = await next_encrypted(a, bob)
        decrypted, sender = await a.omemo.decrypt_message(received)
        assert decrypted["body"] == "noon it is"
        assert sender.bare_jid == bob and sender.device_id == b_device
