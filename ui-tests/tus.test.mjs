// The real tus-js-client (npm) in Node against a real stack started by soma-stack: a file
// uploaded in small chunks, an upload resumed from a fingerprint after the first client gave
// up half way, and both scanned clean and downloaded intact.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import * as tus from "tus-js-client";

const API = process.env.SOMA_API_URL;
const KEY = process.env.SOMA_API_KEY;
const WAIT = 60_000;
assert.ok(API && KEY, "run through soma-stack (ops/test does)");

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

function upload(bytes, options = {}) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(bytes, {
      endpoint: `${API}/v1/uploads`,
      headers: { "X-API-Key": KEY },
      metadata: { filename: "node.bin", filetype: "application/octet-stream" },
      chunkSize: 256 * 1024,
      retryDelays: [0, 500, 1000],
      onError: reject,
      onSuccess: () => resolve(upload),
      ...options,
    });
    upload.start();
    options.started?.(upload);
  });
}

async function verdict(id) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const response = await fetch(`${API}/v1/attachments/${id}/status`, { headers: { "X-API-Key": KEY } });
    const attachment = await response.json();
    if (["clean", "quarantined", "failed"].includes(attachment.status)) return attachment;
    assert.ok(Date.now() < deadline, `no verdict for ${id} within ${WAIT} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function download(id) {
  const response = await fetch(`${API}/v1/attachments/${id}`, { headers: { "X-API-Key": KEY } });
  assert.equal(response.status, 200);
  return Buffer.from(await response.arrayBuffer());
}

test("tus-js-client uploads a file in chunks; it is scanned clean and downloads intact", async () => {
  const bytes = randomBytes(1024 * 1024 + 17);
  let progressCalls = 0;
  const done = await upload(bytes, { onProgress: () => { progressCalls += 1; } });
  assert.ok(progressCalls > 1, "progress is reported as chunks go");
  const id = done.url.split("/").pop();
  const attachment = await verdict(id);
  assert.equal(attachment.status, "clean");
  assert.equal(attachment.sha256, sha256(bytes));
  assert.equal(sha256(await download(id)), sha256(bytes));
});

test("an upload abandoned half way resumes from the server's offset with a new client", async () => {
  const bytes = randomBytes(2 * 1024 * 1024);
  let first;
  await new Promise((resolve, reject) => {
    first = new tus.Upload(bytes, {
      endpoint: `${API}/v1/uploads`,
      headers: { "X-API-Key": KEY },
      metadata: { filename: "resume.bin" },
      chunkSize: 256 * 1024,
      onError: reject,
      onSuccess: () => reject(new Error("should have been stopped half way")),
      onChunkComplete: (_chunk, sent) => {
        if (sent >= bytes.length / 2) { first.abort(); resolve(); }
      },
    });
    first.start();
  });
  assert.ok(first.url, "the first client created the upload");
  const head = await fetch(first.url, { method: "HEAD", headers: { "X-API-Key": KEY, "Tus-Resumable": "1.0.0" } });
  const offset = Number(head.headers.get("upload-offset"));
  assert.ok(offset >= bytes.length / 2 && offset < bytes.length, `the server has half: ${offset}`);

  let resumedFrom = null;
  const second = await upload(bytes, {
    uploadUrl: first.url,
    onProgress: (sent) => { if (resumedFrom === null) resumedFrom = sent; },
  });
  assert.ok(resumedFrom >= offset, `the second client went on from ${resumedFrom}, not from 0`);
  const id = second.url.split("/").pop();
  assert.equal((await verdict(id)).status, "clean");
  assert.equal(sha256(await download(id)), sha256(bytes));
});
