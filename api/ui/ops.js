// The console's operations view (an admin key): every schedule with its job, how often it ran
// and when it ran last, when it runs next, and whether it is paused (with the operator's
// note); run one now, pause it (saying why) or resume it. The same as `soma schedules` and
// the admin API; each action is audited.

import { Api } from "./api.js";

const $ = (id) => document.getElementById(id);
const KEY_NAME = "soma.adminKey";
const REFRESH_MS = 5000;

let api = null;
let timer = null;

/** Opens the view: the table if an admin key is known, else the form asking for one. */
export async function openOperations() {
  $("ops").hidden = false;
  const key = sessionStorage.getItem(KEY_NAME);
  if (!key) { showKeyForm(); return; }
  try {
    await connect(key);
  } catch {
    showKeyForm();
  }
}

export function closeOperations() {
  $("ops").hidden = true;
  clearInterval(timer);
  timer = null;
}

function showKeyForm() {
  $("ops-view").hidden = true;
  $("ops-key-form").hidden = false;
  $("ops-key").focus();
}

async function connect(key) {
  const candidate = new Api(key);
  await renderSchedules(candidate); // 401 on a key that is not an admin's
  api = candidate;
  sessionStorage.setItem(KEY_NAME, key);
  $("ops-key-form").hidden = true;
  $("ops-view").hidden = false;
  clearInterval(timer);
  timer = setInterval(() => renderSchedules(api).catch(showError), REFRESH_MS);
}

$("ops-key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("ops-key-error").textContent = "";
  try {
    await connect($("ops-key").value.trim());
  } catch (err) {
    $("ops-key-error").textContent = err.status === 401 ? "That is not an admin key." : `Cannot connect: ${err.message}`;
  }
});

function showError(err) {
  $("ops-error").textContent = err.message;
}

const when = (time) => (time ? new Date(time).toLocaleString() : "—");

async function renderSchedules(client) {
  const { schedules } = await client.schedules();
  $("ops-error").textContent = "";
  const rows = schedules.map((schedule) => {
    const tr = document.createElement("tr");
    tr.dataset.scheduleId = schedule.id;
    tr.dataset.paused = schedule.paused;
    const last = schedule.recent_runs[schedule.recent_runs.length - 1];
    const cells = [
      schedule.id,
      `${schedule.job} (${schedule.spec})`,
      String(schedule.runs),
      schedule.paused ? `paused${schedule.note ? `: ${schedule.note}` : ""}` : "active",
      last ? when(last.started_at) : "never",
      schedule.paused ? "—" : when(schedule.next_runs[0]),
    ].map((text) => Object.assign(document.createElement("td"), { textContent: text }));
    cells[3].className = "state";
    const actions = document.createElement("td");
    actions.append(
      action("Run now", "trigger", () => api.triggerSchedule(schedule.id)),
      schedule.paused
        ? action("Resume", "unpause", () => api.pauseSchedule(schedule.id, false, prompt("Why resume it? (kept as its note)") || undefined))
        : action("Pause", "pause", () => api.pauseSchedule(schedule.id, true, prompt("Why pause it? (kept as its note)") || undefined)),
    );
    tr.append(...cells, actions);
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    tr.appendChild(Object.assign(document.createElement("td"), { colSpan: 7, textContent: "No schedules are configured." }));
    rows.push(tr);
  }
  $("schedules").tBodies[0].replaceChildren(...rows);
}

function action(label, name, run) {
  const button = Object.assign(document.createElement("button"), { textContent: label, className: name });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await run();
      await renderSchedules(api);
    } catch (err) {
      showError(err);
      button.disabled = false;
    }
  });
  return button;
}
