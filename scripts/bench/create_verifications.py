#!/usr/bin/env python3
"""Create verifications on a local waverify for the benchmark.

Usage: create_verifications.py BASE_URL COUNT OUT_FILE

The API key comes from WAVERIFY_API_KEY in the environment (not argv, which
other local users can read).

Each verification goes to its own number, +1555 2xx xxxx: a number may
hold only one pending verification, and in the sandbox none of these is a
test number, so each is reported sent, delivered and read within about 3 s
of its send. The message id comes from the 201 answer when the send was
made before it; otherwise the verification is polled until the send has
been recorded.

OUT_FILE gets one line per verification: "<verification id> <message id>
<number digits>". Prints how many were created and how long it took; exits
non-zero if any of them failed.
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

# Enough parallel keep-alive connections to keep both server workers busy
# without the client's own threads (one GIL) becoming the whole cost.
CONNECTIONS = 16
FIRST_NUMBER = 15552000000
# How long to wait for sends queued behind the answer to be recorded.
MESSAGE_ID_DEADLINE = 30.0


class Client:
    """One keep-alive connection per thread."""

    def __init__(self, url, api_key):
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw), raw
        except ValueError:
            return response.status, None, raw


def in_parallel(url, api_key, items, work):
    """Runs work(client, item) over items on CONNECTIONS threads."""
    lock = threading.Lock()
    queue = iter(items)
    results, failures = [], []

    def worker():
        client = Client(url, api_key)
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                break
            try:
                ok, value = work(client, item)
            except (OSError, http.client.HTTPException) as error:
                # The server went away or broke the connection: record it
                # and stop this thread, rather than lose the item silently.
                with lock:
                    failures.append(f"{type(error).__name__}: {error}")
                break
            with lock:
                (results if ok else failures).append(value)
        client.conn.close()

    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, failures


def create(client, index):
    digits = str(FIRST_NUMBER + index)
    status, resource, raw = client.call("POST", "/v1/verifications",
                                        json.dumps({"to": "+" + digits}).encode())
    if status != 201 or not isinstance(resource, dict) or "id" not in resource:
        hint = ""
        if status == 429:
            hint = " (a limit of the server refused it: see its --help for the variable)"
        return False, f"send-code answered HTTP {status}{hint}: {raw[:300]!r}"
    message_id = (resource.get("delivery") or {}).get("message_id")
    return True, [resource["id"], message_id, digits]


def fetch_message_id(client, row):
    status, resource, raw = client.call("GET", f"/v1/verifications/{row[0]}")
    if status != 200 or not isinstance(resource, dict):
        return False, f"poll answered HTTP {status}: {raw[:300]!r}"
    row[1] = (resource.get("delivery") or {}).get("message_id")
    return True, row


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    base_url, count, out_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    url = urllib.parse.urlsplit(base_url)
    # Load goes only to the server the benchmark started itself.
    if url.scheme != "http" or url.hostname != "127.0.0.1" or not url.port:
        print(f"refusing {base_url}: only http://127.0.0.1:PORT is allowed", file=sys.stderr)
        return 2
    api_key = os.environ["WAVERIFY_API_KEY"]

    started = time.monotonic()
    rows, failures = in_parallel(url, api_key, range(count), create)
    if failures:
        print(f"{len(failures)} of {count} send-code calls failed; first: {failures[0]}",
              file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started

    deadline = time.monotonic() + MESSAGE_ID_DEADLINE
    missing = [row for row in rows if not row[1]]
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        _, failures = in_parallel(url, api_key, missing, fetch_message_id)
        if failures:
            print(f"polling failed: {failures[0]}", file=sys.stderr)
            return 1
        missing = [row for row in rows if not row[1]]
    if missing:
        print(f"{len(missing)} verifications got no message id within "
              f"{MESSAGE_ID_DEADLINE:.0f} s", file=sys.stderr)
        return 1

    with open(out_file, "w", encoding="ascii") as out:
        for verification_id, message_id, digits in rows:
            out.write(f"{verification_id} {message_id} {digits}\n")
    print(f"created {len(rows)} verifications in {elapsed:.1f} s ({len(rows) / elapsed:.0f}/s), "
          f"message ids known after {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
