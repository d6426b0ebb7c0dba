#!/usr/bin/env python3
"""Generate signed WhatsApp status webhook bodies for the benchmark.

Usage: webhook_pool.py IDS_FILE BODIES OUT_FILE [SETUP_STARTED]

IDS_FILE has one "<verification id> <message id> <number digits>" a line
(what create_verifications.py wrote). The app secret comes from
WAVERIFY_APP_SECRET in the environment, never from argv.

SETUP_STARTED is the unix time at which the verifications began to be
created (default: two minutes ago).

OUT_FILE gets BODIES records, each "sha256=<hex> <length>\\n" followed by
exactly <length> body bytes, signed as sent: HMAC-SHA256 of those bytes.

The bodies follow the shape of the recent status webhooks in the shared
corpus (those with user ids): metadata, the recipient's contact, and per status the
recipient id and user ids, conversation and pricing (sent and delivered),
the callback data waverify put on the send, and errors for failures. They
are written as Meta sends them, not as the corpus stores them (indented, for
people to read): compact JSON, with "/" escaped as "\\/" and every
non-ASCII character as a lowercase \\uXXXX escape. (Receivers that sign
the parsed body serialized again without spaces get Meta's signature, except
where those escapes differ.) That puts one status at 0.6-1.1 KB and a
batch of five at up to 3.9 KB.

The mix: 85% of bodies carry one status, 15% a batch of 2-5. Of the
statuses, 90% name a message of a verification in IDS_FILE, 10% a message
waverify never sent (a business number shared with another sender), and
they are 25% sent, 30% delivered, 35% read and 10% failed. The known
messages are walked in a shuffled order so that one pass over the pool
touches as many verifications as it can. Their times lie before the
sandbox's own reports (before SETUP_STARTED), as Meta's event times precede
its webhooks, so even a sent, delivered or read is a real change the first
time it is applied, although the sandbox already reported all three.
"""

import hashlib
import hmac
import json
import os
import random
import sys
import time

STATUS_WEIGHTS = [("sent", 25), ("delivered", 30), ("read", 35), ("failed", 10)]

# Errors Meta reports on authentication templates, with its own wording.
ERRORS = [
    (131026, "Message undeliverable",
     "Unable to deliver message. Reasons can include: The recipient phone number is not a "
     "WhatsApp phone number."),
    (131047, "Re-engagement message",
     "Message failed to send because more than 24 hours have passed since the customer "
     "last replied to this number."),
    (131049, "This message was not delivered to maintain healthy ecosystem engagement.",
     "In order to maintain a healthy ecosystem engagement, the message failed to be "
     "delivered."),
    (131056, "(Business Account, Consumer Account) pair rate limit hit",
     "Too many messages sent from this phone number to the same phone number in a short "
     "period of time."),
    (130472, "User's number is part of an experiment",
     "Failed to send message because this user's phone number is part of an experiment"),
]

NAMES = ["Ana Souza", "José Martínez", "Priya Raman", "Oluwaseun Adeyemi", "Nguyễn Văn An",
         "Mehmet Yılmaz", "Zoë Müller", "Chen Wei", "Fatima Al-Sayed", "Sam Taylor"]

# Meta escapes "/" in URLs; json.dumps does not, so do it by hand.
ERROR_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    ids_file, bodies, out_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    setup_started = int(sys.argv[4]) if len(sys.argv) == 5 else int(time.time()) - 120
    secret = os.environ["WAVERIFY_APP_SECRET"].encode("utf-8")
    with open(ids_file, encoding="ascii") as f:
        known = [tuple(line.split()) for line in f if line.strip()]
    if not known:
        print("no verifications to make statuses for", file=sys.stderr)
        return 1

    # A fixed seed keeps runs comparable: the same mix every time.
    rng = random.Random(20261204)
    rng.shuffle(known)
    walk = iter(range(1 << 62))
    kinds = [k for k, _ in STATUS_WEIGHTS]
    weights = [w for _, w in STATUS_WEIGHTS]

    def next_known():
        return known[next(walk) % len(known)]

    def one_status():
        kind = rng.choices(kinds, weights)[0]
        if rng.random() < 0.9:
            verification_id, message_id, recipient = next_known()
        else:
            verification_id = None
            recipient = f"1555{rng.randrange(3 * 10**6, 10**7):07d}"
            message_id = "wamid.HBgL" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=44))
        # Before the sandbox's own reports, made during the setup.
        at = setup_started - 30 + {"sent": 0, "delivered": 2, "read": 9, "failed": 1}[kind]
        status = {
            "id": message_id,
            "status": kind,
            "timestamp": str(at),
            "recipient_id": recipient,
            "recipient_user_id": f"US.{rng.randrange(10**19, 10**20)}",
            "parent_recipient_user_id": f"US.ENT.{rng.randrange(10**19, 10**20)}",
        }
        if verification_id is not None:
            status["biz_opaque_callback_data"] = verification_id
        if kind in ("sent", "delivered"):
            conversation = {"id": "%032x" % rng.getrandbits(128), "origin": {"type": "authentication"}}
            if kind == "sent":
                conversation["expiration_timestamp"] = str(at + 86400)
            status["conversation"] = conversation
            status["pricing"] = {"billable": True, "pricing_model": "PMP", "type": "regular",
                                 "category": "authentication"}
        if kind == "failed":
            code, title, details = rng.choice(ERRORS)
            status["errors"] = [{"code": code, "title": title, "message": title,
                                 "error_data": {"details": details}, "href": ERROR_HREF}]
        return status, recipient

    def one_body():
        count = 1 if rng.random() < 0.85 else rng.randint(2, 5)
        statuses, contacts = [], []
        for _ in range(count):
            status, recipient = one_status()
            statuses.append(status)
            contacts.append({
                "profile": {"name": rng.choice(NAMES)},
                "wa_id": recipient,
                "user_id": status["recipient_user_id"],
                "parent_user_id": status["parent_recipient_user_id"],
            })
        body = {
            "object": "whatsapp_business_account",
            "entry": [{
                "id": "102290129340398",
                "changes": [{
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": "15550783881",
                                     "phone_number_id": "106540352242922"},
                        "contacts": contacts,
                        "statuses": statuses,
                    },
                    "field": "messages",
                }],
            }],
        }
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/")
        return text.encode("ascii"), statuses

    sizes = []
    statuses = known_statuses = 0
    # A status can change its verification only the first time its kind
    # arrives for it (later ones are duplicates): count those pairs.
    pairs = set()
    with open(out_file, "wb") as out:
        for _ in range(bodies):
            raw, body_statuses = one_body()
            statuses += len(body_statuses)
            for status in body_statuses:
                if "biz_opaque_callback_data" in status:
                    known_statuses += 1
                    pairs.add((status["id"], status["status"]))
            signature = hmac.new(secret, raw, hashlib.sha256).hexdigest()
            out.write(f"sha256={signature} {len(raw)}\n".encode("ascii"))
            out.write(raw)
            sizes.append(len(raw))
    sizes.sort()
    print(f"pool: {bodies} bodies of {sizes[0]}-{sizes[-1]} bytes (median "
          f"{sizes[len(sizes) // 2]}) with {statuses} statuses: "
          f"{statuses - known_statuses} for unknown messages, {known_statuses} for "
          f"verifications, {len(pairs)} of them new")
    return 0


if __name__ == "__main__":
    sys.exit(main())
