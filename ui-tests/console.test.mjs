// The web console in headless Chromium (Debian's, driven by playwright-core), against a real
// stack started by soma-stack: the api and worker processes, Temporal, PostgreSQL. soma-stack
// gives SOMA_API_URL, SOMA_API_KEY, SOMA_OTHER_TENANT_KEY and SOMA_STACK_CONTROL (to kill and
// start the api). Screenshots go to SOMA_SCREENSHOTS; the README's is docs/console.png.

import { test, before, after, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const API = process.env.SOMA_API_URL;
const KEY = process.env.SOMA_API_KEY;
const CONTROL = process.env.SOMA_STACK_CONTROL;
const SHOTS = process.env.SOMA_SCREENSHOTS || "screenshots";
const README_SHOT = process.env.SOMA_README_SCREENSHOT;
const WAIT = 60_000;
assert.ok(API && KEY && CONTROL, "run through soma-stack (ops/test does)");
mkdirSync(SHOTS, { recursive: true });

let browser, page;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
});
after(async () => { await browser?.close(); });

beforeEach(async () => {
  page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
  page.on("pageerror", (err) => { throw err; });
  await page.goto(`${API}/ui`);
  await page.fill("#key", KEY);
  await page.click("#key-form button[type=submit]");
  await page.waitForSelector("#main:not([hidden])");
});
afterEach(async (t) => {
  await page.screenshot({ path: join(SHOTS, `console-${t.name.replace(/\W+/g, "-")}.png`) });
  await page.close();
});

// ---- helpers ---------------------------------------------------------------------------------

async function api(method, path, body) {
  const response = await fetch(API + path, {
    method,
    headers: { "X-API-Key": KEY, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

async function storedReply(sessionId) {
  const { body } = await api("GET", `/v1/sessions/${sessionId}/messages?limit=200`);
  return body.messages.filter((m) => m.role === "assistant").map((m) => m.content);
}

async function send(text) {
  await page.fill("#message", text);
  await page.click("#send");
  await page.waitForFunction(() => location.hash.length > 1, null, { timeout: WAIT });
  return page.evaluate(() => location.hash.slice(1));
}

/** Records every distinct text the last turn's reply shows, from now on. */
async function recordRenders() {
  await page.evaluate(() => {
    window.__renders = [];
    new MutationObserver(() => {
      const replies = document.querySelectorAll("#turns .turn .reply");
      const text = replies.length ? replies[replies.length - 1].textContent : "";
      if (text && window.__renders[window.__renders.length - 1] !== text) window.__renders.push(text);
    }).observe(document.getElementById("turns"), { subtree: true, childList: true, characterData: true });
  });
}

const completed = () => page.waitForSelector("#turns .turn[data-status=completed]", { timeout: WAIT });
const replyText = () => page.$eval("#turns .turn:last-child .reply", (el) => el.textContent);
const partialShown = () => page.waitForFunction(() => {
  const reply = document.querySelector("#turns .turn:last-child .reply");
  return reply && reply.textContent.length > 20;
}, null, { timeout: WAIT });
const longMessage = (what) => `${what}: ` + Array.from({ length: 60 }, (_, i) => `word${i}`).join(" ");

// ---- tests -----------------------------------------------------------------------------------

test("a reply grows token by token and ends as the stored message", async () => {
  await recordRenders();
  const session = await send("Tell me about durable workflows");
  await completed();
  const renders = await page.evaluate(() => window.__renders);
  assert.ok(renders.length >= 5, `several partial renders before the end, got ${renders.length}`);
  for (let i = 1; i < renders.length; i++) assert.ok(renders[i].startsWith(renders[i - 1]), "each render grows the last");
  const [stored] = await storedReply(session);
  assert.equal(await replyText(), stored);
  if (README_SHOT) await page.screenshot({ path: README_SHOT });
});

test("a reload mid-stream shows the whole reply once", async () => {
  const session = await send(longMessage("reload"));
  await partialShown();
  await page.reload();
  await page.waitForSelector("#main:not([hidden])");
  await completed();
  assert.equal(await page.$$eval("#turns .turn", (turns) => turns.length), 1, "one turn, shown once");
  const [stored] = await storedReply(session);
  assert.equal(await replyText(), stored);
});

test("the api killed and restarted mid-stream: a banner, then the rest of the reply once", async () => {
  await recordRenders();
  const session = await send(longMessage("restart"));
  await partialShown();
  assert.equal((await fetch(`${CONTROL}/api/kill`, { method: "POST" })).status, 200);
  await page.waitForSelector("#banner:not([hidden])", { timeout: WAIT });
  await page.screenshot({ path: join(SHOTS, "console-reconnecting.png") });
  assert.equal((await fetch(`${CONTROL}/api/start`, { method: "POST" })).status, 200);
  await completed();
  await page.waitForSelector("#banner[hidden]", { state: "attached", timeout: WAIT });
  const [stored] = await storedReply(session);
  assert.equal(await replyText(), stored, "no repeated or missing text");
  const renders = await page.evaluate(() => window.__renders);
  for (let i = 1; i < renders.length; i++) assert.ok(renders[i].startsWith(renders[i - 1]), "the reply only grew");
});

test("a stream token opens its own session only, and authorizes nothing else", async () => {
  const a = (await api("POST", "/v1/session/message", { message: "session A" })).body;
  const b = (await api("POST", "/v1/session/message", { message: "session B" })).body;
  const { token } = (await api("POST", `/v1/session/${a.session_id}/stream-token`)).body;
  const results = await page.evaluate(async ({ a, b, token }) => {
    const opens = (session) => new Promise((resolve) => {
      const source = new EventSource(`/v1/session/${session}/events?token=${encodeURIComponent(token)}`);
      source.addEventListener("message.user", () => { source.close(); resolve("events"); });
      source.onerror = () => { if (source.readyState === EventSource.CLOSED) resolve("refused"); };
    });
    const other = await fetch(`/v1/session/${b}/events?token=${encodeURIComponent(token)}`);
    const post = await fetch("/v1/session/message", {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ message: "with a token", session_id: a }),
    });
    return {
      own: await opens(a),
      other: await opens(b),
      otherStatus: other.status,
      otherCode: (await other.json()).code,
      postStatus: post.status,
    };
  }, { a: a.session_id, b: b.session_id, token });
  assert.deepEqual(results, { own: "events", other: "refused", otherStatus: 401, otherCode: "invalid_token", postStatus: 401 });
});

test("markup in model output shows as text and never runs", async () => {
  const attack = `<img src=x onerror="window.__pwned = 1"> and <script>window.__pwned = 2</script> **bold**`;
  await send(attack);
  await completed();
  const reply = await page.$eval("#turns .turn:last-child .reply", (el) => ({
    text: el.textContent,
    images: el.querySelectorAll("img").length,
    scripts: el.querySelectorAll("script").length,
    bold: el.querySelectorAll("strong").length,
  }));
  assert.equal(await page.evaluate(() => window.__pwned), undefined, "nothing ran");
  assert.ok(reply.text.includes('<img src=x onerror="window.__pwned = 1">'), reply.text);
  assert.ok(reply.text.includes("<script>window.__pwned = 2</script>"), reply.text);
  assert.equal(reply.images, 0);
  assert.equal(reply.scripts, 0);
  assert.equal(reply.bold, 1, "markdown still renders");
});

test("a tool call shows in its turn, and a person approves it with a click", async () => {
  // The model calls the calculator by itself; its card shows the result, the reply uses it.
  await send("What is 17*23?");
  await completed();
  const calculator = await page.$eval("#turns .turn:last-child .tool", (el) => ({
    status: el.dataset.status, text: el.textContent,
  }));
  assert.equal(calculator.status, "succeeded");
  assert.ok(calculator.text.includes("calculator") && calculator.text.includes("391"), calculator.text);
  assert.ok((await page.textContent("#turns .turn:last-child .reply")).includes("391"));

  // current_time needs approval on this stack (SOMA_APPROVAL_REQUIRED_TOOLS): it waits for a click.
  await page.fill("#message", "[[tool:current_time {}]] what time is it?");
  await page.click("#send");
  const approve = await page.waitForSelector(
    "#turns .turn:last-child .tool[data-status=awaiting_approval] button.approve", { timeout: WAIT });
  if (README_SHOT) await page.screenshot({ path: join(SHOTS, "console-approval.png") });
  await approve.click();
  await page.waitForSelector("#turns .turn:last-child .tool[data-status=succeeded]", { timeout: WAIT });
  await page.waitForSelector("#turns .turn:last-child[data-status=completed]", { timeout: WAIT });
  const output = await page.textContent("#turns .turn:last-child .tool .tool-output");
  assert.match(output, /^\d{4}-\d\d-\d\dT/, "the tool ran once approved and its output shows");
});

test("a turn's memory panel shows what was recalled, and its messages being remembered", async () => {
  // Remembered after the first turn; recalled by a later one, in a new session.
  await send("My favourite fruit is the quince, remember it");
  await completed();
  await page.waitForFunction(
    () => document.querySelector("#turns .turn:last-child .memory .remembered")?.textContent.includes("assistant: delivered"),
    null, { timeout: WAIT });
  await page.click("#new-session");
  await send("Which fruit is my favourite?");
  await completed();
  const panel = await page.$eval("#turns .turn:last-child .memory", (el) => ({
    hidden: el.hidden, status: el.dataset.status, summary: el.querySelector("summary").textContent,
    items: [...el.querySelectorAll("li")].map((li) => li.textContent),
  }));
  assert.equal(panel.hidden, false);
  assert.equal(panel.status, "recalled");
  assert.match(panel.summary, /^memory: \d+ recalled$/);
  assert.ok(panel.items.some((item) => item.includes("quince")), JSON.stringify(panel.items));
});

test("a file attached in the console uploads with tus, turns clean live, and goes with the message", async () => {
  const text = "Meeting notes: the project code name is MARIGOLD.\n";
  await page.setInputFiles("#file", { name: "notes.md", mimeType: "text/markdown", buffer: Buffer.from(text) });
  await page.waitForSelector("#uploads li[data-status=clean]", { timeout: WAIT });
  const shown = await page.$eval("#uploads li", (li) => ({
    name: li.querySelector(".name").textContent, status: li.querySelector(".upload-status").textContent,
    progress: li.querySelector("progress").value,
  }));
  assert.deepEqual(shown, { name: "notes.md", status: "clean", progress: 1 });
  const sessionId = await send("What is the code name in my notes?");
  await completed();
  await page.waitForSelector("#turns .turn:last-child .file[data-status=clean]", { timeout: WAIT });
  assert.equal(await page.$eval("#uploads", (ul) => ul.children.length), 0, "the files went with the message");
  const { body } = await api("GET", `/v1/sessions/${sessionId}/messages?limit=200`);
  assert.ok(body.messages.some((m) => m.role === "user" && m.content.includes("code name")));
});

test("an operator runs, resumes and pauses a schedule from the operations view", async () => {
  const ADMIN_KEY = process.env.SOMA_ADMIN_KEY;
  assert.ok(ADMIN_KEY, "soma-stack gives SOMA_ADMIN_KEY");
  await page.click("#ops-toggle");
  // A tenant's key is not an admin's: the view asks again and says why.
  await page.fill("#ops-key", KEY);
  await page.click("#ops-key-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#ops-key-error").textContent.includes("not an admin key"));
  await page.fill("#ops-key", ADMIN_KEY);
  await page.click("#ops-key-form button[type=submit]");
  const row = "#schedules tr[data-schedule-id$='-publish-metrics']";
  await page.waitForSelector(`${row}[data-paused=true]`, { timeout: WAIT });
  const runs = async () => Number(await page.textContent(`${row} td:nth-child(3)`));
  const before = await runs();

  await page.click(`${row} button.trigger`);
  await page.waitForFunction(
    ([sel, n]) => Number(document.querySelector(`${sel} td:nth-child(3)`)?.textContent) > n, [row, before], { timeout: WAIT });

  page.once("dialog", (dialog) => dialog.accept("back to normal"));
  await page.click(`${row} button.unpause`);
  await page.waitForSelector(`${row}[data-paused=false]`, { timeout: WAIT });
  assert.equal(await page.textContent(`${row} .state`), "active");

  page.once("dialog", (dialog) => dialog.accept("maintenance window"));
  await page.click(`${row} button.pause`);
  await page.waitForSelector(`${row}[data-paused=true]`, { timeout: WAIT });
  assert.equal(await page.textContent(`${row} .state`), "paused: maintenance window");

  // Back to the chat as it was, and #ops opens the view directly.
  await page.click("#ops-toggle");
  await page.waitForSelector("#main:not([hidden])");
  await page.evaluate(() => history.replaceState(null, "", "#ops"));
  await page.reload();
  await page.waitForSelector(`${row}[data-paused=true]`, { timeout: WAIT });
});
