"""A minimal slixmpp client for the local cluster: log in, ask the partner for a presence
subscription (slixmpp accepts and subscribes back by itself, so two of these end at 'both'),
send one message, and print the messages and presence that arrive.

    .venv/bin/python examples/chat.py alice@localhost alice-password bob@localhost "hello bob"
    .venv/bin/python examples/chat.py bob@localhost bob-password     # just listen

The local cluster's certificate is self-signed, so this script does not verify it: use it
against your own machine only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys

import slixmpp


class Chat(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str, to: str | None, body: str | None) -> None:
        super().__init__(jid, password)
        self.enable_direct_tls = False
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.to, self.body = to, body
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("changed_status", self.on_presence)

    async def start(self, _: object) -> None:
        self.send_presence()
        print(f"online as {self.boundjid}")
        if self.to and self.body:
            self.send_presence(pto=self.to, ptype="subscribe")
            self.send_message(mto=self.to, mbody=self.body, mtype="chat")
            print(f"sent to {self.to}: {self.body}")

    def on_presence(self, pres: slixmpp.Presence) -> None:
        print(f"presence: {pres['from']} is {pres['type']} {pres['status']}".rstrip())

    def on_message(self, msg: slixmpp.Message) -> None:
        print(f"{msg['from']} ({msg['type']}): {msg['body']}")


async def main(argv: list[str]) -> None:
    if len(argv) not in (2, 4):
        raise SystemExit(__doc__)
    jid, password = argv[0], argv[1]
    to, body = (argv[2], argv[3]) if len(argv) == 4 else (None, None)
    client = Chat(jid, password, to, body)
    client.connect("127.0.0.1", 5222)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
