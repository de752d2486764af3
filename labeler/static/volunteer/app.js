// crowdsight volunteer page: session, project chooser, tutorial, task loop.
// Vanilla ES modules, no build step, no external requests (CSP without unsafe-inline).

import { Api, ApiError, NetworkError, Outbox } from "./api.js";
import { I18n, matchLanguage, storedLanguage } from "./i18n.js";
import { TaskView, answerLabel, el, layerRoles } from "./task.js";

const $ = (id) => document.getElementById(id);
const i18n = new I18n(new URL("static/i18n/", document.baseURI));
const api = new Api(document.baseURI);

const state = {
  session: null,
  project: null,
  task: null,
  ahead: null, // the next task, already leased and its images preloaded
  busy: false,
  screen: "loading",
  progressBase: null, // {labelled_by_you, tiles, retired} from the last task
  sentSinceTask: 0,
};

// ---------------------------------------------------------------- helpers

/** Element text from the catalogue that re-translates itself on a language switch. */
function tx(node, key, params) {
  node.dataset.i18n = key;
  if (params) node.dataset.i18nParams = JSON.stringify(params);
  else delete node.dataset.i18nParams;
  node.textContent = i18n.t(key, params || {});
  return node;
}

let statusTimer = null;
function announce(text) {
  const s = $("status");
  // Clear first so the same message is announced again.
  s.textContent = "";
  window.clearTimeout(statusTimer);
  statusTimer = window.setTimeout(() => {
    s.textContent = text;
  }, 30);
}

function alertUser(text) {
  const a = $("alert");
  a.textContent = text;
  a.hidden = !text;
}

function errorText(e) {
  if (e instanceof NetworkError) return i18n.t("error.network");
  if (e instanceof ApiError) {
    const key = `error.${e.code}`;
    return i18n.has(key) ? i18n.t(key) : i18n.t("error.api", { message: e.message });
  }
  return i18n.t("error.api", { message: String(e && e.message ? e.message : e) });
}

function showScreen(name, { focus = true } = {}) {
  state.screen = name;
  for (const sec of document.querySelectorAll("main > .screen")) {
    sec.hidden = sec.id !== `screen-${name}`;
  }
  $("nav-projects").hidden = !(state.session && ["tutorial", "task", "done"].includes(name));
  document.body.dataset.screen = name;
  if (focus) {
    const h = document.querySelector(`#screen-${name} h1`);
    if (h) {
      h.tabIndex = -1;
      h.focus({ preventScroll: false });
    }
  }
}

function fatal(e, retry) {
  $("error-message").textContent = errorText(e);
  $("error-retry").onclick = () => {
    alertUser("");
    retry();
  };
  showScreen("error");
}

function handle(e, retry) {
  if (e instanceof ApiError && e.status === 401) {
    state.session = null;
    showScreen("welcome");
    return;
  }
  if (retry) fatal(e, retry);
  else alertUser(errorText(e));
}

function paragraphs(text) {
  return String(text || "")
    .split(/\n\s*\n/)
    .map((p) => p.trim())
    .filter(Boolean)
    .map((p) => el("p", { text: p }));
}

function imageFigure(urls, project, extraClass = "") {
  const roles = layerRoles(project.layers);
  const wrap = el("div", { class: `thumbs ${extraClass}` });
  let names = roles.single ? [roles.single in urls ? roles.single : Object.keys(urls)[0]] : [roles.before, roles.after];
  names = names.filter((n) => n && urls[n]);
  if (!names.length) names = Object.keys(urls); // e.g. a researcher's example image under /static/
  for (const name of names) {
    const fig = el("figure", { class: "thumb" });
    fig.append(el("img", { src: urls[name], alt: "", loading: "lazy", decoding: "async", draggable: "false" }));
    if (!roles.single && (name === roles.before || name === roles.after)) {
      const cap = el("figcaption");
      tx(cap, name === roles.before ? "compare.before" : "compare.after");
      fig.append(cap);
    }
    wrap.append(fig);
  }
  return wrap;
}

function answersOf(project) {
  if (project.answers && project.answers.length) return project.answers;
  const vals = project.type === "mark" ? ["marked", "bad_imagery"] : ["yes", "no", "maybe", "bad_imagery"];
  return vals.map((v, i) => ({ value: v, label: v, shortcut: String(i + 1) }));
}

/** Tutorial/example wording: on mark projects "marked" means "the image can be marked". */
function practiceLabel(project, answer) {
  if (project.type === "mark" && answer.value === "marked" && answerLabel(i18n, answer) === i18n.t("answer.marked")) {
    return i18n.t("tutorial.mark_marked");
  }
  return answerLabel(i18n, answer);
}

function labelFor(project, value) {
  const a = answersOf(project).find((x) => x.value === value);
  return a ? answerLabel(i18n, a) : String(value);
}

// ---------------------------------------------------------------- welcome

async function startSession(ev) {
  ev.preventDefault();
  const btn = $("welcome-start");
  btn.disabled = true;
  try {
    const name = $("display-name").value.trim();
    state.session = await api.startSession(name || undefined);
    await route();
  } catch (e) {
    alertUser(errorText(e));
  } finally {
    btn.disabled = false;
  }
}

// ---------------------------------------------------------------- projects

async function showProjects(seq = routeSeq) {
  showScreen("loading", { focus: false });
  let data;
  try {
    data = await api.projects();
  } catch (e) {
    if (seq === routeSeq) handle(e, () => showProjects(seq));
    return;
  }
  if (seq !== routeSeq) return; // the volunteer has gone elsewhere meanwhile
  const list = $("project-list");
  list.replaceChildren();
  for (const p of data.projects || []) {
    const prog = p.progress || { tiles: 0, retired: 0 };
    const pct = prog.tiles ? Math.round((100 * prog.retired) / prog.tiles) : 0;
    const bar = el("div", { class: "progressbar", "aria-hidden": "true" }, [el("div")]);
    bar.firstChild.style.width = `${pct}%`;
    const type = el("span", { class: `badge-type type-${p.type}` });
    tx(type, `project.type.${p.type}`);
    const prog_t = el("p", { class: "muted small" });
    tx(prog_t, "projects.progress", { retired: prog.retired, tiles: prog.tiles, count: prog.tiles });
    const start = el("button", { type: "button", class: "btn btn-primary", "data-slug": p.slug });
    tx(start, "projects.start");
    start.dataset.i18nAttr = "aria-label:projects.start_named";
    start.dataset.i18nParams = JSON.stringify({ name: p.name });
    start.setAttribute("aria-label", i18n.t("projects.start_named", { name: p.name }));
    start.addEventListener("click", () => {
      window.location.hash = `#/p/${encodeURIComponent(p.slug)}`;
    });
    const buttons = el("div", { class: "card-actions" }, [start]);
    if ("geolocation" in navigator) {
      const near = el("button", { type: "button", class: "btn btn-quiet", "data-near": p.slug });
      tx(near, "projects.near_me");
      near.addEventListener("click", () => startNearMe(p.slug, near));
      buttons.append(near);
    }
    const card = el("li", { class: "card project" }, [
      el("div", { class: "project-head" }, [el("h2", { text: p.name }), type]),
      el("p", { class: "question", text: p.question }),
      bar,
      prog_t,
      buttons,
    ]);
    list.append(card);
  }
  $("projects-empty").hidden = (data.projects || []).length > 0;
  showScreen("projects");
  api
    .stats()
    .then((s) => {
      const node = $("me-summary");
      if (s && s.labels) tx(node, "projects.me", { count: s.labels });
      else node.textContent = "";
    })
    .catch(() => {});
}

/** "Tasks near me": the browser's location (asked only on this click) biases assignment. */
function startNearMe(slug, button) {
  button.disabled = true;
  navigator.geolocation.getCurrentPosition(
    (pos) => {
      button.disabled = false;
      const lon = pos.coords.longitude.toFixed(5);
      const lat = pos.coords.latitude.toFixed(5);
      window.location.hash = `#/p/${encodeURIComponent(slug)}?near=${lon},${lat}`;
    },
    () => {
      button.disabled = false;
      alertUser(i18n.t("error.geolocation"));
    },
    { maximumAge: 600000, timeout: 15000 },
  );
}

// ---------------------------------------------------------------- project + tutorial

async function openProject(slug, seq = routeSeq) {
  showScreen("loading", { focus: false });
  let project;
  try {
    project = await api.project(slug);
  } catch (e) {
    if (seq !== routeSeq) return;
    if (e instanceof ApiError && e.status === 404) {
      alertUser(errorText(e));
      window.location.hash = "#/";
      return;
    }
    handle(e, () => openProject(slug, seq));
    return;
  }
  if (seq !== routeSeq) return; // the volunteer has gone elsewhere meanwhile
  state.project = project;
  const p = state.project;
  const passed = (state.session.volunteer.tutorials_passed || []).includes(slug);
  if ((p.tutorial || []).length && !passed) showTutorial(p);
  else startTasks();
}

function showTutorial(p) {
  tx($("tutorial-heading"), "tutorial.heading", { name: p.name });
  $("tutorial-question").textContent = p.question;
  $("tutorial-help").replaceChildren(...paragraphs(p.help_text));

  const ex = $("tutorial-examples");
  ex.replaceChildren();
  for (const e of p.examples || []) {
    const chip = el("span", { class: `chip answer-${e.answer}`, "data-answer": e.answer });
    chip.textContent = labelFor(p, e.answer);
    const li = el("li", { class: "card example" }, [
      imageFigure(e.image_urls || {}, p),
      el("p", {}, [chip]),
      el("p", { class: "caption", text: e.caption || "" }),
    ]);
    ex.append(li);
  }
  $("tutorial-examples-wrap").hidden = !(p.examples || []).length;

  const items = $("tutorial-items");
  items.replaceChildren();
  const count = p.tutorial.length;
  tx($("tutorial-practice-intro"), "tutorial.practice_intro", { count });
  p.tutorial.forEach((item, k) => {
    const index = item.index ?? k;
    const fs = el("fieldset", { class: "choices" });
    const legend = el("legend");
    tx(legend, "tutorial.item", { n: k + 1, count });
    fs.append(legend);
    for (const a of answersOf(p)) {
      const id = `tut-${index}-${a.value}`;
      const input = el("input", { type: "radio", name: `tut-${index}`, id, value: a.value });
      const label = el("label", { for: id, class: `choice answer-${a.value}` });
      label.textContent = practiceLabel(p, a);
      label.dataset.answer = a.value;
      fs.append(el("div", { class: "choice-row" }, [input, label]));
    }
    const result = el("p", { class: "item-result", "aria-live": "polite" });
    const li = el("li", { class: "card practice-item", "data-index": String(index) }, [imageFigure(item.image_urls || {}, p, "large"), fs, result]);
    items.append(li);
  });
  $("tutorial-result").hidden = true;
  $("tutorial-check").hidden = false;
  $("tutorial-continue").hidden = true;
  showScreen("tutorial");
}

/** Answer labels in the tutorial after a language switch (they come from project + catalogue). */
function relabelTutorial() {
  const p = state.project;
  if (!p) return;
  const byValue = new Map(answersOf(p).map((a) => [a.value, a]));
  for (const label of $("tutorial-items").querySelectorAll("label.choice")) {
    const a = byValue.get(label.dataset.answer);
    if (a) label.textContent = practiceLabel(p, a);
  }
  for (const chip of $("tutorial-examples").querySelectorAll(".chip[data-answer]")) {
    chip.textContent = labelFor(p, chip.dataset.answer);
  }
}

async function checkTutorial() {
  const p = state.project;
  const answers = {};
  let firstMissing = null;
  for (const li of $("tutorial-items").children) {
    const index = li.dataset.index;
    const chosen = li.querySelector("input[type=radio]:checked");
    if (chosen) answers[index] = chosen.value;
    else if (!firstMissing) firstMissing = li;
  }
  if (firstMissing) {
    alertUser(i18n.t("tutorial.choose_all"));
    firstMissing.querySelector("input").focus();
    return;
  }
  alertUser("");
  const btn = $("tutorial-check");
  btn.disabled = true;
  let res;
  try {
    res = await api.tutorial(p.slug, answers);
  } catch (e) {
    handle(e);
    return;
  } finally {
    btn.disabled = false;
  }
  let wrong = 0;
  for (const r of res.results || []) {
    const li = $("tutorial-items").querySelector(`li[data-index="${r.index}"]`);
    if (!li) continue;
    const out = li.querySelector(".item-result");
    li.classList.toggle("correct", r.correct);
    li.classList.toggle("wrong", !r.correct);
    out.replaceChildren();
    if (r.correct) {
      out.append(tx(el("strong"), "tutorial.correct"));
    } else {
      wrong += 1;
      out.append(tx(el("strong"), "tutorial.wrong", { expected: labelFor(p, r.expected) }));
    }
    if (r.explanation) out.append(" ", el("span", { text: r.explanation }));
  }
  const result = $("tutorial-result");
  result.hidden = false;
  if (res.passed) {
    const tp = state.session.volunteer.tutorials_passed || (state.session.volunteer.tutorials_passed = []);
    if (!tp.includes(p.slug)) tp.push(p.slug);
    tx(result, "tutorial.passed");
    result.className = "result ok";
    $("tutorial-check").hidden = true;
    $("tutorial-continue").hidden = false;
    $("tutorial-continue").focus();
    announce(i18n.t("tutorial.passed"));
  } else {
    tx(result, "tutorial.failed", { count: wrong });
    result.className = "result bad";
    result.focus();
  }
}

// ---------------------------------------------------------------- tasks

const view = new TaskView(
  {
    grid: $("grid"),
    stage: $("stage"),
    answers: $("answers"),
    markControls: $("mark-controls"),
    markCount: $("mark-count"),
    compareControls: $("compare-controls"),
    swipe: $("swipe"),
    btnBefore: $("btn-before"),
    btnAfter: $("btn-after"),
    hint: $("task-hint"),
    loading: $("task-loading"),
  },
  i18n,
  announce,
);
view.onChange = () => updateTaskButtons();

function updateTaskButtons() {
  const ready = !state.busy && Boolean(state.task);
  document.body.dataset.taskState = ready ? "ready" : "busy"; // for tests and styling
  const complete = ready && view.complete();
  $("btn-next").classList.toggle("ready", complete || (ready && view.isMark));
  for (const id of ["btn-back", "btn-next", "btn-skip", "btn-flag", "btn-undo"]) $(id).disabled = !ready;
  for (const b of $("answers").querySelectorAll("button")) b.disabled = !ready;
  $("btn-back").disabled = !ready || view.selected === 0;
  $("btn-undo").disabled = !ready || view.undoStack.length === 0;
  $("btn-flag").classList.toggle("on", ready && Boolean(view.currentFlag()));
}

function renderProgress() {
  const p = state.progressBase;
  if (!p) return;
  const mine = (p.labelled_by_you || 0) + state.sentSinceTask;
  tx($("task-progress"), "task.progress", { mine, count: mine, retired: p.retired, tiles: p.tiles });
  $("task-progressbar").style.width = `${p.tiles ? Math.round((100 * p.retired) / p.tiles) : 0}%`;
}

function waitForImages(timeoutMs = 8000) {
  const imgs = [...$("grid").querySelectorAll("img.layer")];
  const all = Promise.all(imgs.map((img) => (img.complete ? Promise.resolve() : img.decode().catch(() => {}))));
  return Promise.race([all, new Promise((r) => window.setTimeout(r, timeoutMs))]);
}

async function startTasks() {
  const p = state.project;
  $("task-question").textContent = p.question;
  $("feedback").hidden = true;
  state.progressBase = p.progress ? { labelled_by_you: 0, ...p.progress } : null;
  state.sentSinceTask = 0;
  state.ahead = null;
  renderProgress();
  showScreen("task");
  await loadNext();
}

// Prefetch: while the volunteer works on one task the server already holds the next one for
// them (`ahead`, a second lease), and its images are fetched into the browser cache, so "Next"
// shows it at once. The answers go out through the outbox with `?next=1&ahead=1`: one request
// per task, whose answer brings the task after that.
const preloaded = new Set();

function preloadTask(task) {
  if (!task || !task.tiles) return;
  const urls = [];
  for (const t of task.tiles) urls.push(...Object.values(t.image_urls || {}));
  for (const ctx of Object.values(task.context_urls || {})) urls.push(...Object.values(ctx));
  if (preloaded.size > 2000) preloaded.clear();
  for (const url of urls) {
    if (preloaded.has(url)) continue;
    preloaded.add(url);
    const img = new Image();
    img.decoding = "async";
    img.src = url; // cached (tiles are immutable), so the task view paints from the cache
  }
}

function setAhead(task) {
  state.ahead = task && task.task_id ? task : null;
  preloadTask(state.ahead);
}

function tutorialRequired(e) {
  const p = state.project;
  if (!(e instanceof ApiError && e.code === "tutorial_required" && p && (p.tutorial || []).length)) return false;
  const v = state.session.volunteer;
  v.tutorials_passed = (v.tutorials_passed || []).filter((s) => s !== p.slug);
  alertUser(i18n.t("error.tutorial_required"));
  showTutorial(p);
  return true;
}

async function loadNext() {
  const p = state.project;
  state.busy = true;
  state.task = null;
  view.setLoading(true);
  updateTaskButtons();
  let task;
  try {
    task = await api.next(p.slug, state.near, { ahead: true });
  } catch (e) {
    state.busy = false;
    if (e instanceof ApiError && e.code === "project_not_live") {
      alertUser(errorText(e));
      window.location.hash = "#/";
      return;
    }
    if (tutorialRequired(e)) return;
    handle(e, loadNext);
    return;
  }
  setAhead(task.ahead);
  await showTask(task, { fresh: true });
}

/** Put `task` on screen (or the done screen). `fresh`: its progress figures are current. */
async function showTask(task, { fresh = false } = {}) {
  const p = state.project;
  if (!task || !task.task_id || task.done) {
    state.busy = false;
    state.task = null;
    if (task && task.progress) {
      state.progressBase = task.progress;
      state.sentSinceTask = 0;
    }
    showDone();
    return;
  }
  state.busy = true;
  state.task = task;
  if (fresh && task.progress) {
    state.progressBase = task.progress;
    state.sentSinceTask = 0;
  }
  renderProgress();
  view.show(p, task);
  view.setLoading(true);
  await waitForImages();
  if (state.task !== task) return;
  view.setLoading(false);
  view.updateSharpness();
  document.body.dataset.taskId = task.task_id;
  state.busy = false;
  updateTaskButtons();
  scheduleLeaseRenewal(task);
}

// Keep the lease of the task on screen alive: `next` renews the tasks still leased, so a
// volunteer who takes long (many marks, a coffee) does not lose the task to its expiry.
let leaseTimer = null;

function scheduleLeaseRenewal(task) {
  window.clearTimeout(leaseTimer);
  if (!task || !task.lease_expires_at) return;
  let left = Date.parse(task.lease_expires_at) - Date.now();
  if (!(left > 0 && left < 86400000)) left = 600000; // clock skew: assume the default lease
  const wait = Math.max(Math.min(30000, left / 2), Math.min(left - 60000, left * 0.75));
  leaseTimer = window.setTimeout(() => renewLease(task), wait);
}

async function renewLease(task) {
  if (state.task !== task || state.busy || state.screen !== "task") return;
  let fresh;
  try {
    fresh = await api.next(state.project.slug, state.near, { ahead: true });
  } catch {
    scheduleLeaseRenewal(task); // try again later; a submit may still succeed
    return;
  }
  if (state.task !== task) return; // moved on meanwhile
  if (fresh.task_id === task.task_id) {
    task.lease_expires_at = fresh.lease_expires_at;
    if (fresh.ahead && (!state.ahead || state.ahead.task_id === fresh.ahead.task_id)) setAhead(fresh.ahead);
    scheduleLeaseRenewal(task);
  } else if ((fresh.ahead && fresh.ahead.task_id === task.task_id) || outbox.pending) {
    // An earlier task's answers are still on their way; its lease comes first.
    if (fresh.ahead && fresh.ahead.task_id === task.task_id) task.lease_expires_at = fresh.ahead.lease_expires_at;
    scheduleLeaseRenewal(task);
  } else {
    alertUser(i18n.t("error.not_leased"));
    await loadNext();
  }
}

/** The server's answer to a submission: feedback, progress, and the task held ahead. */
function afterSubmit(res, { task, skipped, thumbs, counted, project }) {
  if (state.project !== project) return;
  alertUser(""); // an earlier problem is over once the server takes answers again
  const next = res && res.next;
  if (next && next.progress) {
    state.progressBase = next.progress; // counts this submission already
    state.sentSinceTask = 0;
  } else {
    state.sentSinceTask += counted;
  }
  renderProgress();
  if (res && res.feedback && res.feedback.length) showFeedback(res.feedback, thumbs);
  else announce(i18n.t(skipped ? "task.skipped" : "task.sent"));
  // Shown meanwhile: the prefetched task. The server's `next` is that task (renewed) and
  // `next.ahead` the one after it; if the server no longer holds the shown task, its own
  // current task becomes the one ahead.
  if (state.task && state.task !== task && next && next.task_id) {
    if (next.task_id === state.task.task_id) {
      state.task.lease_expires_at = next.lease_expires_at;
      if (!state.ahead) setAhead(next.ahead);
    } else if (!state.ahead && !(next.ahead && next.ahead.task_id === state.task.task_id)) {
      setAhead(next);
    }
  }
}

async function submit({ skipped = false } = {}) {
  if (state.busy || !state.task) return;
  const p = state.project;
  const task = state.task;
  const labels = view.labels({ skipped });
  const thumbs = new Map(view.items.map((it) => [it.tile.tile_id, it.tile.image_urls]));
  const ctx = { task, skipped, thumbs, counted: labels.filter((l) => !l.skipped).length, project: p };
  state.busy = true;
  view.setLoading(true);
  updateTaskButtons();
  $("feedback").hidden = true;
  const q = new URLSearchParams({ next: "1", ahead: "1" });
  if (state.near) q.set("near", state.near);
  const sent = outbox.send(p.slug, { task_id: task.task_id, labels }, q.toString());
  const prefetched = state.ahead;
  state.ahead = null;
  if (prefetched) {
    // The next task is already leased and its images cached: show it now; the answer to
    // this submission arrives in the background (the outbox retries it until stored).
    sent.then((res) => afterSubmit(res, ctx), (e) => {
      if (state.project === p) alertUser(errorText(e));
    });
    await showTask(prefetched);
    return;
  }
  let res = null;
  try {
    res = await sent;
    afterSubmit(res, ctx);
  } catch (e) {
    alertUser(errorText(e));
  }
  if (state.project !== p || state.screen !== "task" || state.task !== task) return;
  const next = res && res.next;
  if (next && (next.task_id || next.done)) {
    setAhead(next.ahead);
    await showTask(next, { fresh: true });
  } else {
    await loadNext();
  }
}

function showFeedback(items, thumbs) {
  const p = state.project;
  const list = $("feedback-list");
  list.replaceChildren();
  const spoken = [];
  for (const f of items) {
    const urls = thumbs.get(f.tile_id) || {};
    const roles = layerRoles(p.layers);
    const url = urls[roles.single] || urls[roles.after] || Object.values(urls)[0];
    const msg = el("p");
    tx(msg, f.correct ? "feedback.correct" : "feedback.wrong", { expected: labelFor(p, f.expected) });
    const li = el("li", { class: f.correct ? "correct" : "wrong" }, [
      url ? el("img", { src: url, alt: "", class: "feedback-thumb" }) : null,
      el("div", {}, [msg, f.explanation ? el("p", { class: "explanation", text: f.explanation }) : null]),
    ]);
    list.append(li);
    spoken.push(`${msg.textContent} ${f.explanation || ""}`.trim());
  }
  const box = $("feedback");
  box.hidden = false;
  box.classList.toggle("all-correct", items.every((f) => f.correct));
  announce(spoken.join(" "));
}

async function showDone() {
  showScreen("done");
  try {
    const s = await api.stats();
    tx($("done-stats"), "done.stats", { count: s.labels || 0 });
    const gold = s.gold || {};
    if (gold.seen) {
      $("done-stats").append(" ", tx(el("span"), "done.gold", { correct: gold.correct || 0, count: gold.seen }));
    }
  } catch {
    $("done-stats").textContent = "";
  }
}

function openFlag() {
  if (!state.task || state.busy) return;
  $("flag-note").value = view.currentFlag();
  $("flag-dialog").showModal();
  $("flag-note").focus();
}

// ---------------------------------------------------------------- keyboard

function isTyping(t) {
  return t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
}

function onKey(e) {
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
  if (document.querySelector("dialog[open]")) return;
  const t = e.target;
  if (e.key === "?" && !isTyping(t)) {
    $("keys-dialog").showModal();
    e.preventDefault();
    return;
  }
  if (state.screen !== "task" || !state.task || state.busy) return;
  const isRange = t && t.tagName === "INPUT" && t.type === "range";
  if (isTyping(t) && !isRange) return;
  const digit = /^(Digit|Numpad)([0-9])$/.exec(e.code || "");
  const key = digit ? digit[2] : e.key;
  const value = view.answerByKey(key);
  if (value) {
    if (e.shiftKey) view.answerRest(value);
    else view.answer(value);
    e.preventDefault();
    return;
  }
  if (isRange && (e.key.startsWith("Arrow") || e.key === "Home" || e.key === "End" || e.key.startsWith("Page"))) return;
  const onButton = t && (t.tagName === "BUTTON" || t.tagName === "A");
  switch (e.key) {
    case "ArrowRight":
      goNext();
      break;
    case " ":
      if (onButton) return; // the button's own action
      goNext();
      break;
    case "ArrowLeft":
      view.back();
      break;
    case "u":
    case "U":
      if (view.isMark) view.undo();
      else return;
      break;
    case "f":
    case "F":
      openFlag();
      break;
    case "s":
    case "S":
      submit({ skipped: true });
      break;
    case "b":
    case "B":
      if (!view.hasCompare) return;
      view.showLayer("before");
      break;
    case "a":
    case "A":
      if (!view.hasCompare) return;
      view.showLayer("after");
      break;
    case "t":
    case "T":
      if (!view.hasCompare) return;
      view.toggle();
      break;
    default:
      return;
  }
  e.preventDefault();
}

function goNext() {
  if (state.busy || !state.task) return;
  if (view.forward()) submit();
}

// ---------------------------------------------------------------- routing + boot

// Every navigation gets a number; a screen whose data arrives after a newer navigation began
// is not shown (a slow project list must not replace the task the volunteer went on to).
let routeSeq = 0;

async function route() {
  const seq = ++routeSeq;
  alertUser("");
  if (!state.session) {
    showScreen("welcome");
    return;
  }
  // #/p/<slug> or #/p/<slug>?near=<lon>,<lat> (tasks near a place the volunteer knows)
  const m = /^#\/p\/([^/?#]+)(?:\?near=(-?[\d.]+),(-?[\d.]+))?/.exec(window.location.hash);
  state.near = m && m[2] ? `${m[2]},${m[3]}` : null;
  if (m) await openProject(decodeURIComponent(m[1]), seq);
  else await showProjects(seq);
}

const outbox = new Outbox(api, (pending, error) => {
  const box = $("outbox");
  if (pending && error) {
    tx(box, "outbox.waiting", { count: pending });
    box.hidden = false;
  } else {
    box.hidden = true;
  }
});

function wire() {
  $("welcome-form").addEventListener("submit", startSession);
  $("tutorial-check").addEventListener("click", checkTutorial);
  $("tutorial-continue").addEventListener("click", startTasks);
  $("btn-next").addEventListener("click", goNext);
  $("btn-back").addEventListener("click", () => view.back());
  $("btn-skip").addEventListener("click", () => submit({ skipped: true }));
  $("btn-undo").addEventListener("click", () => view.undo());
  $("btn-flag").addEventListener("click", openFlag);
  $("btn-before").addEventListener("click", () => view.showLayer("before"));
  $("btn-after").addEventListener("click", () => view.showLayer("after"));
  $("btn-toggle").addEventListener("click", () => view.toggle());
  $("feedback-dismiss").addEventListener("click", () => {
    $("feedback").hidden = true;
    $("btn-next").focus();
  });
  $("flag-cancel").addEventListener("click", () => $("flag-dialog").close("cancel"));
  // Save synchronously on submit (the dialog's "close" event comes a task later, and a fast
  // volunteer may already have pressed the next key).
  $("flag-form").addEventListener("submit", (e) => {
    e.preventDefault();
    view.flagSelected($("flag-note").value);
    announce(i18n.t(view.currentFlag() ? "flag.saved" : "flag.cleared"));
    updateTaskButtons();
    $("flag-dialog").close("save");
  });
  $("flag-dialog").addEventListener("close", () => {
    if (state.screen === "task") $("btn-flag").focus();
  });
  $("nav-keys").addEventListener("click", () => $("keys-dialog").showModal());
  $("nav-projects").addEventListener("click", () => {
    window.location.hash = "#/";
  });
  $("brand").addEventListener("click", (e) => {
    e.preventDefault();
    window.location.hash = "#/";
  });
  $("done-projects").addEventListener("click", () => {
    window.location.hash = "#/";
  });
  $("lang-select").addEventListener("change", async (e) => {
    await i18n.use(e.target.value, { persist: true });
    announce(i18n.t("lang.changed"));
  });
  i18n.onChange((code) => {
    $("lang-select").value = code;
    view.relabel();
    relabelTutorial();
    renderProgress();
    updateTaskButtons();
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", () => route());
  window.addEventListener("online", () => outbox.poke());
}

async function boot() {
  wire();
  await start();
}

async function start() {
  const lang = storedLanguage() || matchLanguage(navigator.languages || [navigator.language]) || "en";
  try {
    await i18n.use(lang);
  } catch {
    await i18n.use("en");
  }
  try {
    state.session = await api.session();
  } catch (e) {
    fatal(e, start);
    return;
  }
  if (outbox.pending) {
    // Labels left over from a previous visit go first, so `next` does not hand back their
    // (still leased) task; offline, the page carries on after a few seconds and keeps retrying.
    outbox.run();
    await Promise.race([outbox.idle(), new Promise((r) => window.setTimeout(r, 4000))]);
  }
  await route();
  document.body.dataset.ready = "1";
}

boot();
