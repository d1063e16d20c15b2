// MAIE web UI: plain ES module, no build step, no network access beyond this server.
// Every server or user string goes into the page through textContent / text nodes (never innerHTML).

const KEY_STORAGE = "maie.apiKey";
const TERMINAL = new Set(["COMPLETE", "FAILED", "CANCELLED"]);
const STAGES = [
  ["PENDING", "Queued"],
  ["PREPROCESSING", "Preparing audio"],
  ["PROCESSING_ASR", "Transcribing"],
  ["DIARIZING", "Speakers"],
  ["PROCESSING_LLM", "Clean-up & summary"],
  ["COMPLETE", "Done"],
];
const LLM_FEATURES = new Set(["clean_transcript", "summary", "enhancement_metrics"]);
// What each warning means for a person reading the results (the server's message follows as detail).
const WARNING_TEXT = {
  LOW_CONFIDENCE:
    "Parts of the recording were not recognised reliably (another language, or unclear speech). Check those times against the audio.",
  SUMMARY_UNGROUNDED:
    "Some summary items could not be found in the transcript. They are marked “not found in the transcript”: do not rely on them without checking.",
  ENHANCE_UNCHANGED: "The clean-up step changed nothing: the text shown is the raw speech recognition, not a cleaned version.",
  ENHANCE_FAILED: "The clean-up step failed; the raw transcript is complete.",
  LLM_LOOP_CUT: "The language model repeated itself; the repeats were cut out. Check that nothing is missing.",
  SUMMARY_FAILED: "The summary could not be made; the transcript is complete.",
  DIARIZATION_FAILED: "Speakers could not be told apart; the transcript has no speaker labels.",
  LLM_UNAVAILABLE: "The language model could not be reached: clean-up and summary were skipped.",
  TIMEOUT: "A step ran out of time and was skipped.",
  AUDIO_TRUNCATED: "Only part of the recording was processed: the file is cut off or longer than allowed.",
};
const SPEAKER_COLORS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];

const $ = (id) => document.getElementById(id);

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  file: null,
  taskId: null,
  record: null,
  follow: null, // AbortController of the live stream / polling loop
  localAudio: new Map(), // task_id -> object URL of the file uploaded from this page
  schemaCache: new Map(),
  segments: [],
  activeIndex: -1,
  serverAudio: null, // {taskId, url}: the current task's audio fetched from the server (object URL)
  speakerNames: {},
  search: { query: "", marks: [], index: -1 },
  tasksJson: "",
  tasksTimer: null,
};

// ---------------------------------------------------------------- DOM helpers

/** h("div", {class: "x", onclick: fn}, child, "text") — children are nodes or plain text. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "style") for (const [k, v] of Object.entries(value)) el.style.setProperty(k, v);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function clear(el) {
  el.replaceChildren();
  return el;
}

function humanize(key) {
  const words = String(key)
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .replace(/[_-]+/g, " ")
    .trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function clock(seconds) {
  const s = Math.max(0, Number(seconds) || 0);
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = Math.floor(s % 60);
  const pad = (n) => String(n).padStart(2, "0");
  return hh ? `${hh}:${pad(mm)}:${pad(ss)}` : `${pad(mm)}:${pad(ss)}`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(0)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

function ago(iso) {
  if (!iso) return "";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const diff = (t - Date.now()) / 1000;
  const fmt = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const steps = [
    [60, "second"],
    [3600, "minute"],
    [86400, "hour"],
    [Infinity, "day"],
  ];
  let unit = 1;
  for (const [limit, name] of steps) {
    if (Math.abs(diff) < limit) return fmt.format(Math.round(diff / unit), name);
    unit = limit;
  }
  return "";
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

function authHeaders(extra = {}) {
  return state.key ? { "X-API-Key": state.key, ...extra } : { ...extra };
}

async function errorFrom(res) {
  let code = `HTTP_${res.status}`;
  let detail = res.statusText || "request failed";
  try {
    const body = await res.json();
    if (body && typeof body === "object") {
      code = body.code || code;
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
    }
  } catch {
    /* not JSON: keep the status text */
  }
  return new ApiError(res.status, code, detail);
}

async function api(path, { method = "GET", json, signal } = {}) {
  const init = { method, headers: authHeaders(), signal, cache: "no-store" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "NETWORK_ERROR", "the server could not be reached");
  }
  if (!res.ok) throw await errorFrom(res);
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}

/** POST /v1/process with XMLHttpRequest, for upload progress events. Option fields go before the file. */
function uploadAudio(file, fields, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const [name, value] of fields) form.append(name, value);
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/process");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* handled below */
      }
      if (xhr.status === 202 && body?.task_id) return resolve(body);
      const detail = typeof body?.detail === "string" ? body.detail : xhr.statusText || "upload failed";
      reject(new ApiError(xhr.status, body?.code || `HTTP_${xhr.status}`, detail));
    });
    xhr.addEventListener("error", () =>
      reject(new ApiError(0, "NETWORK_ERROR", "the upload was interrupted or the server could not be reached")),
    );
    xhr.send(form);
  });
}

/** Reads the SSE body of /v1/tasks/{id}/events with fetch (EventSource cannot send the key header):
 * `status` events to onStatus, `segment` events (text as ASR recognises it) to onSegment. */
async function streamEvents(taskId, signal, onStatus, onSegment) {
  const res = await fetch(`/v1/tasks/${encodeURIComponent(taskId)}/events`, {
    headers: authHeaders({ Accept: "text/event-stream" }),
    signal,
    cache: "no-store",
  });
  if (!res.ok) throw await errorFrom(res);
  if (!res.body) throw new Error("streaming is not supported by this browser");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let eventName = "message";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        // A lone "\r" at the end may be the first half of "\r\n": wait for the next chunk.
        if (!match || (match[0] === "\r" && match.index === buffer.length - 1)) break;
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          if (data.length && eventName === "status") {
            const event = JSON.parse(data.join("\n"));
            onStatus(event);
            if (TERMINAL.has(event.status)) return;
          } else if (data.length && eventName === "segment") {
            onSegment(JSON.parse(data.join("\n")));
          }
          eventName = "message";
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") eventName = val;
          else if (field === "data") data.push(val);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---------------------------------------------------------------- errors and server state

function showError(err) {
  if (err?.name === "AbortError") return;
  const banner = $("error");
  const isApi = err instanceof ApiError;
  $("error-title").textContent = isApi
    ? err.status
      ? `Request failed (HTTP ${err.status})`
      : "Connection problem"
    : "Something went wrong";
  $("error-detail").textContent = err?.detail || err?.message || String(err);
  $("error-code").textContent = isApi ? err.code : "";
  $("error-code").hidden = !isApi;
  banner.hidden = false;
  if (isApi && err.status === 401) {
    $("error-detail").textContent += " — check the API key at the top of the page.";
    $("api-key").focus();
  }
}

function hideError() {
  $("error").hidden = true;
}

async function checkServer() {
  const el = $("server-state");
  try {
    const res = await fetch("/health/ready", { cache: "no-store" });
    const body = await res.json().catch(() => ({}));
    if (res.ok) {
      el.textContent = "server ready";
      el.dataset.state = "ok";
    } else {
      const failing = Object.entries(body.checks || {})
        .filter(([, c]) => !c.ok)
        .map(([name]) => name);
      el.textContent = failing.length ? `not ready: ${failing.join(", ")}` : "not ready";
      el.dataset.state = "warn";
    }
  } catch {
    el.textContent = "server offline";
    el.dataset.state = "bad";
  }
}

// ---------------------------------------------------------------- options (templates, backends)

async function loadTemplates() {
  const select = $("template-id");
  const keep = select.value;
  const templates = await api("/v1/templates");
  clear(select).append(h("option", { value: "" }, "server default"));
  for (const t of templates) {
    const label = t.language ? `${t.name || t.id} (${t.language})` : t.name || t.id;
    select.append(h("option", { value: t.id, title: t.description || null }, label));
  }
  select.value = keep;
}

async function loadModels() {
  const models = await api("/v1/models");
  const select = $("asr-backend");
  const keep = select.value;
  const defaultLabel = models.default_backend ? `default (${models.default_backend})` : "server default";
  clear(select).append(h("option", { value: "" }, defaultLabel));
  for (const m of models.asr || []) {
    const label = m.model ? `${m.backend} · ${m.model}` : m.backend;
    select.append(
      h("option", { value: m.backend, disabled: m.available === false }, m.available === false ? `${label} (not installed)` : label),
    );
  }
  select.value = keep;
  // A feature the server cannot run is not offered (the server would refuse it: FEATURE_UNAVAILABLE).
  const diarization = models.features?.diarization;
  const box = $("enable-diarization");
  const off = diarization?.available === false;
  box.disabled = off;
  if (off) box.checked = false;
  box.dispatchEvent(new Event("change"));
  // An English-only model refuses other languages (LANGUAGE_UNSUPPORTED): say so where the language is typed.
  const english = models.features?.languages?.english_only;
  $("language").placeholder = english ? "en (English-only model)" : "auto";
  $("language").title = english ? "This server's speech model knows only English" : "A language code such as en or vi";
  const note = $("diarization-note");
  note.hidden = !off;
  note.textContent = off ? `Not available on this server: ${diarization.detail || "not installed"}` : "";
}

async function loadServerData() {
  if (!state.key) return;
  const results = await Promise.allSettled([loadTemplates(), loadModels(), refreshTasks()]);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) showError(failed.reason);
}

function collectFields() {
  const form = $("upload-form");
  const fields = [];
  const features = [...form.querySelectorAll('input[name="features"]:checked')].map((el) => el.value);
  if (!features.length) throw new ApiError(0, "NO_FEATURE", "choose at least one feature");
  fields.push(["features", features.join(",")]);
  const template = $("template-id").value;
  if (template && features.includes("summary")) fields.push(["template_id", template]);
  for (const name of ["asr_backend", "language", "initial_prompt", "hotwords", "enable_vad"]) {
    const value = form.elements[name].value.trim();
    if (value) fields.push([name, value]);
  }
  if (form.elements.word_timestamps.checked) fields.push(["word_timestamps", "true"]);
  if ($("enable-diarization").checked) {
    fields.push(["enable_diarization", "true"]);
    for (const name of ["min_speakers", "max_speakers"]) {
      const value = form.elements[name].value.trim();
      if (value) fields.push([name, value]);
    }
  }
  return fields;
}

function setFile(file) {
  state.file = file || null;
  $("file-name").textContent = file ? `${file.name} · ${bytes(file.size)}` : "";
  $("dropzone").classList.toggle("has-file", Boolean(file));
  $("submit-btn").disabled = !file;
}

async function onSubmit(event) {
  event.preventDefault();
  hideError();
  if (!state.key) return showError(new ApiError(401, "UNAUTHORIZED", "enter an API key first"));
  if (!state.file) return;
  let fields;
  try {
    fields = collectFields();
  } catch (err) {
    return showError(err);
  }
  const file = state.file;
  const button = $("submit-btn");
  const bar = $("upload-bar");
  const text = $("upload-text");
  button.disabled = true;
  $("upload-progress").hidden = false;
  $("upload-progress").classList.remove("failed");
  bar.value = 0;
  text.textContent = "uploading…";
  try {
    const accepted = await uploadAudio(file, fields, (loaded, total) => {
      bar.value = total ? loaded / total : 0;
      text.textContent = `uploading ${bytes(loaded)} of ${bytes(total)}`;
    });
    bar.value = 1;
    text.textContent = "uploaded";
    state.localAudio.set(accepted.task_id, URL.createObjectURL(file));
    await openTask(accepted.task_id);
    revealTask();
    refreshTasks().catch(showError);
  } catch (err) {
    text.textContent = "upload failed";
    $("upload-progress").classList.add("failed");
    showError(err);
  } finally {
    button.disabled = !state.file;
    setTimeout(() => {
      $("upload-progress").hidden = true;
    }, 1500);
  }
}

// ---------------------------------------------------------------- recent tasks

const FEATURE_LABELS = {
  raw_transcript: "transcript",
  clean_transcript: "clean-up",
  summary: "summary",
  enhancement_metrics: "metrics",
};

function taskSubline(t) {
  const parts = [];
  if (t.input_duration_s) parts.push(t.input_duration_s < 1 ? `${t.input_duration_s.toFixed(2)} s` : clock(t.input_duration_s));
  const features = (t.features || []).map((f) => FEATURE_LABELS[f] || f);
  if (t.enable_diarization) features.push("speakers");
  if (features.length) parts.push(features.join(", "));
  if (!TERMINAL.has(t.status) && t.progress) parts.push(`${Math.round(t.progress * 100)}%`);
  if ((t.warnings || []).length) parts.push(`⚠ ${t.warnings.length} warning${t.warnings.length > 1 ? "s" : ""}`);
  parts.push(ago(t.submitted_at));
  return parts.filter(Boolean).join(" · ");
}

/** Re-read the list now and then: every 2 s while a task is running, else every 10 s. */
function scheduleTaskRefresh(active) {
  clearTimeout(state.tasksTimer);
  state.tasksTimer = setTimeout(() => {
    if (document.visibilityState === "visible" && state.key) refreshTasks().catch(() => scheduleTaskRefresh(false));
    else scheduleTaskRefresh(active);
  }, active ? 2000 : 10_000);
}

async function refreshTasks() {
  if (!state.key) return;
  const tasks = await api("/v1/tasks?limit=25");
  scheduleTaskRefresh(tasks.some((t) => !TERMINAL.has(t.status)));
  const json = JSON.stringify([tasks, state.taskId]);
  if (json === state.tasksJson) return; // unchanged: keep the DOM (and focus) as it is
  state.tasksJson = json;
  const list = clear($("task-list"));
  if (!tasks.length) {
    list.append(h("li", { class: "muted small empty" }, "No tasks yet."));
    return;
  }
  for (const t of tasks) {
    const current = t.task_id === state.taskId;
    list.append(
      h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: `task-item${current ? " current" : ""}`,
            dataset: { taskId: t.task_id },
            "aria-current": current ? "true" : null,
            onclick: () => openTask(t.task_id).then(revealTask, showError),
          },
          h("span", { class: "task-item-name" }, t.filename || `task ${t.task_id.slice(0, 8)}`),
          h("span", { class: `badge badge-small status-${t.status.toLowerCase()}` }, statusLabel(t.status)),
          h("span", { class: "task-item-sub" }, taskSubline(t)),
          t.preview ? h("span", { class: "task-item-preview", title: t.preview }, `“${t.preview}”`) : null,
        ),
      ),
    );
  }
}

// ---------------------------------------------------------------- task view

function statusLabel(status) {
  return (STAGES.find(([s]) => s === status)?.[1] ?? humanize(status.toLowerCase())).replace("Done", "Complete");
}

function stagesFor(record) {
  const options = record.options || {};
  const features = options.features || [];
  const textOnly = !record.filename && Boolean(features.length) && !features.includes("raw_transcript");
  return STAGES.filter(([s]) => {
    if (s === "DIARIZING") return Boolean(options.enable_diarization || options.diarize_by_channel);
    if (s === "PROCESSING_LLM") return features.some((f) => LLM_FEATURES.has(f));
    if (s === "PREPROCESSING" || s === "PROCESSING_ASR") return !textOnly;
    return true;
  });
}

function renderProgress(record) {
  const status = record.status;
  const badge = $("task-status");
  badge.textContent = statusLabel(status);
  badge.className = `badge status-${status.toLowerCase()}`;
  const stages = stagesFor(record);
  const ended = status === "FAILED" || status === "CANCELLED";
  // A failed task shows the stage it failed in; the last step names the outcome.
  const at = ended ? record.error?.stage || record.stage : status;
  let index = stages.findIndex(([s]) => s === at);
  if (ended && index < 0) index = stages.length - 1;
  const stepper = clear($("stepper"));
  stages.forEach(([s, label], i) => {
    let cls = "todo";
    if (status === "COMPLETE" || i < index) cls = "done";
    else if (i === index) cls = ended ? "failed" : "active";
    const text = s === "COMPLETE" && ended ? statusLabel(status) : label;
    stepper.append(h("li", { class: cls, "aria-current": i === index ? "step" : null }, text));
  });
  const progress = Math.max(0, Math.min(1, Number(record.progress) || 0));
  $("task-bar").value = progress;
  const stage = record.stage && record.stage !== status ? ` · ${humanize(record.stage)}` : "";
  $("task-progress-text").textContent = `${Math.round(progress * 100)}%${stage}`;
  $("task-bar").classList.toggle("finished", TERMINAL.has(status));
  $("task-bar").classList.toggle("failed", status === "FAILED");

  const errorBox = $("task-error");
  const error = record.error;
  if (error) {
    errorBox.hidden = false;
    errorBox.classList.toggle("soft", status === "COMPLETE");
    clear(errorBox).append(
      h("strong", {}, status === "COMPLETE" ? "Partly done: " : "Failed: "),
      error.message || "",
      " ",
      h("code", {}, error.code || ""),
      error.stage ? h("span", { class: "muted small" }, ` in ${humanize(String(error.stage).toLowerCase())}`) : null,
    );
  } else {
    errorBox.hidden = true;
  }
}

function renderWarnings(record) {
  const list = clear($("task-warnings"));
  const warnings = (record.warnings || []).filter((w) => !record.error || w.code !== record.error.code);
  $("warnings").hidden = !warnings.length;
  for (const w of warnings) {
    const sentence = WARNING_TEXT[w.code] || humanize(String(w.code).toLowerCase()) + ".";
    const li = h("li", { dataset: { code: w.code } }, h("strong", {}, sentence));
    if (w.code === "LOW_CONFIDENCE") {
      const ranges = record.results?.low_confidence || [];
      if (ranges.length) {
        li.append(
          " ",
          ...ranges.map((r) =>
            h(
              "button",
              { type: "button", class: "time-link", dataset: { start: String(r.start) }, onclick: () => playAt(r.start),
                "aria-label": `Play the unreliable part from ${clock(r.start)}` },
              `${clock(r.start)}–${clock(r.end)}`,
            ),
          ),
        );
      }
    }
    li.append(h("span", { class: "detail" }, w.message || "", " ", h("code", {}, w.code)));
    list.append(li);
  }
}

function hasWarning(record, code) {
  return (record?.warnings || []).some((w) => w.code === code);
}

function renderHeader(record) {
  $("task-title").textContent = record.filename || (record.options?.features ? "Text task" : "Task");
  const meta = [];
  if (record.submitted_at) meta.push(`submitted ${ago(record.submitted_at)}`);
  const duration = record.metrics?.input_duration_s ?? record.metrics?.declared_duration_s;
  if (duration) meta.push(`${duration < 1 ? `${duration.toFixed(2)} s` : clock(duration)} of audio`);
  if (record.results?.language) meta.push(`language ${record.results.language}`);
  meta.push(`id ${record.task_id}`);
  $("task-meta").textContent = meta.join(" · ");
}

function speakerColor(id, speakers) {
  const index = speakers.findIndex((s) => s.id === id);
  return SPEAKER_COLORS[(index < 0 ? 0 : index) % SPEAKER_COLORS.length];
}

function speakerName(id) {
  return state.speakerNames[id] || id;
}

function renderSpeakers(results) {
  const speakers = results.speakers || [];
  const speakerBox = clear($("speakers"));
  for (const s of speakers) {
    const chip = h(
      "span",
      { class: "speaker-chip", dataset: { speaker: s.id }, style: { "--spk": speakerColor(s.id, speakers) } },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("span", { class: "speaker-name" }, speakerName(s.id)),
      h("span", { class: "muted" }, ` · ${clock(s.talk_time_s)}`),
      h("button", { type: "button", class: "rename", "aria-label": `Rename ${speakerName(s.id)}`, title: "Rename",
                    onclick: () => startRename(chip, s.id) }, "✎"),
    );
    speakerBox.append(chip);
  }
}

function startRename(chip, id) {
  const input = h("input", { type: "text", maxlength: "80", value: state.speakerNames[id] || "",
                             placeholder: id, "aria-label": `Name for ${id}` });
  const form = h("form", { class: "speaker-rename" }, input);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    renameSpeaker(id, input.value.trim());
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Escape") renderSpeakers(state.record.results || {});
  });
  chip.querySelector(".speaker-name").replaceWith(form);
  chip.querySelector(".rename").hidden = true;
  input.focus();
}

async function renameSpeaker(id, name) {
  const taskId = state.taskId;
  try {
    const record = await api(`/v1/tasks/${encodeURIComponent(taskId)}`, {
      method: "PATCH",
      json: { speakers: { [id]: name || null } },
    });
    if (state.taskId === taskId) await renderRecord(record);
  } catch (err) {
    showError(err);
    renderSpeakers(state.record?.results || {});
  }
}

function renderTranscript(results) {
  const speakers = results.speakers || [];
  renderSpeakers(results);
  const list = clear($("transcript"));
  state.segments = results.segments || [];
  state.activeIndex = -1;
  if (!state.segments.length) {
    const text = results.raw_transcript || "";
    list.append(h("li", { class: "segment plain" }, text || h("span", { class: "muted" }, "No speech found.")));
    return;
  }
  state.segments.forEach((seg, i) => {
    const title = seg.confidence != null ? `confidence ${(seg.confidence * 100).toFixed(0)}%` : null;
    const li = h(
      "li",
      {
        class: "segment",
        tabindex: "0",
        role: "button",
        title,
        "aria-label": `Play from ${clock(seg.start)}${seg.speaker ? `, ${speakerName(seg.speaker)}` : ""}: ${seg.text}`,
        dataset: { index: String(i), start: String(seg.start) },
        onclick: () => playFrom(i),
        onkeydown: (e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            playFrom(i);
          }
        },
      },
      h("span", { class: "seg-time" }, clock(seg.start)),
      seg.speaker
        ? h("span", { class: "seg-speaker", style: { "--spk": speakerColor(seg.speaker, speakers) } }, speakerName(seg.speaker))
        : null,
      h("span", { class: "seg-text" }, seg.text.trim()),
    );
    list.append(li);
  });
}

function playFrom(index) {
  const seg = state.segments[index];
  if (seg) playAt(seg.start, index);
}

/** Jump the player to ``seconds`` and play (the transcript line there is highlighted). */
function playAt(seconds, index) {
  const player = $("player");
  if (!player.getAttribute("src")) {
    const label = $("attach-label").hidden ? $("audio-state") : $("attach-label");
    label.classList.remove("flash");
    void label.offsetWidth; // restart the animation
    label.classList.add("flash");
    return;
  }
  player.currentTime = Number(seconds) || 0;
  const at = index ?? state.segments.findIndex((s) => seconds >= s.start - 0.01 && seconds < s.end);
  if (at >= 0) highlight(at, true);
  player.play().catch(() => {
    /* autoplay refused or the format is unsupported: the position is still set */
  });
}

function highlight(index, scroll) {
  if (index === state.activeIndex) return;
  const list = $("transcript");
  list.querySelector(".segment.active")?.classList.remove("active");
  state.activeIndex = index;
  const el = list.querySelector(`.segment[data-index="${index}"]`);
  if (el) {
    el.classList.add("active");
    if (scroll) el.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }
}

function onTimeUpdate() {
  const t = $("player").currentTime;
  const index = state.segments.findIndex((s) => t >= s.start && t < s.end);
  if (index >= 0) highlight(index, !$("player").paused);
}

function usePlayerSource(url, source) {
  const player = $("player");
  if (player.getAttribute("src") !== url) player.src = url;
  player.dataset.source = source;
  player.hidden = false;
  $("attach-label").hidden = true;
  $("audio-state").hidden = true;
}

function setupPlayer(taskId) {
  const player = $("player");
  const url = state.localAudio.get(taskId) || (state.serverAudio?.taskId === taskId ? state.serverAudio.url : null);
  if (url) {
    usePlayerSource(url, state.localAudio.has(taskId) ? "local" : "server");
  } else {
    player.pause();
    player.removeAttribute("src");
    delete player.dataset.source;
    player.load();
    player.hidden = true;
    $("attach-label").hidden = true;
  }
}

/**
 * The task's audio from the server (``GET /v1/tasks/{id}/audio``, owner only), so playback works after a
 * reload and on another machine. The key must travel in a header, which an <audio src> request cannot
 * send, so the file is fetched with the key into a Blob and played from an object URL: the whole file is
 * downloaded before it plays (fine for meetings up to a few hundred MB; no Range streaming). Only the
 * current task's audio is kept in memory.
 */
async function loadServerAudio(record) {
  const taskId = record.task_id;
  if (state.localAudio.has(taskId) || state.serverAudio?.taskId === taskId) return;
  const status = $("audio-state");
  if (!record.filename || record.status === "CANCELLED") {
    status.hidden = true;
    $("attach-label").hidden = false;
    return;
  }
  status.hidden = false;
  status.textContent = "loading the recording…";
  try {
    const res = await fetch(`/v1/tasks/${encodeURIComponent(taskId)}/audio`, { headers: authHeaders(), cache: "no-store" });
    if (!res.ok) throw await errorFrom(res);
    const blob = await res.blob();
    if (state.taskId !== taskId) return;
    if (state.serverAudio) URL.revokeObjectURL(state.serverAudio.url);
    state.serverAudio = { taskId, url: URL.createObjectURL(blob) };
    usePlayerSource(state.serverAudio.url, "server");
  } catch (err) {
    if (state.taskId !== taskId) return;
    // Audio past retention or deleted: playing the local copy still works.
    status.textContent = err instanceof ApiError && err.status === 409 ? "the recording is no longer kept on the server" : "the recording could not be loaded";
    $("attach-label").hidden = false;
  }
}

// ---------------------------------------------------------------- search in the transcript

/** Mark every match of the query in the transcript lines (text nodes and <mark>, never HTML). */
function applySearch(jump) {
  const query = $("search").value.trim().toLowerCase();
  state.search = { query, marks: [], index: -1 };
  for (const el of document.querySelectorAll("#transcript .seg-text")) {
    const text = el.dataset.text ?? el.textContent;
    el.dataset.text = text;
    if (!query) {
      el.textContent = text;
      continue;
    }
    const lower = text.toLowerCase();
    const parts = [];
    let from = 0;
    for (let at = lower.indexOf(query); at >= 0; at = lower.indexOf(query, at + query.length)) {
      if (at > from) parts.push(text.slice(from, at));
      const mark = h("mark", {}, text.slice(at, at + query.length));
      state.search.marks.push(mark);
      parts.push(mark);
      from = at + query.length;
    }
    if (from < text.length) parts.push(text.slice(from));
    el.replaceChildren(...parts);
  }
  const count = state.search.marks.length;
  $("search-count").textContent = query ? (count ? `${count} found` : "not found") : "";
  if (jump && count) stepSearch(1);
}

function stepSearch(direction) {
  const { marks } = state.search;
  if (!marks.length) return;
  marks[state.search.index]?.classList.remove("current");
  state.search.index = (state.search.index + direction + marks.length) % marks.length;
  const mark = marks[state.search.index];
  mark.classList.add("current");
  mark.scrollIntoView({ block: "nearest" });
  $("search-count").textContent = `${state.search.index + 1} of ${marks.length}`;
}

async function templateSchema(templateId) {
  if (!templateId) return null;
  if (!state.schemaCache.has(templateId)) {
    const schema = await api(`/v1/templates/${encodeURIComponent(templateId)}/schema`).catch(() => null);
    state.schemaCache.set(templateId, schema);
  }
  return state.schemaCache.get(templateId);
}

/** JSON pointer (RFC 6901) of a child: the path ``summary_evidence`` uses. */
function pointer(base, key) {
  return `${base}/${String(key).replace(/~/g, "~0").replace(/\//g, "~1")}`;
}

/**
 * Evidence of the summary leaves by JSON pointer: ``results.summary_evidence`` entries
 * ``{path, segments, start, end, score, supported}``, and ``summary_grounding.unsupported`` paths.
 */
function evidenceIndex(results) {
  const byPath = new Map();
  for (const e of results.summary_evidence || []) if (e && typeof e.path === "string") byPath.set(e.path, e);
  for (const path of results.summary_grounding?.unsupported || []) {
    if (!byPath.has(path)) byPath.set(path, { path, supported: false });
  }
  return byPath;
}

/** A summary leaf with its evidence: a time button that plays where it was said, or a visible mark. */
function leaf(content, path, evidence) {
  const e = evidence.get(path);
  if (!e) return content;
  if (e.supported) {
    const score = typeof e.score === "number" ? ` (match ${Math.round(e.score <= 1 ? e.score * 100 : e.score)}%)` : "";
    return h(
      "span",
      { class: "leaf supported", dataset: { path } },
      content,
      " ",
      h(
        "button",
        {
          type: "button",
          class: "time-link evidence",
          dataset: { start: String(e.start ?? 0), path },
          title: `said at ${clock(e.start)}–${clock(e.end)}${score}: play it`,
          "aria-label": `Play where this was said, at ${clock(e.start)}`,
          onclick: () => playAt(e.start ?? 0, e.segments?.[0]),
        },
        `▶ ${clock(e.start)}`,
      ),
    );
  }
  return h(
    "span",
    { class: "leaf unsupported", dataset: { path }, title: "No part of the transcript supports this item." },
    content,
    h("span", { class: "unsupported-tag" }, "not found in the transcript"),
  );
}

function renderValue(value, schema, path = "", evidence = new Map()) {
  if (value === null || value === undefined || value === "") return h("span", { class: "muted" }, "—");
  if (Array.isArray(value)) {
    if (!value.length) return h("span", { class: "muted" }, "none");
    const itemSchema = schema?.items;
    // Names and tags read better inline; sentences stay a list.
    const short = (x) => (typeof x === "string" || typeof x === "number") && String(x).trim().split(/\s+/).length <= 3;
    if (value.every(short)) {
      return h(
        "ul",
        { class: "chips" },
        value.map((item, i) => {
          const p = pointer(path, i);
          const bad = evidence.get(p)?.supported === false;
          return h("li", { class: bad ? "unsupported" : null }, leaf(String(item), p, evidence));
        }),
      );
    }
    return h(
      "ul",
      { class: "sum-list" },
      value.map((item, i) => h("li", {}, renderValue(item, itemSchema, pointer(path, i), evidence))),
    );
  }
  if (typeof value === "object") {
    const props = schema?.properties || {};
    const keys = orderedKeys(value, props);
    return h(
      "dl",
      { class: "sum-dl" },
      keys.flatMap((k) => [
        h("dt", {}, props[k]?.title || humanize(k)),
        h("dd", {}, renderValue(value[k], props[k], pointer(path, k), evidence)),
      ]),
    );
  }
  const text = typeof value === "boolean" ? (value ? "yes" : "no") : String(value);
  return leaf(text, path, evidence);
}

function orderedKeys(obj, props) {
  const known = Object.keys(props).filter((k) => k in obj);
  return [...known, ...Object.keys(obj).filter((k) => !known.includes(k))];
}

async function renderSummary(results) {
  const card = $("summary-card");
  const summary = results.summary;
  if (summary === undefined || summary === null) {
    card.hidden = true;
    return;
  }
  card.hidden = false;
  $("summary-template").textContent = results.template_id ? `template ${results.template_id}` : "";
  const grounding = results.summary_grounding;
  const note = $("grounding");
  note.hidden = !grounding || !grounding.total;
  if (grounding?.total) {
    const missing = grounding.total - grounding.supported;
    note.textContent = missing
      ? `${grounding.supported} of ${grounding.total} items were found in the transcript; ${missing} could not be checked and are marked.`
      : `All ${grounding.total} items were found in the transcript: use ▶ to hear each one.`;
    note.classList.toggle("ok", !missing);
  }
  const box = clear($("summary"));
  if (typeof summary !== "object" || Array.isArray(summary)) {
    box.append(renderValue(summary, null));
    return;
  }
  const schema = await templateSchema(results.template_id);
  const props = schema?.properties || {};
  const evidence = evidenceIndex(results);
  for (const key of orderedKeys(summary, props)) {
    const value = summary[key];
    const prop = props[key];
    const path = pointer("", key);
    const body =
      typeof value === "string" && value.length > 80
        ? h("p", {}, leaf(value, path, evidence))
        : h("div", {}, renderValue(value, prop, path, evidence));
    box.append(h("section", { class: "sum-section" }, h("h3", {}, prop?.title || humanize(key)), body));
  }
}

function renderClean(results, record) {
  const card = $("clean-card");
  const text = results.clean_transcript;
  card.hidden = !text;
  // Clean-up that kept every chunk raw is not a clean transcript: say so instead of labelling it "clean".
  const unchanged = hasWarning(record, "ENHANCE_UNCHANGED");
  $("clean-title").textContent = unchanged ? "Transcript text (not cleaned up)" : "Clean transcript";
  $("clean-note").hidden = !unchanged;
  $("clean-note").textContent = unchanged ? WARNING_TEXT.ENHANCE_UNCHANGED : "";
  const box = clear($("clean-transcript"));
  if (text) {
    for (const para of text.split(/\n\s*\n|\n/).filter((p) => p.trim())) box.append(h("p", {}, para.trim()));
  }
}

function flatten(obj, prefix = "", out = []) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out.push([key, v]);
  }
  return out;
}

function renderMetrics(record) {
  const dl = clear($("metrics"));
  const rows = [...flatten(record.metrics, "metrics"), ...flatten(record.versions, "versions")];
  $("metrics-card").hidden = !rows.length;
  for (const [k, v] of rows) {
    const shown = typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : Array.isArray(v) ? v.join(", ") : v;
    dl.append(h("dt", {}, k.replace(/^(metrics|versions)\./, "")), h("dd", {}, shown === null ? "—" : String(shown)));
  }
}

async function renderRecord(record) {
  state.record = record;
  if (TERMINAL.has(record.status)) clearLiveText(); // the record has the transcript now
  state.speakerNames = record.speaker_names || {};
  $("empty-state").hidden = true;
  $("task-panel").hidden = false;
  renderHeader(record);
  renderProgress(record);
  renderWarnings(record);
  const results = record.results;
  const show = record.status === "COMPLETE" && results;
  $("results").hidden = !show;
  if (show) {
    renderTranscript(results);
    applySearch(false);
    renderClean(results, record);
    renderMetrics(record);
    await renderSummary(results);
  }
}

/** Bring the task panel into view (the user may have scrolled down to the submit button or a task). */
function revealTask() {
  const panel = $("task-panel");
  if (panel.getBoundingClientRect().top < 0 || panel.getBoundingClientRect().top > window.innerHeight * 0.6) {
    panel.scrollIntoView({ behavior: "smooth", block: "start" });
  }
}

function stopFollowing() {
  state.follow?.abort();
  state.follow = null;
  clearLiveText();
}

function clearLiveText() {
  const live = $("live-text");
  live.textContent = "";
  live.hidden = true;
}

async function openTask(taskId) {
  stopFollowing();
  hideError();
  state.taskId = taskId;
  for (const el of document.querySelectorAll(".task-item")) {
    const current = el.dataset.taskId === taskId;
    el.classList.toggle("current", current);
    if (current) el.setAttribute("aria-current", "true");
    else el.removeAttribute("aria-current");
  }
  setupPlayer(taskId);
  const record = await api(`/v1/status/${encodeURIComponent(taskId)}`);
  if (state.taskId !== taskId) return;
  loadServerAudio(record);
  await renderRecord(record);
  if (!TERMINAL.has(record.status)) follow(taskId);
}

/** Live progress: SSE over fetch; when the stream fails or drops, poll /v1/status every second. */
async function follow(taskId) {
  const ctrl = new AbortController();
  state.follow = ctrl;
  const onStatus = (event) => {
    if (ctrl.signal.aborted || !state.record) return;
    renderProgress({ ...state.record, ...event, error: event.error ?? null });
  };
  const live = $("live-text");
  const onSegment = (segment) => {
    if (ctrl.signal.aborted) return;
    live.hidden = false;
    live.textContent += (live.textContent ? " " : "") + segment.text;
    live.scrollTop = live.scrollHeight;
  };
  try {
    await streamEvents(taskId, ctrl.signal, onStatus, onSegment);
  } catch (err) {
    if (ctrl.signal.aborted) return;
    console.warn("event stream unavailable, polling instead:", err);
  }
  while (!ctrl.signal.aborted) {
    let record;
    try {
      record = await api(`/v1/status/${encodeURIComponent(taskId)}`, { signal: ctrl.signal });
    } catch (err) {
      if (ctrl.signal.aborted) return;
      showError(err);
      if (err instanceof ApiError && err.status === 404) return;
      await sleep(2000, ctrl.signal);
      continue;
    }
    if (ctrl.signal.aborted) return;
    if (TERMINAL.has(record.status)) {
      await renderRecord(record);
      refreshTasks().catch(() => {});
      return;
    }
    renderProgress({ ...state.record, ...record });
    await sleep(1000, ctrl.signal);
  }
}

async function download(format) {
  const taskId = state.taskId;
  if (!taskId) return;
  try {
    const res = await fetch(`/v1/tasks/${encodeURIComponent(taskId)}/transcript?format=${format}`, {
      headers: authHeaders(),
      cache: "no-store",
    });
    if (!res.ok) throw await errorFrom(res);
    const blob = await res.blob();
    const disposition = res.headers.get("content-disposition") || "";
    const named = /filename="?([^";]+)"?/.exec(disposition)?.[1];
    const stem = (state.record?.filename || taskId).replace(/\.[^.]+$/, "");
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: named || `${stem}.${format}`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    showError(err);
  }
}

async function deleteTask() {
  const taskId = state.taskId;
  if (!taskId) return;
  const running = state.record && !TERMINAL.has(state.record.status);
  const question = running ? "Cancel this task and delete its audio and results?" : "Delete this task's audio and results?";
  if (!window.confirm(question)) return;
  try {
    stopFollowing();
    await api(`/v1/tasks/${encodeURIComponent(taskId)}`, { method: "DELETE" });
    const url = state.localAudio.get(taskId);
    if (url) URL.revokeObjectURL(url);
    state.localAudio.delete(taskId);
    if (state.serverAudio?.taskId === taskId) {
      URL.revokeObjectURL(state.serverAudio.url);
      state.serverAudio = null;
    }
    setupPlayer(null);
    state.taskId = null;
    state.record = null;
    $("task-panel").hidden = true;
    $("empty-state").hidden = false;
    await refreshTasks();
  } catch (err) {
    showError(err);
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  const keyInput = $("api-key");
  keyInput.value = state.key;
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = keyInput.value.trim();
    if (state.key) localStorage.setItem(KEY_STORAGE, state.key);
    else localStorage.removeItem(KEY_STORAGE);
    hideError();
    loadServerData();
  });

  const dropzone = $("dropzone");
  const fileInput = $("file-input");
  dropzone.addEventListener("click", () => fileInput.click());
  dropzone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      fileInput.click();
    }
  });
  fileInput.addEventListener("change", () => setFile(fileInput.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (e) => {
      e.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "dragend"]) dropzone.addEventListener(name, () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (e) => {
    e.preventDefault();
    dropzone.classList.remove("dragging");
    const file = e.dataTransfer?.files?.[0];
    if (file) setFile(file);
  });
  // A file dropped outside the zone would otherwise navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  const summaryBox = document.querySelector('input[name="features"][value="summary"]');
  const syncTemplate = () => {
    $("template-id").disabled = !summaryBox.checked;
  };
  summaryBox.addEventListener("change", syncTemplate);
  syncTemplate();
  const diarize = $("enable-diarization");
  const syncSpeakers = () => {
    $("min-speakers").disabled = !diarize.checked;
    $("max-speakers").disabled = !diarize.checked;
  };
  diarize.addEventListener("change", syncSpeakers);
  syncSpeakers();

  $("upload-form").addEventListener("submit", onSubmit);
  $("error-close").addEventListener("click", hideError);
  $("refresh-tasks").addEventListener("click", () => refreshTasks().catch(showError));
  $("delete-task").addEventListener("click", deleteTask);
  for (const btn of document.querySelectorAll(".downloads [data-format]")) {
    btn.addEventListener("click", () => download(btn.dataset.format));
  }
  $("player").addEventListener("timeupdate", onTimeUpdate);
  $("search").addEventListener("input", () => applySearch(true));
  $("search").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      stepSearch(e.shiftKey ? -1 : 1);
    }
  });
  $("search-next").addEventListener("click", () => stepSearch(1));
  $("search-prev").addEventListener("click", () => stepSearch(-1));
  $("attach-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (!file || !state.taskId) return;
    const old = state.localAudio.get(state.taskId);
    if (old) URL.revokeObjectURL(old);
    state.localAudio.set(state.taskId, URL.createObjectURL(file));
    setupPlayer(state.taskId);
  });

  checkServer();
  setInterval(checkServer, 15_000);
  if (state.key) loadServerData();
  else keyInput.focus();
}

wire();
