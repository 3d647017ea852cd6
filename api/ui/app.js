// The Soma console: a session list, and a chat view that renders a turn's reply as its tokens
// arrive, with its tool calls (approve or deny those that wait for a person). It honours
// llm.retry (the round's partial text is dropped), shows a banner while the stream
// reconnects and then the rest of the reply once (events are applied once, by id), links each
// turn to its workflow in the Temporal UI, and can stop, reset and delete. It uses only the
// public API (api.js).

import { Api } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { closeOperations, openOperations } from "./ops.js";

const $ = (id) => document.getElementById(id);
const KEY_NAME = "soma.apiKey";

const state = {
  api: null,
  config: null,
  session: null, // the open session's id, or null for a new chat
  stopFollowing: () => {},
  turns: new Map(), // turn id -> { li, reply, tools, meta, rounds, text, status, workflowId }
  uploads: [], // files for the next message: { id, li, done (a promise of the id) }
};

// ---- the key -------------------------------------------------------------------------------

function storedKey() {
  return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME);
}

async function connect(key, remember) {
  const api = new Api(key);
  state.config = await api.runtimeConfig(); // fails with 401 on a wrong key
  state.api = api;
  sessionStorage.setItem(KEY_NAME, key);
  if (remember) localStorage.setItem(KEY_NAME, key);
  $("model").textContent = state.config.model ? `model ${state.config.model}` : "";
  $("key-form").hidden = true;
  $("main").hidden = false;
  $("forget-key").hidden = false;
  await refreshSessions();
  const fromUrl = location.hash.slice(1);
  if (/^[0-9a-f-]{36}$/.test(fromUrl)) await openSession(fromUrl).catch(newChat);
  else newChat();
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("key-error").textContent = "";
  try {
    await connect($("key").value.trim(), $("remember").checked);
  } catch (err) {
    $("key-error").textContent = err.status === 401 ? "That key is not valid here." : `Cannot connect: ${err.message}`;
  }
});

$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
  location.reload();
});

// ---- sessions ------------------------------------------------------------------------------

async function refreshSessions() {
  const { sessions } = await state.api.sessions();
  const list = $("sessions");
  list.replaceChildren();
  for (const session of sessions) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.className = "session" + (session.id === state.session ? " current" : "");
    button.dataset.sessionId = session.id;
    button.textContent = `${new Date(session.updated_at).toLocaleString()} · ${session.turn_count} turns`;
    button.addEventListener("click", () => openSession(session.id));
    li.appendChild(button);
    list.appendChild(li);
  }
}

function showSession(id) {
  // The open session lives in the URL, so a reload (or a shared link) opens it again.
  history.replaceState(null, "", id ? `#${id}` : location.pathname);
  state.stopFollowing();
  state.stopFollowing = () => {};
  state.session = id;
  state.turns.clear();
  $("turns").replaceChildren();
  $("banner").hidden = true;
  $("session-title").textContent = id ? `session ${id}` : "a new chat";
  $("reset").hidden = $("delete").hidden = !id;
  for (const button of document.querySelectorAll("#sessions .session")) {
    button.classList.toggle("current", button.dataset.sessionId === id);
  }
  updateBusy();
}

function newChat() {
  showSession(null);
  $("message").focus();
}

async function openSession(id) {
  showSession(id);
  const { messages, streamAfter } = await state.api.history(id);
  for (const message of messages) {
    const turn = ensureTurn(message.turn_id, message.workflow_id);
    if (message.role === "user") setUserText(turn, message.content);
    else {
      turn.text = message.content;
      renderReply(turn);
      setStatus(turn, message.status === "complete" ? "completed" : message.status);
    }
  }
  // A turn whose user message is stored but whose reply is not yet: it is running.
  for (const turn of state.turns.values()) if (!turn.status) setStatus(turn, "running");
  follow(id, streamAfter);
}

function follow(id, after) {
  state.stopFollowing = state.api.follow(id, after, onEvent, (stream) => {
    $("banner").hidden = stream !== "reconnecting";
  });
}

// ---- turns ---------------------------------------------------------------------------------

function ensureTurn(turnId, workflowId) {
  let turn = state.turns.get(turnId);
  if (!turn) {
    const li = document.createElement("li");
    li.className = "turn";
    li.dataset.turnId = turnId;
    const user = document.createElement("div");
    user.className = "user";
    const assistant = document.createElement("div");
    assistant.className = "assistant";
    const memory = document.createElement("details");
    memory.className = "memory";
    memory.hidden = true;
    const tools = document.createElement("div");
    tools.className = "tools";
    const reply = document.createElement("div");
    reply.className = "reply";
    const meta = document.createElement("div");
    meta.className = "meta";
    assistant.append(memory, tools, reply, meta);
    li.append(user, assistant);
    $("turns").appendChild(li);
    turn = { li, user, reply, tools, memory, meta, rounds: [], text: "", status: null, workflowId: null, remembered: {} };
    state.turns.set(turnId, turn);
  }
  if (workflowId && !turn.workflowId) {
    turn.workflowId = workflowId;
    renderMeta(turn);
  }
  return turn;
}

function setUserText(turn, text) {
  turn.user.textContent = text;
}

function renderReply(turn) {
  turn.reply.replaceChildren(renderMarkdown(turn.text));
  turn.li.scrollIntoView({ block: "end" });
}

function setStatus(turn, status, detail) {
  turn.status = status;
  turn.li.dataset.status = status;
  turn.detail = detail;
  renderMeta(turn);
  updateBusy();
}

function renderMeta(turn) {
  const parts = [];
  if (turn.status && turn.status !== "completed") parts.push(turn.status + (turn.detail ? `: ${turn.detail}` : ""));
  turn.meta.replaceChildren(...parts.map((text) => document.createTextNode(text + " ")));
  const ui = state.config && state.config.temporal_ui_url;
  if (ui && turn.workflowId) {
    const link = document.createElement("a");
    link.href = `${ui}/namespaces/${encodeURIComponent(state.config.temporal_namespace)}/workflows/${encodeURIComponent(turn.workflowId)}`;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.textContent = "workflow";
    link.className = "workflow-link";
    turn.meta.appendChild(link);
  }
}

function isFinished(turn) {
  return ["completed", "failed", "cancelled"].includes(turn.status);
}

function updateBusy() {
  const busy = [...state.turns.values()].some((t) => t.status === "running" || t.status === "queued");
  $("stop").disabled = !busy;
}

function onEvent(id, data) {
  const turnId = data.meta.turn_id;
  const payload = data.payload;
  switch (data.type) {
    case "message.user": {
      const turn = ensureTurn(turnId);
      setUserText(turn, payload.content);
      if (!turn.status || turn.status === "queued") setStatus(turn, "running");
      break;
    }
    case "llm.delta": {
      const turn = ensureTurn(turnId);
      if (isFinished(turn)) break; // its stored reply is shown already
      const round = payload.round || 0;
      // A compacted delta is the round's whole text (older deltas were folded into it).
      turn.rounds[round] = payload.compacted ? payload.text : (turn.rounds[round] || "") + payload.text;
      turn.text = turn.rounds.join("");
      renderReply(turn);
      break;
    }
    case "llm.retry": {
      const turn = ensureTurn(turnId);
      if (isFinished(turn)) break;
      turn.rounds[payload.round || 0] = ""; // the attempt that streamed it is being replaced
      turn.text = turn.rounds.join("");
      renderReply(turn);
      break;
    }
    case "tool.call": {
      const card = toolCard(ensureTurn(turnId), payload);
      setToolStatus(card, "running");
      break;
    }
    case "tool.approval_required": {
      const card = toolCard(ensureTurn(turnId), payload);
      setToolStatus(card, "awaiting_approval");
      askApproval(card, payload.tool_call_id);
      break;
    }
    case "tool.result": {
      const card = toolCard(ensureTurn(turnId), payload);
      card.querySelector(".decide")?.remove();
      setToolStatus(card, payload.status, payload.output ?? payload.reason ?? "");
      break;
    }
    case "memory.recall":
      showRecall(ensureTurn(turnId), payload);
      break;
    case "memory.write":
      showRemembered(ensureTurn(turnId), payload);
      break;
    case "turn.complete":
      setStatus(ensureTurn(turnId), "completed");
      break;
    case "turn.cancelled":
      setStatus(ensureTurn(turnId), "cancelled");
      break;
    case "turn.failed":
      setStatus(ensureTurn(turnId), "failed", payload.reason);
      break;
    case "attachment.status":
      if (turnId) showTurnFile(ensureTurn(turnId), payload);
      else showVerdict(payload.attachment_id, payload);
      break;
    case "session.reset":
      state.turns.clear();
      $("turns").replaceChildren();
      updateBusy();
      break;
    case "session.deleted":
      newChat();
      refreshSessions();
      break;
  }
}

// ---- memory --------------------------------------------------------------------------------

/** The turn's memory panel: what recall gave the model (key, score, the first words), or why
 *  memory was unavailable; and how its messages' memory writes ended. */
function showRecall(turn, payload) {
  const panel = turn.memory;
  panel.hidden = false;
  panel.dataset.status = payload.status;
  const summary = document.createElement("summary");
  const count = payload.memories.length;
  summary.textContent = payload.status === "unavailable"
    ? `memory unavailable: ${payload.reason ?? ""}`
    : `memory: ${count} recalled${payload.status === "degraded" ? " (degraded)" : ""}`;
  const list = document.createElement("ol");
  for (const memory of payload.memories) {
    const item = document.createElement("li");
    item.textContent = `${memory.score.toFixed(2)} · ${memory.preview}`;
    item.title = memory.key;
    list.appendChild(item);
  }
  panel.replaceChildren(summary, list, panel.querySelector(".remembered") ?? document.createElement("div"));
}

function showRemembered(turn, payload) {
  turn.remembered[payload.role ?? payload.key] = payload.status;
  const panel = turn.memory;
  if (!panel.querySelector("summary")) panel.append(Object.assign(document.createElement("summary"), { textContent: "memory" }));
  panel.hidden = false;
  let line = panel.querySelector(".remembered");
  if (!line) {
    line = document.createElement("div");
    panel.appendChild(line);
  }
  line.className = "remembered";
  line.textContent = Object.entries(turn.remembered).map(([role, status]) => `${role}: ${status.replace("_", " ")}`).join(" · ");
  if (Object.values(turn.remembered).includes("dead_lettered")) panel.dataset.status = "dead_lettered";
}

// ---- tool calls ----------------------------------------------------------------------------

/** The card of one tool call in its turn (made on its first event). */
function toolCard(turn, payload) {
  let card = turn.tools.querySelector(`[data-tool-call-id="${payload.tool_call_id}"]`);
  if (!card) {
    card = document.createElement("div");
    card.className = "tool";
    card.dataset.toolCallId = payload.tool_call_id;
    const name = document.createElement("code");
    name.textContent = `${payload.tool}(${payload.arguments ?? ""})`;
    const status = document.createElement("span");
    status.className = "tool-status";
    const output = document.createElement("div");
    output.className = "tool-output";
    card.append(name, status, output);
    turn.tools.appendChild(card);
  }
  return card;
}

function setToolStatus(card, status, output) {
  card.dataset.status = status;
  card.querySelector(".tool-status").textContent = ` ${status.replace("_", " ")}`;
  if (output !== undefined) card.querySelector(".tool-output").textContent = output;
}

/** Approve / Deny buttons on a call that waits for a person. */
function askApproval(card, toolCallId) {
  if (card.querySelector(".decide")) return;
  const decide = document.createElement("span");
  decide.className = "decide";
  for (const [label, approve] of [["Approve", true], ["Deny", false]]) {
    const button = document.createElement("button");
    button.textContent = label;
    button.className = approve ? "approve" : "deny";
    button.addEventListener("click", async () => {
      for (const b of decide.querySelectorAll("button")) b.disabled = true;
      try {
        await state.api.decideTool(toolCallId, approve);
        setToolStatus(card, approve ? "approved" : "denied");
      } catch (err) {
        card.querySelector(".tool-output").textContent = err.message;
        for (const b of decide.querySelectorAll("button")) b.disabled = false;
      }
    });
    decide.appendChild(button);
  }
  card.appendChild(decide);
}

// ---- files ---------------------------------------------------------------------------------

/** A file chosen for the next message: uploaded at once over tus with a progress bar, then
 *  its scan's verdict, live. */
function addUpload(file) {
  const li = document.createElement("li");
  li.className = "upload";
  const name = Object.assign(document.createElement("span"), { className: "name", textContent: file.name });
  const bar = Object.assign(document.createElement("progress"), { max: 1, value: 0 });
  const status = Object.assign(document.createElement("span"), { className: "upload-status", textContent: "uploading" });
  li.append(name, bar, status);
  li.dataset.status = "uploading";
  $("uploads").appendChild(li);
  const entry = { id: null, li };
  state.uploads.push(entry);
  updateSendable();
  entry.done = state.api.upload(file, state.session, (sent, total) => {
    bar.value = total ? sent / total : 1;
    status.textContent = `${(sent / 1048576).toFixed(1)} / ${(total / 1048576).toFixed(1)} MiB`;
  }).then(async (id) => {
    entry.id = id;
    li.dataset.attachmentId = id;
    bar.value = 1;
    setUploadStatus(li, "pending", "scanning…");
    updateSendable();
    // The verdict also comes as attachment.status on an open session; polling covers a new chat.
    for (;;) {
      const attachment = await state.api.attachment(id);
      if (["clean", "quarantined", "failed"].includes(attachment.status)) { showVerdict(id, attachment); return id; }
      await new Promise((r) => setTimeout(r, 500));
    }
  }).catch((err) => {
    setUploadStatus(li, "failed", `not uploaded: ${err.message}`);
    state.uploads = state.uploads.filter((u) => u !== entry);
    updateSendable();
  });
}

function setUploadStatus(li, status, text) {
  li.dataset.status = status;
  li.querySelector(".upload-status").textContent = text;
}

function showVerdict(id, attachment) {
  const li = document.querySelector(`#uploads [data-attachment-id="${id}"]`);
  if (!li) return;
  const text = attachment.status === "clean" ? "clean" : `${attachment.status}: ${attachment.verdict ?? ""}`;
  setUploadStatus(li, attachment.status, text);
}

/** A turn's file, as the turn saw it: given to the model (clean) or refused. */
function showTurnFile(turn, payload) {
  let line = turn.li.querySelector(`.file[data-attachment-id="${payload.attachment_id}"]`);
  if (!line) {
    line = Object.assign(document.createElement("div"), { className: "file" });
    line.dataset.attachmentId = payload.attachment_id;
    turn.li.querySelector(".user").after(line);
  }
  line.dataset.status = payload.status;
  line.textContent = payload.status === "clean"
    ? `📎 ${payload.filename}`
    : `📎 ${payload.filename}: ${payload.status} (${payload.verdict ?? ""}), not given to the model`;
}

/** Send waits until every chosen file's bytes are in (its scan may still run: the turn waits). */
function updateSendable() {
  $("send").disabled = state.uploads.some((u) => !u.id);
}

$("file").addEventListener("change", (event) => {
  for (const file of event.target.files) addUpload(file);
  event.target.value = "";
});

// ---- composing -----------------------------------------------------------------------------

$("compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("message").value;
  if (!text.trim()) return;
  $("error").textContent = "";
  $("send").disabled = true;
  try {
    const files = state.uploads.filter((u) => u.id).map((u) => u.id);
    const accepted = await state.api.send(text, state.session, $("if-busy").value, files);
    $("message").value = "";
    state.uploads = [];
    $("uploads").replaceChildren();
    const isNew = state.session !== accepted.session_id;
    if (isNew) {
      showSession(accepted.session_id);
      follow(accepted.session_id, accepted.stream_after);
      refreshSessions();
    }
    const turn = ensureTurn(accepted.turn_id, accepted.workflow_id);
    if (!turn.user.textContent) setUserText(turn, text);
    if (!turn.status) setStatus(turn, "queued");
  } catch (err) {
    $("error").textContent = err.code === "session_busy"
      ? "A reply is still being written (the busy policy is reject)."
      : `Not sent: ${err.message}`;
  } finally {
    updateSendable();
  }
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("compose").requestSubmit();
  }
});

$("stop").addEventListener("click", async () => {
  try {
    await state.api.cancel(state.session);
  } catch (err) {
    $("error").textContent = `Not stopped: ${err.message}`;
  }
});

$("new-session").addEventListener("click", newChat);

$("reset").addEventListener("click", async () => {
  if (!confirm("Clear this conversation? The session stays.")) return;
  try {
    await state.api.reset(state.session);
  } catch (err) {
    $("error").textContent = err.code === "session_busy" ? "Stop the running reply first." : err.message;
  }
});

$("delete").addEventListener("click", async () => {
  if (!confirm("Delete this session and everything in it?")) return;
  try {
    await state.api.remove(state.session);
    newChat();
    refreshSessions();
  } catch (err) {
    $("error").textContent = err.message;
  }
});

// ---- operations (ops.js) -------------------------------------------------------------------

// The chat (or its key form) and the operations view take turns; #ops in the URL opens the
// latter, so an operator can bookmark it.
const chatParts = ["main", "key-form"];
let chatVisible = {};

function showOperations(open) {
  if (open) {
    chatVisible = Object.fromEntries(chatParts.map((id) => [id, !$(id).hidden]));
    for (const id of chatParts) $(id).hidden = true;
    $("ops-toggle").textContent = "back to chat";
    if (location.hash !== "#ops") history.replaceState(null, "", "#ops");
    openOperations();
  } else {
    closeOperations();
    for (const id of chatParts) $(id).hidden = !chatVisible[id];
    $("ops-toggle").textContent = "operations";
    history.replaceState(null, "", state.session ? `#${state.session}` : location.pathname);
  }
}

$("ops-toggle").addEventListener("click", () => showOperations($("ops").hidden));

// ---- start ---------------------------------------------------------------------------------

const opsFirst = location.hash === "#ops";
const key = storedKey();
const started = key ? connect(key).catch(() => { $("key-form").hidden = false; }) : Promise.resolve($("key-form").hidden = false);
if (opsFirst) started.then(() => showOperations(true));
