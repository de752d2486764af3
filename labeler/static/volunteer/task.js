// The task screen: a block of tiles (one answer per tile), before/after comparison, and
// point marking. Pure DOM; the app module wires it to the API and the keyboard.

import { fractionToLonLat, lonLatToFraction } from "./geo.js";
import { uuid4 } from "./api.js";

// The service's default answer labels (labeler/projects.py DEFAULT_ANSWERS). Answers that
// still carry them are shown from the catalogue; labels a researcher wrote are shown as is.
const DEFAULT_LABELS = { yes: "Yes", no: "No", maybe: "Maybe", bad_imagery: "Bad imagery", marked: "Done" };

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}
export { el };

/** Which image layer is "before" and which is "after" for a project. */
export function layerRoles(layers) {
  const names = layers || [];
  if (names.length < 2) return { single: names[0] || null, before: null, after: null };
  const before = names.includes("before") ? "before" : names[0];
  const after = names.includes("after") ? "after" : names.find((n) => n !== before);
  return { single: null, before, after };
}

/** Label of an answer: translated when it is a default one, else the project's own label. */
export function answerLabel(i18n, answer) {
  const std = DEFAULT_LABELS[answer.value];
  if (std && (!answer.label || answer.label === std || answer.label === answer.value) && i18n.has(`answer.${answer.value}`)) {
    return i18n.t(`answer.${answer.value}`);
  }
  return answer.label || answer.value;
}

export class TaskView {
  constructor(dom, i18n, announce) {
    this.dom = dom; // {grid, stage, answers, markControls, markCount, compareControls, swipe, btnBefore, btnAfter, hint, loading}
    this.i18n = i18n;
    this.announce = announce;
    this.project = null;
    this.task = null;
    this.items = [];
    this.selected = 0;
    this.undoStack = [];
    this.swipe = 100;
    this.onChange = () => {};
    dom.swipe.addEventListener("input", () => this.setSwipe(Number(dom.swipe.value)));
    window.addEventListener("resize", () => this.updateSharpness());
  }

  get isMark() {
    return this.project && this.project.type === "mark";
  }

  get roles() {
    return layerRoles(this.project.layers);
  }

  get hasCompare() {
    return !this.roles.single;
  }

  setLoading(on) {
    this.dom.loading.hidden = !on;
    this.dom.grid.hidden = on;
    this.dom.stage.setAttribute("aria-busy", on ? "true" : "false");
  }

  /** Render a task returned by GET /api/projects/{slug}/next. */
  show(project, task) {
    this.project = project;
    this.task = task;
    const now = performance.now();
    const tiles = [...task.tiles].sort((a, b) => (a.row ?? 0) - (b.row ?? 0) || (a.col ?? 0) - (b.col ?? 0));
    this.items = tiles.map((t) => ({
      tile: t,
      answer: null,
      points: [],
      flag: null,
      started: now,
      key: uuid4(),
    }));
    this.undoStack = [];
    this.selected = 0;
    const cols = Math.max(1, ...tiles.map((t) => (t.col ?? 0) + 1));
    const rows = Math.max(1, ...tiles.map((t) => (t.row ?? 0) + 1));
    this.cols = cols;
    this.rows = rows;
    this.renderGrid();
    this.renderAnswers();
    this.dom.compareControls.hidden = !this.hasCompare;
    this.dom.markControls.hidden = !this.isMark;
    this.setSwipe(0); // start on the after image
    this.defaultHint();
    this.setLoading(false);
    this.refresh();
  }

  renderGrid() {
    const grid = this.dom.grid;
    grid.replaceChildren();
    grid.style.setProperty("--cols", String(this.cols));
    grid.style.setProperty("--rows", String(this.rows));
    grid.classList.toggle("single", this.items.length === 1);
    grid.classList.toggle("mark", this.isMark);
    const context = this.task.context_urls;
    this.items.forEach((item, i) => {
      const cell = el("div", { class: "cell" });
      cell.style.gridColumn = String((item.tile.col ?? 0) + 1);
      cell.style.gridRow = String((item.tile.row ?? 0) + 1);
      const layers = this.imageLayers(item.tile.image_urls);
      let target;
      if (this.isMark) {
        target = this.markSurface(item, i, layers);
      } else {
        target = el("button", {
          type: "button",
          class: "tile",
          "data-index": String(i),
          onclick: () => {
            if (this.dragged) {
              this.dragged = false; // the end of a swipe drag, not a tap
              return;
            }
            this.select(i, { announce: true });
          },
        });
        target.append(...layers, el("span", { class: "badge", "aria-hidden": "true" }));
        if (this.hasCompare) this.swipeByDrag(target);
      }
      target.dataset.tileId = String(item.tile.tile_id);
      item.el = target;
      if (context && this.items.length === 1) {
        cell.append(this.contextFrame(context, target));
      } else {
        cell.append(target);
      }
      grid.append(cell);
    });
  }

  /**
   * Faded neighbours around a single tile: context_urls = {"dx,dy": {layer: url}}
   * (docs/api.md). A 3x3 grid at the centre tile's scale, cropped to a margin around it.
   */
  contextFrame(context, target) {
    const roles = this.roles;
    const frame = el("div", { class: "context" });
    const inner = el("div", { class: "context-inner" });
    for (let dy = -1; dy <= 1; dy++) {
      for (let dx = -1; dx <= 1; dx++) {
        if (dx === 0 && dy === 0) {
          const mid = el("div", { class: "context-center" });
          mid.append(target);
          inner.append(mid);
          continue;
        }
        const urls = context[`${dx},${dy}`] || {};
        const cell = el("div", { class: "context-cell" });
        // compare: both dates, the one shown follows the before/after state of the centre
        const layers = roles.single ? [[roles.single, ""]] : [[roles.before, "context-before"], [roles.after, "context-after"]];
        for (const [name, cls] of layers) {
          const url = urls[name] || (roles.single ? Object.values(urls)[0] : null);
          cell.append(
            url
              ? el("img", { src: url, alt: "", class: `context-img ${cls}`, draggable: "false", decoding: "async" })
              : el("div", { class: `context-img empty ${cls}` }),
          );
        }
        inner.append(cell);
      }
    }
    frame.append(inner);
    return frame;
  }

  imageLayers(urls) {
    const roles = this.roles;
    const make = (name, cls) =>
      el("img", {
        src: urls[name],
        alt: "",
        class: `layer ${cls}`,
        draggable: "false",
        decoding: "async",
        onload: (e) => this.sharpen(e.target),
      });
    if (roles.single) return [make(roles.single in urls ? roles.single : Object.keys(urls)[0], "layer-single")];
    return [make(roles.before, "layer-before"), make(roles.after, "layer-after")];
  }

  /** Compare tiles: a horizontal drag across the image moves the swipe divider (touch too). */
  swipeByDrag(tile) {
    tile.classList.add("draggable");
    let start = null;
    tile.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      start = { x: e.clientX, id: e.pointerId, on: false };
    });
    tile.addEventListener("pointermove", (e) => {
      if (!start || e.pointerId !== start.id) return;
      if (!start.on && Math.abs(e.clientX - start.x) < 8) return;
      if (!start.on) {
        start.on = true;
        tile.setPointerCapture(e.pointerId);
      }
      const r = tile.getBoundingClientRect();
      this.setSwipe(((e.clientX - r.left) / r.width) * 100);
    });
    const end = (e) => {
      if (start && start.on) {
        this.dragged = e.type === "pointerup";
        if (tile.hasPointerCapture(e.pointerId)) tile.releasePointerCapture(e.pointerId);
      }
      start = null;
    };
    tile.addEventListener("pointerup", end);
    tile.addEventListener("pointercancel", end);
  }

  /** Upscaled imagery stays crisp (nearest neighbour) from 2x; smaller scales are smoothed. */
  sharpen(img) {
    if (!img.naturalWidth) return;
    const scale = (img.clientWidth * (window.devicePixelRatio || 1)) / img.naturalWidth;
    img.classList.toggle("pixelated", scale >= 2);
  }

  updateSharpness() {
    for (const img of this.dom.grid.querySelectorAll("img.layer")) this.sharpen(img);
  }

  markSurface(item, index, layers) {
    const surface = el("div", {
      class: "tile mark-surface",
      tabindex: "0",
      role: "group",
      "data-index": String(index),
    });
    const cross = el("div", { class: "crosshair", "aria-hidden": "true" });
    const pointsLayer = el("div", { class: "points-layer" });
    surface.append(...layers, cross, pointsLayer);
    item.cross = [0.5, 0.5];
    item.pointsLayer = pointsLayer;
    item.crossEl = cross;
    // A click marks a point but does not move keyboard focus onto the image.
    surface.addEventListener("mousedown", (e) => e.preventDefault());
    surface.addEventListener("click", (e) => {
      if (e.target.closest(".point")) return;
      const r = surface.getBoundingClientRect();
      this.addPoint(index, (e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height);
    });
    surface.addEventListener("keydown", (e) => {
      // Only keyboard users focus the surface (see mousedown below), so arrows steer the cross
      // for them and keep meaning next/back for everyone else.
      if (e.target !== surface || e.altKey || e.ctrlKey || e.metaKey) return;
      const step = e.shiftKey ? 0.1 : 0.02;
      const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
      if (moves[e.key]) {
        const [dx, dy] = moves[e.key];
        item.cross = [Math.min(1, Math.max(0, item.cross[0] + dx)), Math.min(1, Math.max(0, item.cross[1] + dy))];
        this.placeCross(item);
        e.preventDefault();
        e.stopPropagation();
      } else if (e.key === "Enter" || e.key === " ") {
        this.addPoint(index, item.cross[0], item.cross[1]);
        e.preventDefault();
        e.stopPropagation();
      }
    });
    this.placeCross(item);
    return surface;
  }

  placeCross(item) {
    item.crossEl.style.left = `${item.cross[0] * 100}%`;
    item.crossEl.style.top = `${item.cross[1] * 100}%`;
  }

  maxPoints() {
    return this.project.max_points || 200;
  }

  addPoint(index, fx, fy) {
    const item = this.items[index];
    if (item.points.length >= this.maxPoints()) {
      this.announce(this.i18n.t("mark.max", { count: this.maxPoints() }));
      return;
    }
    const lonlat = fractionToLonLat(item.tile.bounds, fx, fy);
    item.points.push(lonlat);
    if (item.answer === null) item.answer = "marked";
    this.undoStack.push({ op: "add", index, point: lonlat });
    this.renderPoints(item);
    this.announce(this.i18n.t("mark.added", { count: item.points.length }));
    this.refresh();
  }

  removePoint(index, pointIndex, { keyboard = false } = {}) {
    const item = this.items[index];
    const [point] = item.points.splice(pointIndex, 1);
    this.undoStack.push({ op: "remove", index, point, at: pointIndex });
    this.renderPoints(item);
    this.announce(this.i18n.t("mark.removed", { count: item.points.length }));
    if (keyboard) item.el.focus(); // the removed button had focus: keep it on the image
    this.refresh();
  }

  undo() {
    const step = this.undoStack.pop();
    if (!step) {
      this.announce(this.i18n.t("mark.nothing_to_undo"));
      return false;
    }
    const item = this.items[step.index];
    if (step.op === "add") {
      const i = item.points.lastIndexOf(step.point);
      if (i >= 0) item.points.splice(i, 1);
    } else {
      item.points.splice(step.at, 0, step.point);
    }
    this.renderPoints(item);
    this.announce(this.i18n.t("mark.undone", { count: item.points.length }));
    this.refresh();
    return true;
  }

  renderPoints(item) {
    const index = this.items.indexOf(item);
    item.pointsLayer.replaceChildren();
    item.points.forEach(([lon, lat], k) => {
      const [fx, fy] = lonLatToFraction(item.tile.bounds, lon, lat);
      const btn = el("button", {
        type: "button",
        class: "point",
        "aria-label": this.i18n.t("mark.point_label", { n: k + 1 }),
        "data-lon": String(lon),
        "data-lat": String(lat),
        onclick: (e) => {
          e.stopPropagation();
          this.removePoint(index, k, { keyboard: e.detail === 0 });
        },
      });
      btn.style.left = `${fx * 100}%`;
      btn.style.top = `${fy * 100}%`;
      item.pointsLayer.append(btn);
    });
  }

  renderAnswers() {
    const box = this.dom.answers;
    box.replaceChildren();
    this.answerButtons = [];
    const answers = this.visibleAnswers();
    answers.forEach((a, i) => {
      const key = a.shortcut || String(i + 1);
      const btn = el("button", {
        type: "button",
        class: `btn answer answer-${String(a.value).replace(/[^a-z0-9_-]/gi, "")}`,
        "data-value": a.value,
        "aria-keyshortcuts": key,
        "aria-pressed": "false",
        onclick: () => this.answer(a.value),
      });
      btn.append(el("span", { class: "answer-label", text: answerLabel(this.i18n, a) }), el("kbd", { text: key }));
      box.append(btn);
      this.answerButtons.push({ btn, answer: a, key });
    });
    box.classList.toggle("few", answers.length <= 2);
  }

  /** Mark projects: "marked" is implied by points, so its button reads "No structures" with 0 points. */
  visibleAnswers() {
    const answers = this.project.answers && this.project.answers.length
      ? this.project.answers
      : (this.isMark ? ["marked", "bad_imagery"] : ["yes", "no", "maybe", "bad_imagery"]).map((v, i) => ({ value: v, label: v, shortcut: String(i + 1) }));
    return answers;
  }

  answerByKey(key) {
    const hit = this.answerButtons.find((a) => a.key === key);
    return hit ? hit.answer.value : null;
  }

  /** Answer the selected tile and move on to the next unanswered one. */
  answer(value) {
    const item = this.items[this.selected];
    if (!item) return;
    item.answer = value;
    if (this.dom.hint.classList.contains("warn")) this.defaultHint();
    const label = this.labelOf(value);
    const left = this.items.filter((it) => it.answer === null).length;
    if (this.items.length > 1) {
      this.announce(this.i18n.t("task.answered_tile", { n: this.selected + 1, answer: label, count: left }));
      const next = this.nextUnanswered(this.selected);
      if (next !== null) this.select(next);
    } else {
      this.announce(this.i18n.t("task.answered", { answer: label }));
    }
    this.refresh();
  }

  /** Give every unanswered tile this answer (Shift + number). */
  answerRest(value) {
    let n = 0;
    for (const it of this.items) if (it.answer === null) { it.answer = value; n += 1; }
    this.announce(this.i18n.t("task.answered_rest", { answer: this.labelOf(value), count: n }));
    this.refresh();
  }

  labelOf(value) {
    const a = this.visibleAnswers().find((x) => x.value === value);
    return a ? answerLabel(this.i18n, a) : value;
  }

  nextUnanswered(from) {
    for (let k = 1; k <= this.items.length; k++) {
      const i = (from + k) % this.items.length;
      if (this.items[i].answer === null) return i;
    }
    return null;
  }

  select(i, { announce = false } = {}) {
    if (i < 0 || i >= this.items.length) return false;
    this.selected = i;
    if (announce) this.announce(this.tileDescription(i));
    this.refresh();
    return true;
  }

  /** Next: move through the block, then report whether the task is complete. */
  forward() {
    if (this.complete()) return true;
    if (this.isMark) {
      for (const it of this.items) if (it.answer === null) it.answer = "marked";
      return true;
    }
    const next = this.nextUnanswered(this.selected);
    if (next !== null && this.items[this.selected].answer !== null) {
      this.select(next);
    } else if (this.selected + 1 < this.items.length) {
      this.select(this.selected + 1);
    } else {
      this.select(next ?? 0);
    }
    const left = this.items.filter((it) => it.answer === null).length;
    const msg = this.i18n.t("task.answer_all_first", { count: left });
    this.announce(msg);
    this.dom.hint.textContent = msg; // visible too, not only for screen readers
    this.dom.hint.classList.add("warn");
    return false;
  }

  back() {
    return this.select(this.selected - 1, { announce: true });
  }

  complete() {
    return this.items.length > 0 && this.items.every((it) => it.answer !== null);
  }

  flagSelected(note) {
    const item = this.items[this.selected];
    if (!item) return;
    item.flag = note && note.trim() ? note.trim().slice(0, 500) : null;
    this.refresh();
  }

  currentFlag() {
    const item = this.items[this.selected];
    return item ? item.flag || "" : "";
  }

  tileDescription(i) {
    const it = this.items[i];
    const base = this.i18n.t("task.tile_label", {
      n: i + 1,
      count: this.items.length,
      row: (it.tile.row ?? 0) + 1,
      col: (it.tile.col ?? 0) + 1,
    });
    const ans = it.answer === null ? this.i18n.t("task.unanswered") : this.labelOf(it.answer);
    return `${base}: ${ans}${it.flag ? ` · ${this.i18n.t("task.flagged")}` : ""}`;
  }

  /**
   * Swipe divider position in percent from the left: the before image shows left of it,
   * the after image right of it (0 = all after, 100 = all before).
   */
  setSwipe(v) {
    this.swipe = Math.max(0, Math.min(100, v));
    const pos = Math.round(this.swipe);
    this.dom.swipe.value = String(pos);
    this.dom.swipe.setAttribute("aria-valuetext", this.i18n.t("compare.swipe_value", { before: pos, after: 100 - pos }));
    for (const img of this.dom.grid.querySelectorAll("img.layer-after")) {
      img.style.clipPath = `inset(0 0 0 ${this.swipe}%)`;
    }
    for (const tile of this.dom.grid.querySelectorAll(".tile")) {
      tile.style.setProperty("--swipe", `${this.swipe}%`);
      tile.classList.toggle("swiping", this.swipe > 0 && this.swipe < 100);
    }
    this.dom.btnBefore.setAttribute("aria-pressed", String(this.swipe === 100));
    this.dom.btnAfter.setAttribute("aria-pressed", String(this.swipe === 0));
    this.dom.grid.dataset.showing = this.swipe === 100 ? "before" : this.swipe === 0 ? "after" : "split";
  }

  showLayer(which) {
    this.setSwipe(which === "after" ? 0 : 100);
    this.announce(this.i18n.t(which === "after" ? "compare.showing_after" : "compare.showing_before"));
  }

  toggle() {
    this.showLayer(this.swipe >= 50 ? "after" : "before");
  }

  defaultHint() {
    this.dom.hint.classList.remove("warn");
    this.dom.hint.textContent = this.isMark
      ? this.i18n.t("mark.hint")
      : this.items.length > 1
        ? this.i18n.t("task.select_hint")
        : "";
  }

  /** Refresh selection, badges, pressed states and labels after any change. */
  refresh() {
    this.items.forEach((it, i) => {
      if (!it.el) return;
      const sel = i === this.selected && this.items.length > 1;
      it.el.classList.toggle("selected", sel);
      it.el.classList.toggle("answered", it.answer !== null);
      it.el.classList.toggle("flagged", Boolean(it.flag));
      it.el.dataset.answer = it.answer ?? "";
      if (this.isMark) {
        it.el.setAttribute("aria-label", `${this.i18n.t("mark.surface_label")} ${this.i18n.t("mark.points", { count: it.points.length })}`);
      } else {
        it.el.setAttribute("aria-pressed", String(sel));
        it.el.setAttribute("aria-label", this.tileDescription(i));
        const badge = it.el.querySelector(".badge");
        if (badge) badge.textContent = it.answer === null ? "" : this.labelOf(it.answer);
      }
    });
    const current = this.items[this.selected];
    for (const { btn, answer } of this.answerButtons || []) {
      btn.setAttribute("aria-pressed", String(Boolean(current) && current.answer === answer.value));
    }
    if (this.isMark && current) {
      this.dom.markCount.textContent = this.i18n.t("mark.points", { count: current.points.length });
    }
    this.onChange();
  }

  /** The labels to submit: one per tile, with idempotency keys fixed when the task was shown. */
  labels({ skipped = false } = {}) {
    const now = performance.now();
    return this.items.map((it) => ({
      tile_id: it.tile.tile_id,
      answer: skipped ? null : it.answer,
      points: this.isMark && !skipped && it.answer === "marked" ? it.points : [],
      skipped,
      flag_note: it.flag,
      time_spent_ms: Math.max(0, Math.round(now - it.started)),
      idempotency_key: it.key,
    }));
  }

  /** Re-translate everything the view generated. */
  relabel() {
    if (!this.project || !this.task) return;
    this.renderAnswers();
    for (const it of this.items) if (it.pointsLayer) this.renderPoints(it);
    this.setSwipe(this.swipe);
    this.defaultHint();
    this.refresh();
  }
}
