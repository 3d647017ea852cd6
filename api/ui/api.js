// The Soma API as the console uses it: JSON calls with the API key, and a session's event
// stream through EventSource with a stream token (EventSource cannot send headers). Nothing
// here is console-specific: a web UI on another origin does the same, with CORS allowed for it.

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || `http_${status}`;
  }
}

export class Api {
  constructor(key, base = "") {
    this.key = key;
    this.base = base;
  }

  async call(method, path, body, headers = {}) {
    const init = { method, headers: { "X-API-Key": this.key, ...headers } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(this.base + path, init);
    const text = await response.text();
    const json = text ? JSON.parse(text) : null;
    if (!response.ok) throw new ApiError(response.status, json || {});
    return json;
  }

  send(message, sessionId, ifBusy, attachmentIds = []) {
    const body = { message, if_busy: ifBusy };
    if (sessionId) body.session_id = sessionId;
    if (attachmentIds.length) body.attachments = attachmentIds.map((id) => ({ id }));
    return this.call("POST", "/v1/session/message", body, { "Idempotency-Key": crypto.randomUUID() });
  }
  sessions() { return this.call("GET", "/v1/sessions?limit=50"); }
  async history(sessionId) {
    let after = null, messages = [], streamAfter = null;
    for (;;) {
      const page = await this.call("GET", `/v1/sessions/${sessionId}/messages?limit=200${after ? `&after=${after}` : ""}`);
      if (streamAfter === null) streamAfter = page.stream_after;
      messages = messages.concat(page.messages);
      if (!page.next_after) return { messages, streamAfter };
      after = page.next_after;
    }
  }
  cancel(sessionId) { return this.call("POST", `/v1/session/${sessionId}/cancel`); }
  remove(sessionId) { return this.call("DELETE", `/v1/sessions/${sessionId}`); }
  reset(sessionId) { return this.call("POST", `/v1/sessions/${sessionId}/reset`); }
  runtimeConfig() { return this.call("GET", "/v1/runtime-config"); }
  decideTool(toolCallId, approve, reason) {
    return this.call("POST", `/v1/tool/${toolCallId}/${approve ? "approve" : "deny"}`, reason ? { reason } : {});
  }
  attachment(id) { return this.call("GET", `/v1/attachments/${id}/status`); }

  // Operations (an admin key): the periodic jobs' schedules.
  schedules() { return this.call("GET", "/v1/admin/schedules"); }
  triggerSchedule(id) { return this.call("POST", `/v1/admin/schedules/${encodeURIComponent(id)}/trigger`); }
  pauseSchedule(id, paused, note) {
    return this.call("POST", `/v1/admin/schedules/${encodeURIComponent(id)}/${paused ? "pause" : "unpause"}`, note ? { note } : {});
  }

  /**
   * Uploads a file with tus-js-client (resumable: a broken request resumes from the server's
   * offset, and after a reload, choosing the same file again resumes it). Calls
   * `onProgress(sent, total)`; resolves with the attachment's id once every byte is in.
   */
  upload(file, sessionId, onProgress) {
    return new Promise((resolve, reject) => {
      const metadata = { filename: file.name, filetype: file.type || "application/octet-stream" };
      if (sessionId) metadata.session_id = sessionId;
      const upload = new window.tus.Upload(file, {
        endpoint: `${this.base}/v1/uploads`,
        headers: { "X-API-Key": this.key },
        metadata,
        chunkSize: 8 * 1024 * 1024,
        retryDelays: [0, 1000, 3000, 5000, 10000],
        removeFingerprintOnSuccess: true,
        onProgress,
        onError: reject,
        onSuccess: () => resolve(upload.url.split("/").pop()),
      });
      upload.findPreviousUploads().then((previous) => {
        if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
        upload.start();
      });
    });
  }

  streamToken(sessionId) { return this.call("POST", `/v1/session/${sessionId}/stream-token`); }

  /**
   * Follows a session's events after `after`, calling `onEvent(id, data)` once per event in
   * order, and `onState("live" | "reconnecting" | "ended")`. EventSource reconnects by itself
   * with Last-Event-ID while the token is valid; when the server refuses the token (expired),
   * a new one is minted and the stream resumes with ?after=. Returns a function that stops it.
   */
  follow(sessionId, after, onEvent, onState) {
    let source = null, lastId = after, stopped = false;
    const open = async () => {
      if (stopped) return;
      let token;
      try {
        token = (await this.streamToken(sessionId)).token;
      } catch (err) {
        if (err.status === 404) { onState("ended"); return; }
        onState("reconnecting");
        setTimeout(open, 1000);
        return;
      }
      source = new EventSource(`${this.base}/v1/session/${sessionId}/events?token=${encodeURIComponent(token)}&after=${lastId}`);
      source.onopen = () => onState("live");
      source.onerror = () => {
        if (stopped) return;
        onState("reconnecting");
        // CLOSED: the server refused (an expired token, say); CONNECTING: it retries itself.
        if (source.readyState === EventSource.CLOSED) setTimeout(open, 500);
      };
      source.onmessage = () => {}; // every event has a name; see addEventListener below
      for (const kind of KINDS) source.addEventListener(kind, (message) => {
        // The contract has an `error` event kind, and EventSource fires its own `error` (a
        // plain Event, without data) when the connection breaks: only the former is ours.
        if (typeof message.data !== "string") return;
        const id = Number(message.lastEventId);
        if (id <= lastId) return; // already shown
        lastId = id;
        onState("live");
        const data = JSON.parse(message.data);
        onEvent(id, data);
        if (data.type === "session.deleted") { stopped = true; source.close(); onState("ended"); }
      });
    };
    open();
    return () => { stopped = true; if (source) source.close(); };
  }
}

// The event kinds the console listens for (docs/architecture.md lists them all).
const KINDS = ["message.user", "memory.recall", "llm.delta", "llm.retry", "llm.complete", "tool.call",
  "tool.approval_required", "tool.result", "memory.write", "attachment.status", "turn.complete", "turn.failed", "turn.cancelled", "error",
  "session.reset", "session.deleted"];
