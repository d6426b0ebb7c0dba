#!/usr/bin/env python3
"""Consistency check for fixtures/webhooks and fixtures/graph.

Recomputes, from the raw webhook bodies and the receiver rules, what each case in
fixtures/webhooks/expected.json should end with, and compares. Also checks the byte-level
properties the signature tests rely on (one line, no trailing newline, literal escapes)
and that every answer in fixtures/graph/manifest.json exists and has the expected shape.

Usage: scripts/check-fixtures.py [REPO_ROOT]     (exit 0 when everything holds)
"""
import json
import os
import sys

RANK = {"sent": 0, "failed": 1, "delivered": 2, "read": 3}


def statuses_of(body):
    """Yield status objects found under changes whose field is "messages"."""
    for entry in body.get("entry") or []:
        for change in entry.get("changes") or []:
            if change.get("field") != "messages":
                continue
            value = change.get("value") or {}
            for status in value.get("statuses") or []:
                yield status


def apply_case(bodies, known_ids):
    state = {mid: {"status": None, "timestamps": {}, "failures": []} for mid in known_ids}
    for body in bodies:
        for s in statuses_of(body):
            mid, name = s.get("id"), s.get("status")
            if mid not in state or name not in RANK:
                continue
            ts = int(s["timestamp"])
            rec = state[mid]
            if rec["status"] is None or RANK[name] > RANK[rec["status"]]:
                rec["status"] = name
            old = rec["timestamps"].get(name)
            rec["timestamps"][name] = ts if old is None else min(old, ts)
            if name == "failed" and s.get("errors"):
                first = s["errors"][0]
                details = (first.get("error_data") or {}).get("details")
                rec["failures"].append((ts, first["code"], first.get("title"), details))
    out = {}
    for mid, rec in state.items():
        error = None
        if rec["failures"]:
            ts, code, title, details = min(rec["failures"], key=lambda f: (f[0], f[1]))
            error = {"code": code, "title": title, "details": details}
        out[mid] = {"status": rec["status"], "timestamps": rec["timestamps"], "error": error}
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    hooks = os.path.join(root, "fixtures", "webhooks")
    graph = os.path.join(root, "fixtures", "graph")
    problems = []

    raw = {}
    for name in sorted(os.listdir(hooks)):
        if not name.endswith(".json") or name == "expected.json":
            continue
        data = open(os.path.join(hooks, name), "rb").read()
        raw[name] = data
        if b"\n" in data or b"\r" in data:
            problems.append(f"{name}: not a single line without trailing newline")
        if data != data.strip():
            problems.append(f"{name}: leading or trailing whitespace")
        try:
            json.loads(data)
        except ValueError as exc:
            problems.append(f"{name}: invalid JSON: {exc}")

    esc = raw.get("escapes.json", b"")
    for needle in (rb"\u00e9", rb"\ud83d\ude00", rb"\/"):
        if needle not in esc:
            problems.append(f"escapes.json: literal {needle.decode()} missing")
    if not any(b > 0x7F for b in raw.get("raw-utf8.json", b"")):
        problems.append("raw-utf8.json: no raw non-ASCII byte")

    expected = json.load(open(os.path.join(hooks, "expected.json"), encoding="utf-8"))
    used = set()
    together = {}
    for case in expected["cases"]:
        files = case["files"]
        used.update(files)
        missing = [f for f in files if f not in raw]
        if missing:
            problems.append(f"case {case['name']!r}: missing files {missing}")
            continue
        bodies = [json.loads(raw[f]) for f in files]
        got = apply_case(bodies, case["messages"].keys())
        for mid, want in case["messages"].items():
            if got[mid] != want:
                problems.append(f"case {case['name']!r}: {mid}: expected {want}, rules give {got[mid]}")
        ids_in_bodies = {s.get("id") for b in bodies for s in statuses_of(b)}
        for mid in case.get("unknown_messages", []):
            if mid in case["messages"]:
                problems.append(f"case {case['name']!r}: {mid} both known and unknown")
        for mid in ids_in_bodies - set(case["messages"]) - set(case.get("unknown_messages", [])):
            problems.append(f"case {case['name']!r}: {mid} appears in a status but is not listed")
        for f in files:
            together.setdefault(f, set()).update(files)
    for name in sorted(set(raw) - used):
        problems.append(f"{name}: used by no case")

    # A message id may repeat across files only when those files are posted in one case.
    owner = {}
    for name, data in raw.items():
        body = json.loads(data)
        ids = {s.get("id") for s in statuses_of(body)}
        for entry in body.get("entry") or []:
            for change in entry.get("changes") or []:
                value = change.get("value") or {}
                ids.update(s.get("id") for s in value.get("statuses") or [])
                ids.update(m.get("id") for m in value.get("messages") or [])
        for mid in ids:
            if mid in owner and owner[mid] not in together.get(name, set()):
                problems.append(f"{mid} in {owner[mid]} and {name}, never posted together")
            owner.setdefault(mid, name)

    manifest = json.load(open(os.path.join(graph, "manifest.json"), encoding="utf-8"))
    for ans in manifest["answers"]:
        path = os.path.join(graph, ans["file"])
        if not os.path.isfile(path):
            problems.append(f"graph {ans['name']}: missing {ans['file']}")
            continue
        if not ans["file"].endswith(".json"):
            continue
        body = json.load(open(path, encoding="utf-8"))
        ok = 200 <= ans["http_status"] < 300
        if ok and ("messages" not in body or "contacts" not in body):
            problems.append(f"graph {ans['name']}: success body without messages/contacts")
        if not ok:
            err = body.get("error") or {}
            if err.get("code") != ans.get("error_code"):
                problems.append(f"graph {ans['name']}: code {err.get('code')} != manifest {ans.get('error_code')}")
            for key in ("message", "type", "code", "fbtrace_id"):
                if key not in err:
                    problems.append(f"graph {ans['name']}: error.{key} missing")

    for p in problems:
        print("FAIL", p)
    print(f"{len(expected['cases'])} cases, {len(raw)} bodies, {len(manifest['answers'])} graph answers: "
          f"{'ok' if not problems else str(len(problems)) + ' problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
