#!/usr/bin/env python3
"""Sends one chat message to the Soma API and prints its event stream until the turn ends.

Uses SOMA_API_URL and SOMA_API_KEY (from .soma/dev.env). Standard library only.
"""
import json
import os
import sys
import urllib.request

api = os.environ["SOMA_API_URL"]
key = os.environ["SOMA_API_KEY"]
message = sys.argv[1] if len(sys.argv) > 1 else "Hello, Soma"

request = urllib.request.Request(
    f"{api}/v1/session/message",
    data=json.dumps({"message": message}).encode(),
    headers={"X-API-Key": key, "Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(request, timeout=30) as response:
    accepted = json.load(response)
print(f"POST /v1/session/message -> {response.status} {json.dumps(accepted)}")
print(f"Temporal UI: {os.environ.get('TEMPORAL_UI_URL', 'http://127.0.0.1:8233')}"
      f"/namespaces/default/workflows/{urllib.request.quote(accepted['workflow_id'], safe='')}")
print(f"GET /v1/session/{accepted['session_id']}/events:")

stream = urllib.request.Request(
    f"{api}/v1/session/{accepted['session_id']}/events", headers={"X-API-Key": key}
)
event = {}
with urllib.request.urlopen(stream, timeout=120) as response:
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if line:
            field, _, value = line.partition(":")
            event[field] = value[1:] if value.startswith(" ") else value
            continue
        if "data" not in event:
            event = {}
            continue
        data = json.loads(event["data"])
        kind, payload = data["type"], data["payload"]
        if kind == "llm.delta":
            print(f"  [{event['id']}] llm.delta {json.dumps(payload['text'])}")
        else:
            print(f"  [{event['id']}] {kind} {json.dumps(payload)}")
        if kind in ("turn.complete", "turn.failed", "turn.cancelled"):
            break
        event = {}
