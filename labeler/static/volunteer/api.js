// JSON API client (docs/api.md, "Volunteer") and the label outbox.
//
// Labels are never lost to a flaky connection: every submission goes through the outbox,
// which keeps it in localStorage until the server acknowledges it and retries network
// failures, 5xx and 429 with backoff. Retries resend the identical body, so the labels'
// idempotency keys make the server store each label once.

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export class NetworkError extends Error {
  constructor(message) {
    super(message);
    this.name = "NetworkError";
  }
}

/** RFC 4122 v4 UUID; crypto.randomUUID only exists in secure contexts (https, localhost). */
export function uuid4() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") {
    return window.crypto.randomUUID();
  }
  const b = window.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class Api {
  constructor(baseUrl) {
    this.base = baseUrl; // URL of the page; API paths are resolved against it
    this.csrf = null;
  }

  url(path) {
    return new URL(path, this.base).toString();
  }

  async request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && this.csrf) headers["X-CSRF-Token"] = this.csrf;
    let res;
    try {
      res = await fetch(this.url(path), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (exc) {
      throw new NetworkError(exc && exc.message ? exc.message : "network error");
    }
    let data = null;
    const text = await res.text().catch(() => "");
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!res.ok) {
      const err = (data && data.error) || {};
      const e = new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText || `HTTP ${res.status}`, err.field);
      e.retryAfter = Number(res.headers.get("Retry-After")) || 0;
      throw e;
    }
    return data;
  }

  async session() {
    try {
      const data = await this.request("GET", "api/session");
      this.csrf = data.csrf_token || this.csrf;
      return data;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return null;
      throw e;
    }
  }

  async startSession(displayName) {
    const body = displayName ? { display_name: displayName } : {};
    const data = await this.request("POST", "api/session", body);
    this.csrf = data.csrf_token;
    return data;
  }

  projects() {
    return this.request("GET", "api/projects");
  }

  project(slug) {
    return this.request("GET", `api/projects/${encodeURIComponent(slug)}`);
  }

  tutorial(slug, answers) {
    return this.request("POST", `api/projects/${encodeURIComponent(slug)}/tutorial`, { answers });
  }

  /** The current task; with `ahead`, also the one after it (leased too) under `ahead`. */
  next(slug, near, { ahead = false } = {}) {
    const q = new URLSearchParams();
    if (near) q.set("near", near);
    if (ahead) q.set("ahead", "1");
    const qs = q.toString();
    return this.request("GET", `api/projects/${encodeURIComponent(slug)}/next${qs ? `?${qs}` : ""}`);
  }

  /** `query` e.g. "next=1&ahead=1": the answer then also carries the next task(s). */
  submit(slug, body, query) {
    const qs = query ? `?${query}` : "";
    return this.request("POST", `api/projects/${encodeURIComponent(slug)}/labels${qs}`, body);
  }

  stats() {
    return this.request("GET", "api/me/stats");
  }
}

const OUTBOX_KEY = "crowdsight.outbox";

const retryable = (e) =>
  e instanceof NetworkError || (e instanceof ApiError && (e.status >= 500 || e.status === 429 || e.status === 408));

export class Outbox {
  /**
   * @param {Api} api
   * @param {(pending: number, error: Error|null) => void} onChange
   */
  constructor(api, onChange) {
    this.api = api;
    this.onChange = onChange;
    this.items = this.restore();
    this.waiters = new Map(); // id -> {resolve, reject}
    this.running = false;
    this.wake = null;
    this.lastError = null;
  }

  restore() {
    try {
      const raw = window.localStorage.getItem(OUTBOX_KEY);
      const items = raw ? JSON.parse(raw) : [];
      return Array.isArray(items) ? items : [];
    } catch {
      return [];
    }
  }

  persist() {
    try {
      window.localStorage.setItem(OUTBOX_KEY, JSON.stringify(this.items));
    } catch {
      /* storage full or disabled: the in-memory queue still retries */
    }
  }

  get pending() {
    return this.items.length;
  }

  /** Queue a submission; resolves with the server's answer once it is stored. */
  send(slug, body, query = "") {
    const item = { id: uuid4(), slug, body, query };
    this.items.push(item);
    this.persist();
    const p = new Promise((resolve, reject) => this.waiters.set(item.id, { resolve, reject }));
    this.notify();
    this.run();
    return p;
  }

  /** Retry now (e.g. when the browser reports it is back online). */
  poke() {
    if (this.wake) this.wake();
    this.run();
  }

  notify() {
    if (this.onChange) this.onChange(this.items.length, this.lastError);
    if (!this.items.length) {
      for (const resolve of this.idlers || []) resolve();
      this.idlers = [];
    }
  }

  /** Resolves once nothing is waiting to be sent. */
  idle() {
    if (!this.items.length) return Promise.resolve();
    this.idlers = this.idlers || [];
    return new Promise((resolve) => this.idlers.push(resolve));
  }

  settle(item, ok, value) {
    this.items = this.items.filter((i) => i.id !== item.id);
    this.persist();
    const w = this.waiters.get(item.id);
    this.waiters.delete(item.id);
    if (w) (ok ? w.resolve : w.reject)(value);
  }

  async run() {
    if (this.running) return;
    this.running = true;
    let delay = 1000;
    try {
      while (this.items.length) {
        const item = this.items[0];
        try {
          const res = await this.api.submit(item.slug, item.body, item.query || "");
          this.lastError = null;
          delay = 1000;
          this.settle(item, true, res);
        } catch (e) {
          if (!retryable(e)) {
            this.lastError = null;
            this.settle(item, false, e);
          } else {
            this.lastError = e;
            this.notify();
            const wait = Math.max(delay, (e.retryAfter || 0) * 1000);
            await new Promise((resolve) => {
              const timer = setTimeout(resolve, wait);
              this.wake = () => {
                clearTimeout(timer);
                resolve();
              };
            });
            this.wake = null;
            delay = Math.min(delay * 2, 30000);
          }
        }
        this.notify();
      }
    } finally {
      this.running = false;
    }
  }
}
