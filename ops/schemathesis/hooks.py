"""Schemathesis hooks for the Soma API: how to send the bodies schemathesis has no serializer
for: `application/x-ndjson` (the session import: a generated string is sent as it is, anything
else as one JSON line) and `application/offset+octet-stream` (a tus PATCH: bytes as they are)."""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return (json.dumps(value) + "\n").encode()


@schemathesis.serializer("application/offset+octet-stream")
def offset_octet_stream(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()
