// Message catalogues: static/i18n/<lang>.json, flat {"key": "text"} maps.
// A value may be a plural object {"one": ..., "few": ..., "other": ...} chosen with
// Intl.PluralRules on params.count. Placeholders are written {name}.

export const LANGUAGES = [
  { code: "en", name: "English", tag: "en" },
  { code: "sq", name: "Shqip", tag: "sq" },
  { code: "sr", name: "Srpski", tag: "sr-Latn" },
  { code: "sr-Cyrl", name: "Српски", tag: "sr-Cyrl" },
];
const CODES = LANGUAGES.map((l) => l.code);
const STORAGE_KEY = "crowdsight.lang";

/** Best supported catalogue for a list of BCP 47 tags (navigator.languages order). */
export function matchLanguage(tags) {
  for (const raw of tags || []) {
    const tag = String(raw).toLowerCase();
    const primary = tag.split(/[-_]/)[0];
    if (primary === "sr" || primary === "sh") {
      return /(^|[-_])cyrl($|[-_])/.test(tag) ? "sr-Cyrl" : "sr";
    }
    if (primary === "sq") return "sq";
    if (primary === "en") return "en";
  }
  return null;
}

export function storedLanguage() {
  try {
    const v = window.localStorage.getItem(STORAGE_KEY);
    return CODES.includes(v) ? v : null;
  } catch {
    return null; // storage disabled: fall back to the browser's languages
  }
}

function remember(code) {
  try {
    window.localStorage.setItem(STORAGE_KEY, code);
  } catch {
    /* private mode: the choice lasts for this page only */
  }
}

export class I18n {
  constructor(baseUrl) {
    this.baseUrl = baseUrl;
    this.lang = "en";
    this.messages = {};
    this.fallback = {};
    this.cache = new Map();
    this.listeners = [];
  }

  async load(code) {
    if (!this.cache.has(code)) {
      const res = await fetch(new URL(`${code}.json`, this.baseUrl), { credentials: "same-origin" });
      if (!res.ok) throw new Error(`language file ${code}.json: HTTP ${res.status}`);
      this.cache.set(code, await res.json());
    }
    return this.cache.get(code);
  }

  /** Switch language: load the catalogue, translate the page, remember the choice if asked. */
  async use(code, { persist = false } = {}) {
    if (!CODES.includes(code)) code = "en";
    if (persist) remember(code);
    this.fallback = await this.load("en");
    this.messages = await this.load(code);
    this.lang = code;
    this.plural = new Intl.PluralRules(this.tag());
    const root = document.documentElement;
    root.lang = this.tag();
    root.dir = "ltr";
    document.title = this.t("page.title");
    this.apply(document);
    for (const fn of this.listeners) fn(code);
  }

  tag() {
    return (LANGUAGES.find((l) => l.code === this.lang) || LANGUAGES[0]).tag;
  }

  onChange(fn) {
    this.listeners.push(fn);
  }

  has(key) {
    return key in this.messages || key in this.fallback;
  }

  t(key, params = {}) {
    let msg = key in this.messages ? this.messages[key] : this.fallback[key];
    if (msg === undefined) return key;
    if (typeof msg === "object") {
      const form = this.plural.select(Number(params.count ?? 0));
      msg = msg[form] ?? msg.other;
    }
    return msg.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
  }

  /** Translate [data-i18n] text and [data-i18n-attr="attr:key;attr:key"] attributes. */
  apply(root) {
    const params = (el) => {
      try {
        return el.dataset.i18nParams ? JSON.parse(el.dataset.i18nParams) : {};
      } catch {
        return {};
      }
    };
    for (const el of root.querySelectorAll("[data-i18n]")) {
      el.textContent = this.t(el.dataset.i18n, params(el));
    }
    for (const el of root.querySelectorAll("[data-i18n-attr]")) {
      for (const pair of el.dataset.i18nAttr.split(";")) {
        const [attr, key] = pair.split(":");
        if (attr && key) el.setAttribute(attr.trim(), this.t(key.trim(), params(el)));
      }
    }
  }

  number(n) {
    return new Intl.NumberFormat(this.tag()).format(n);
  }
}
