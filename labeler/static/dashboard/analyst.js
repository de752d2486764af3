/* crowdsight analyst dashboard.
 *
 * Auth: a bearer token (role analyst, researcher or admin). `?token=...` in the URL is moved into
 * sessionStorage (key "crowdsight.token", shared with the researcher pages) and removed from the
 * address bar; every API call sends it as `Authorization: Bearer`. Downloads are fetched with the
 * header and saved through a blob link, so the token never appears in a URL the server logs.
 * Charts are server-rendered SVG documents, parsed with DOMParser and adopted into the page (no
 * inline scripts or styles: the CSP forbids them).
 */
(function () {
  "use strict";

  var TOKEN_KEY = "crowdsight.token";
  var ANSWER_COLORS = {
    yes: "#d7301f", destroyed: "#b2182b", damaged: "#f4a261",
    no: "#1a9850", intact: "#1a9850", none: "#6baed6",
    maybe: "#fdae61", minor: "#f4a261",
    bad_imagery: "#8c8c8c", marked: "#6a3d9a", unresolved: "#ffffff"
  };
  var OTHER_COLORS = ["#1f78b4", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"];
  var UNLABELLED = "#d0d7de";
  var CANVAS_ABOVE = 4000;  // tiles

  var state = {
    slug: null, summary: null, method: null, minConf: 0, hidden: {},
    map: null, imagery: {}, imageryOn: null, layers: {}, tiles: null, selected: null
  };

  // ---------------------------------------------------------------- helpers
  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, children) {
    var n = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "text") n.textContent = attrs[k];
      else if (k === "class") n.className = attrs[k];
      else if (attrs[k] !== null && attrs[k] !== undefined) n.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) n.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return n;
  }
  function fmtPct(v) { return v === null || v === undefined ? "–" : Math.round(v * 100) + " %"; }
  function fmtNum(v, d) { return v === null || v === undefined ? "–" : Number(v).toFixed(d === undefined ? 2 : d); }
  function widthClass(frac) { var f = Math.max(0, Math.min(1, frac || 0)); return "w" + (Math.round(f * 20) * 5); }
  function fmtTime(iso) {
    if (!iso) return "–";
    var d = new Date(/Z$|[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
    return isNaN(d) ? iso : d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }
  function answerKey(a) {
    if (a === null || a === undefined) return "unlabelled";
    return a;
  }
  function answerColor(a) {
    if (a === null || a === undefined) return UNLABELLED;
    if (ANSWER_COLORS[a]) return ANSWER_COLORS[a];
    var answers = (state.summary && state.summary.answers) || [];
    var i = answers.map(function (x) { return x.value; }).indexOf(a);
    return OTHER_COLORS[(i < 0 ? 0 : i) % OTHER_COLORS.length];
  }
  function answerClass(a) {
    if (a === null || a === undefined) return "a-unlabelled";
    if (ANSWER_COLORS[a]) return "a-" + a;
    var answers = (state.summary && state.summary.answers) || [];
    var i = answers.map(function (x) { return x.value; }).indexOf(a);
    return "a-other" + ((i < 0 ? 0 : i) % OTHER_COLORS.length);
  }
  function answerLabel(a) {
    if (a === null || a === undefined) return "not labelled";
    var answers = (state.summary && state.summary.answers) || [];
    for (var i = 0; i < answers.length; i++) if (answers[i].value === a) return answers[i].label || a;
    return a === "unresolved" ? "unresolved (dashed)" : a;
  }

  function token() { try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; } }
  function setToken(t) { try { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* private mode */ } }

  function ApiError(status, code, message) { this.status = status; this.code = code; this.message = message; }

  function api(path, opts) {
    opts = opts || {};
    var headers = { "Accept": opts.accept || "application/json" };
    var t = token();
    if (t) headers.Authorization = "Bearer " + t;
    return fetch(path, { headers: headers, credentials: "same-origin" }).then(function (r) {
      if (r.ok) return opts.raw ? r : (opts.text ? r.text() : r.json());
      return r.json().catch(function () { return {}; }).then(function (body) {
        var e = (body && body.error) || {};
        throw new ApiError(r.status, e.code || "http_" + r.status, e.message || r.statusText);
      });
    });
  }

  function projectBase() { return "/api/analyst/projects/" + encodeURIComponent(state.slug); }
  function withMethod(url) {
    if (!state.method) return url;
    return url + (url.indexOf("?") < 0 ? "?" : "&") + "method=" + encodeURIComponent(state.method);
  }

  function showAlert(msg, kind) {
    var a = $("alert");
    if (!msg) { a.hidden = true; a.textContent = ""; return; }
    a.className = "dash-alert" + (kind ? " " + kind : "");
    a.textContent = msg; a.hidden = false;
  }

  function handleError(err) {
    if (err instanceof ApiError && err.status === 401) {
      setToken(null); showSignin(token() ? "Your token was not accepted. " + err.message : err.message);
    } else if (err instanceof ApiError && err.status === 403) {
      showAlert("Not allowed: " + err.message);
    } else if (err instanceof ApiError) {
      showAlert(err.message);
    } else {
      showAlert("Something went wrong: " + (err && err.message ? err.message : err));
      if (window.console) console.error(err);
    }
  }

  // ---------------------------------------------------------------- sign in
  function showSignin(message) {
    $("dashboard").hidden = true; $("projects").hidden = true; $("signin").hidden = false;
    $("sign-out").hidden = true;
    $("signin-error").textContent = message || "";
    $("signin-token").focus();
  }

  function initAuth() {
    var params = new URLSearchParams(location.search);
    if (params.get("token")) {
      setToken(params.get("token"));
      params.delete("token");
      var q = params.toString();
      history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + location.hash);
    }
    $("signin-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      setToken($("signin-token").value.trim());
      $("signin-token").value = "";
      $("signin").hidden = true;
      start();
    });
    $("sign-out").addEventListener("click", function () { setToken(null); location.reload(); });
  }

  // ---------------------------------------------------------------- project list / picker
  function slugFromPath() {
    var m = location.pathname.match(/\/analyst\/([a-z0-9][a-z0-9-]{0,62})\/?$/);
    if (m) return m[1];
    return new URLSearchParams(location.search).get("project");
  }

  function loadProjects() {
    return api("/api/analyst/projects").then(function (body) {
      var sel = $("project-select");
      sel.textContent = "";
      sel.appendChild(el("option", { value: "", text: "Choose a project…" }));
      body.projects.forEach(function (p) {
        var o = el("option", { value: p.slug, text: p.name, title: p.slug });
        if (p.slug === state.slug) o.selected = true;
        sel.appendChild(o);
      });
      sel.onchange = function () { if (sel.value) location.href = "/analyst/" + encodeURIComponent(sel.value); };
      if (!state.slug) {
        var list = $("project-list");
        list.textContent = "";
        body.projects.forEach(function (p) {
          list.appendChild(el("li", null, [el("a", { href: "/analyst/" + encodeURIComponent(p.slug) }, [
            el("strong", { text: p.name }),
            el("span", { class: "meta", text: p.type + " · " + p.status + " · " + p.retired + " / " + p.tiles + " tiles retired · " + p.labels + " labels" })
          ])]));
        });
        if (!body.projects.length) list.appendChild(el("li", { text: "No projects yet." }));
        $("projects").hidden = false;
      }
      return body;
    });
  }

  // ---------------------------------------------------------------- summary + stats
  function renderStats(s) {
    var st = s.stats, box = $("stats");
    box.textContent = "";
    function stat(v, k, frac) {
      var d = el("div", { class: "stat" }, [el("span", { class: "v", text: String(v) }), el("span", { class: "k", text: k })]);
      if (frac !== undefined) d.appendChild(el("div", { class: "meter", role: "presentation" }, [el("span", { class: widthClass(frac) })]));
      return d;
    }
    box.appendChild(stat(st.tiles, "tiles"));
    box.appendChild(stat(st.labelled, "tiles with votes", st.tiles ? st.labelled / st.tiles : 0));
    box.appendChild(stat(st.retired, "retired", st.tiles ? st.retired / st.tiles : 0));
    box.appendChild(stat(st.unresolved, "unresolved"));
    box.appendChild(stat(st.votes, "votes"));
    box.appendChild(stat(st.volunteers, "volunteers"));
    if (st.structures !== undefined && st.structures !== null) box.appendChild(stat(st.structures, "structures"));
    if (st.villages !== undefined && st.villages !== null) box.appendChild(stat(st.villages, "villages"));
  }

  function renderControls(s) {
    var m = $("method");
    m.textContent = "";
    s.methods.forEach(function (name) {
      var o = el("option", { value: name, text: name });
      if (name === state.method) o.selected = true;
      m.appendChild(o);
    });
    m.onchange = function () { state.method = m.value; refreshResults(); };

    var conf = $("min-conf");
    conf.oninput = function () {
      state.minConf = parseFloat(conf.value);
      $("min-conf-out").textContent = state.minConf.toFixed(2);
      restyleTiles();
    };

    var box = $("answer-filter");
    Array.prototype.slice.call(box.querySelectorAll("label")).forEach(function (l) { l.remove(); });
    // "maybe" is evidence, never a tile's answer (docs/consensus.md), so it gets no filter
    var values = s.answers.map(function (a) { return a.value; })
      .filter(function (v) { return v !== "maybe"; }).concat(["unresolved", null]);
    values.forEach(function (v) {
      var key = answerKey(v);
      var cb = el("input", { type: "checkbox", checked: "checked", "data-answer": key });
      cb.addEventListener("change", function () { state.hidden[key] = !cb.checked; restyleTiles(); });
      box.appendChild(el("label", null, [cb, el("span", { class: "sw " + answerClass(v), "aria-hidden": "true" }), " " + answerLabel(v)]));
    });

    var legend = $("legend");
    legend.textContent = "";
    values.forEach(function (v) {
      legend.appendChild(el("span", null, [el("span", { class: "sw " + answerClass(v), "aria-hidden": "true" }), answerLabel(v)]));
    });
    legend.appendChild(el("span", { text: "· opacity = confidence" }));
    legend.appendChild(el("span", null, [el("span", { class: "sw dot a-structure", "aria-hidden": "true" }), "structure"]));
    legend.appendChild(el("span", null, [el("span", { class: "sw outline", "aria-hidden": "true" }), "village"]));

    ["tiles", "structures", "villages"].forEach(function (name) {
      $("show-" + name).onchange = function () { toggleLayer(name, $("show-" + name).checked); };
    });
  }

  function renderExports(s) {
    var box = $("exports");
    box.textContent = "";
    if (!s.exports_allowed) {
      box.appendChild(el("p", { class: "hint", text: "Exports of this private project are restricted to researchers." }));
      return;
    }
    s.exports.forEach(function (ex) {
      var btns = el("div", { class: "btns" });
      ex.formats.forEach(function (f) {
        var b = el("button", { type: "button", class: "btn", "data-export": ex.layer + "." + f, text: f.toUpperCase() });
        b.addEventListener("click", function () { download(ex.layer, f, b); });
        btns.appendChild(b);
      });
      box.appendChild(el("div", { class: "export-group" }, [el("h3", { text: ex.title }), el("p", { text: ex.description }), btns]));
    });
  }

  function download(layer, fmt, button) {
    var url = withMethod(projectBase() + "/export/" + layer + "." + fmt);
    button.disabled = true;
    $("export-status").textContent = "Preparing " + layer + "." + fmt + "…";
    api(url, { raw: true }).then(function (r) {
      var cd = r.headers.get("Content-Disposition") || "";
      var m = cd.match(/filename="?([^";]+)"?/);
      var name = m ? m[1] : state.slug + "-" + layer + "." + fmt;
      return r.blob().then(function (blob) {
        var href = URL.createObjectURL(blob);
        var a = el("a", { href: href, download: name, class: "visually-hidden" });
        document.body.appendChild(a);
        a.click();
        setTimeout(function () { URL.revokeObjectURL(href); a.remove(); }, 1000);
        $("export-status").textContent = "Downloaded " + name + " (" + Math.max(1, Math.round(blob.size / 1024)) + " KB).";
      });
    }).catch(function (e) {
      $("export-status").textContent = "";
      handleError(e);
    }).then(function () { button.disabled = false; });
  }

  // ---------------------------------------------------------------- map
  function initMap(s) {
    if (!window.L) {
      $("map").appendChild(el("p", { class: "hint", text: "The map library (Leaflet) is not installed: run ./dev setup. Tables and exports below still work." }));
      return;
    }
    var map = L.map("map", { zoomSnap: 0.5, attributionControl: true, preferCanvas: false });
    state.map = map;
    var b = s.bounds;
    if (b) map.fitBounds([[b[1], b[0]], [b[3], b[2]]]);
    else map.setView([0, 0], 2);
    L.control.scale({ imperial: false }).addTo(map);

    var sw = $("imagery-switch");
    sw.textContent = "";
    var names = s.layers.map(function (l) { return l.name; });
    // damage shows on the "after" imagery: start there when the project has it
    var initial = names.indexOf("after") >= 0 ? "after" : names[0];
    s.layers.forEach(function (layer) {
      var tl = L.tileLayer(layer.tiles, {
        minZoom: 0, maxZoom: 22, minNativeZoom: layer.minzoom, maxNativeZoom: layer.maxzoom,
        bounds: layer.bounds ? [[layer.bounds[1], layer.bounds[0]], [layer.bounds[3], layer.bounds[2]]] : undefined,
        attribution: layer.attribution || "", className: "imagery imagery-" + layer.name, crossOrigin: false
      });
      state.imagery[layer.name] = tl;
      var input = el("input", { type: "radio", name: "imagery", value: layer.name, id: "imagery-" + layer.name });
      var label = el("label", { for: "imagery-" + layer.name }, [input, layer.name]);
      input.addEventListener("change", function () { if (input.checked) setImagery(layer.name); });
      sw.appendChild(label);
      if (layer.name === initial) input.checked = true;
    });
    var none = el("input", { type: "radio", name: "imagery", value: "", id: "imagery-none" });
    none.addEventListener("change", function () { if (none.checked) setImagery(null); });
    sw.appendChild(el("label", { for: "imagery-none" }, [none, "none"]));
    if (initial) setImagery(initial); else { none.checked = true; setImagery(null); }

    // keyboard shortcut: "b" toggles before/after (any two layers)
    document.addEventListener("keydown", function (ev) {
      if (ev.key !== "b" || /INPUT|SELECT|TEXTAREA/.test(document.activeElement.tagName)) return;
      var names = Object.keys(state.imagery);
      if (names.length < 2) return;
      var next = names[(names.indexOf(state.imageryOn) + 1) % names.length];
      $("imagery-" + next).checked = true; setImagery(next);
    });
  }

  function setImagery(name) {
    Object.keys(state.imagery).forEach(function (n) {
      if (n !== name && state.map.hasLayer(state.imagery[n])) state.map.removeLayer(state.imagery[n]);
    });
    if (name && !state.map.hasLayer(state.imagery[name])) state.imagery[name].addTo(state.map).bringToBack();
    state.imageryOn = name;
    Array.prototype.forEach.call($("imagery-switch").querySelectorAll("label"), function (l) {
      var inp = l.querySelector("input");
      l.classList.toggle("on", inp.checked);
    });
  }

  function tileStyle(f) {
    var p = f.properties;
    var a = p.answer;
    var unresolved = p.state === "unresolved" && p.source !== "expert";
    var hidden = state.hidden[answerKey(a)] || (unresolved && state.hidden.unresolved) ||
      (a !== null && a !== undefined && (p.confidence || 0) < state.minConf);
    var conf = p.confidence === null || p.confidence === undefined ? 0 : p.confidence;
    var selected = state.selected === p.tile_id;
    return {
      color: selected ? "#ffbf47" : answerColor(a), weight: selected ? 3 : 1, opacity: hidden ? 0 : (selected ? 1 : 0.45),
      fillColor: answerColor(a), fillOpacity: hidden ? 0 : (a === null || a === undefined ? 0.04 : 0.06 + 0.3 * conf),
      dashArray: unresolved && !selected ? "5 4" : null,
      className: "cs-tile cs-tile-" + p.tile_id
    };
  }

  function restyleTiles() {
    if (state.layers.tiles) state.layers.tiles.setStyle(tileStyle);
  }

  function toggleLayer(name, on) {
    var l = state.layers[name];
    if (!l || !state.map) return;
    if (on && !state.map.hasLayer(l)) l.addTo(state.map);
    if (!on && state.map.hasLayer(l)) state.map.removeLayer(l);
  }

  function villagePopup(p) {
    var rows = [["Tiles", p.n_tiles], ["Damaged tiles", p.n_damaged_tiles], ["Share damaged", fmtPct(p.share_damaged)],
      ["Structures", p.n_structures], ["Destroyed", p.n_destroyed || null], ["Volunteers", p.n_volunteers >= 0 ? p.n_volunteers : null],
      ["Confidence", fmtNum(p.confidence)]];
    var dl = el("dl");
    rows.forEach(function (r) {
      if (r[1] === undefined || r[1] === null) return;
      dl.appendChild(el("dt", { text: r[0] })); dl.appendChild(el("dd", { text: String(r[1]) }));
    });
    return el("div", { class: "village-popup" }, [el("strong", { text: p.name || ("Village " + p.village_id) }), dl]);
  }

  function drawResults(tiles, structures, villages) {
    if (!state.map) return;
    ["tiles", "structures", "villages"].forEach(function (n) { if (state.layers[n]) state.map.removeLayer(state.layers[n]); });
    state.tiles = tiles;
    // thousands of SVG paths get sluggish: draw big projects on a canvas instead
    var renderer = tiles.features.length > CANVAS_ABOVE ? L.canvas({ padding: 0.3 }) : undefined;
    state.layers.tiles = L.geoJSON(tiles, {
      style: tileStyle, renderer: renderer,
      onEachFeature: function (f, layer) {
        layer.on("click", function () { openTile(f.properties.tile_id); });
        var p = f.properties;
        layer.bindTooltip(answerLabel(p.answer) + (p.confidence !== null && p.confidence !== undefined ? " · " + fmtPct(p.confidence) : "") + " · " + p.total_count + " votes" + (p.source === "expert" ? " · expert decision" : ""), { sticky: true });
      }
    });
    state.layers.villages = L.geoJSON(villages, {
      style: function () { return { color: "#111", weight: 2.5, dashArray: "6 4", fill: false, className: "cs-village" }; },
      onEachFeature: function (f, layer) { layer.bindPopup(villagePopup(f.properties)); }
    });
    state.layers.structures = L.geoJSON(structures, {
      pointToLayer: function (f, latlng) {
        return L.circleMarker(latlng, { radius: 5, color: "#222", weight: 1.5, fillColor: "#ffd43b", fillOpacity: 0.95, className: "cs-structure" });
      },
      onEachFeature: function (f, layer) {
        var p = f.properties;
        layer.bindTooltip("Structure · marked by " + p.n_support + " of " + p.n_seen + " volunteers" + (p.confidence !== undefined && p.confidence !== null ? " · confidence " + fmtPct(p.confidence) : ""));
      }
    });
    ["tiles", "villages", "structures"].forEach(function (n) { toggleLayer(n, $("show-" + n).checked); });
    if (state.layers.villages.getLayers().length) state.layers.villages.bringToFront();
  }

  function renderToCheck(tiles) {
    var ul = $("tocheck");
    ul.textContent = "";
    var list = tiles.features.map(function (f) { return f.properties; }).filter(function (p) {
      return p.source !== "expert" && p.answer !== null && p.answer !== undefined;
    });
    list.sort(function (a, b) {
      var ua = a.state === "unresolved" ? 0 : 1, ub = b.state === "unresolved" ? 0 : 1;
      return ua - ub || (a.confidence || 0) - (b.confidence || 0) || a.tile_id - b.tile_id;
    });
    list.slice(0, 12).forEach(function (p) {
      var b = el("button", { type: "button", class: "btn", "data-tile": String(p.tile_id) }, [
        el("span", { class: "sw " + answerClass(p.answer), "aria-hidden": "true" }),
        answerLabel(p.answer) + " · " + fmtPct(p.confidence) + (p.state === "unresolved" ? " · unresolved" : "")]);
      b.setAttribute("aria-label", "Tile " + p.z + "/" + p.x + "/" + p.y + ": " + answerLabel(p.answer) + ", confidence " + fmtPct(p.confidence));
      b.addEventListener("click", function () {
        if (state.map) {
          var layer = null;
          state.layers.tiles.eachLayer(function (l) { if (l.feature.properties.tile_id === p.tile_id) layer = l; });
          if (layer) state.map.fitBounds(layer.getBounds(), { maxZoom: state.map.getZoom() });
        }
        openTile(p.tile_id);
        $("panel-close").focus();
      });
      ul.appendChild(el("li", null, [b]));
    });
    if (!list.length) ul.appendChild(el("li", { class: "hint", text: "Nothing to check yet." }));
  }

  function renderVillages(villages) {
    var tb = $("village-table").querySelector("tbody");
    tb.textContent = "";
    villages.features.forEach(function (f) {
      var p = f.properties;
      var show = el("button", { type: "button", class: "btn btn-quiet", text: "Show" });
      show.setAttribute("aria-label", "Show " + (p.name || "village") + " on the map");
      show.addEventListener("click", function () {
        if (!state.map) return;
        var b = L.geoJSON(f).getBounds();
        state.map.fitBounds(b, { padding: [20, 20] });
        $("map").scrollIntoView({ behavior: "smooth", block: "center" });
      });
      tb.appendChild(el("tr", null, [
        el("th", { scope: "row", text: p.name || ("Village " + (p.village_id + 1)) }),
        el("td", { class: "num", text: String(p.n_tiles) }),
        el("td", { class: "num", text: String(p.n_damaged_tiles) }),
        el("td", { class: "num", text: fmtPct(p.share_damaged) }),
        el("td", { class: "num", text: String(p.n_structures) }),
        el("td", { class: "num", text: fmtNum(p.confidence) }),
        el("td", null, [show])
      ]));
    });
    if (!villages.features.length) tb.appendChild(el("tr", null, [el("td", { colspan: "7", class: "hint", text: "No villages yet: they appear once tiles are answered as damaged." })]));
  }

  // ---------------------------------------------------------------- tile panel
  function openTile(id) {
    state.selected = id;
    restyleTiles();
    var panel = $("panel"), body = $("panel-body");
    panel.hidden = false;
    body.textContent = "Loading…";
    if (state.map) setTimeout(function () { state.map.invalidateSize(); }, 0);
    api(withMethod(projectBase() + "/tiles/" + id)).then(function (t) { renderTile(t); }).catch(handleError);
  }

  function renderTile(t) {
    var body = $("panel-body");
    body.textContent = "";
    $("panel-h").textContent = "Tile " + t.z + "/" + t.x + "/" + t.y;
    var r = t.result || {};
    var dl = el("dl");
    [["Consensus", answerLabel(r.answer)], ["Confidence", fmtPct(r.confidence)], ["Votes", String(r.n_votes || 0)],
     ["Agreement", fmtNum(r.agreement)], ["State", t.state], ["Gold", t.gold_answer ? answerLabel(t.gold_answer) : "no"]]
      .forEach(function (row) { dl.appendChild(el("dt", { text: row[0] })); dl.appendChild(el("dd", { text: row[1] })); });
    if (t.review) {
      dl.appendChild(el("dt", { text: "Expert review" }));
      dl.appendChild(el("dd", { text: answerLabel(t.review.answer) + " (overrides the crowd)" }));
      dl.appendChild(el("dt", { text: "Crowd said" }));
      dl.appendChild(el("dd", { text: answerLabel(r.crowd_answer) }));
      if (t.review.note) { dl.appendChild(el("dt", { text: "Note" })); dl.appendChild(el("dd", { text: t.review.note })); }
    }
    body.appendChild(dl);

    if (r.posteriors && Object.keys(r.posteriors).length) {
      body.appendChild(el("h3", { text: "Posterior" }));
      Object.keys(r.posteriors).forEach(function (k) {
        var v = r.posteriors[k];
        body.appendChild(el("div", { class: "post" }, [el("span", { text: answerLabel(k) }),
          el("span", { class: "bar" }, [el("span", { class: widthClass(v) })]), el("span", { class: "num", text: fmtPct(v) })]));
      });
    }

    var names = Object.keys(t.image_urls || {});
    if (names.length) {
      body.appendChild(el("h3", { text: "Imagery" }));
      var imgs = el("div", { class: "imgs" });
      names.forEach(function (n) {
        imgs.appendChild(el("figure", null, [el("img", { src: t.image_urls[n], alt: n + " imagery of tile " + t.z + "/" + t.x + "/" + t.y, width: "256", height: "256", loading: "lazy" }), el("figcaption", { text: n })]));
      });
      body.appendChild(imgs);
    }

    body.appendChild(el("h3", { text: "Votes (" + t.votes.length + ")" }));
    if (!t.votes.length) body.appendChild(el("p", { class: "hint", text: "No votes yet." }));
    else {
      var tbl = el("table", { class: "data votes" }, [el("thead", null, [el("tr", null, [
        el("th", { scope: "col", text: "Volunteer" }), el("th", { scope: "col", text: "Answer" }), el("th", { scope: "col", text: "When" })])])]);
      var tb = el("tbody");
      t.votes.forEach(function (v) {
        var ans = v.skipped ? "skipped" : answerLabel(v.answer) + (v.points && v.points.length ? " (" + v.points.length + " points)" : "");
        var tr = el("tr", null, [el("td", { class: "pseudo", text: v.volunteer }), el("td", { text: ans }), el("td", { text: fmtTime(v.created_at) })]);
        tb.appendChild(tr);
        if (v.flag_note) tb.appendChild(el("tr", null, [el("td", { colspan: "3", class: "hint", text: "Flag: " + v.flag_note })]));
      });
      tbl.appendChild(tb);
      body.appendChild(tbl);
    }

    body.appendChild(el("h3", { text: "History" }));
    var ul = el("ul", { class: "history" });
    (t.history || []).forEach(function (h) {
      ul.appendChild(el("li", null, [el("time", { datetime: h.at, text: fmtTime(h.at) }), h.text]));
    });
    if (!(t.history || []).length) ul.appendChild(el("li", { text: "Nothing yet." }));
    body.appendChild(ul);
  }

  // ---------------------------------------------------------------- charts + volunteers
  function loadChart(name) {
    var fig = $("chart-" + name);
    return api(withMethod(projectBase() + "/charts/" + name + ".svg"), { text: true, accept: "image/svg+xml" }).then(function (svgText) {
      var doc = new DOMParser().parseFromString(svgText, "image/svg+xml");
      var svg = doc.documentElement;
      if (svg.nodeName.toLowerCase() !== "svg") throw new Error("chart " + name + " is not SVG");
      Array.prototype.slice.call(fig.querySelectorAll("svg")).forEach(function (n) { n.remove(); });
      fig.appendChild(document.importNode(svg, true));
    });
  }

  function renderVolunteers(body) {
    var tb = $("volunteer-table").querySelector("tbody");
    tb.textContent = "";
    body.volunteers.forEach(function (v) {
      var skill = v.skill === null || v.skill === undefined ? null : v.skill;
      tb.appendChild(el("tr", null, [
        el("td", { class: "pseudo", text: v.volunteer }),
        el("td", { class: "num", text: String(v.n_votes) }),
        el("td", { class: "num" }, [el("span", { class: "skill", text: fmtNum(skill) }),
          el("span", { class: "skill-bar", "aria-hidden": "true" }, [el("span", { class: widthClass(skill || 0) })])]),
        el("td", { class: "num", text: fmtPct(v.agreement) }),
        el("td", { class: "num", text: v.gold_seen ? v.gold_correct + " / " + v.gold_seen : "–" }),
        el("td", { text: fmtTime(v.last_active) })
      ]));
    });
    if (!body.volunteers.length) tb.appendChild(el("tr", null, [el("td", { colspan: "6", class: "hint", text: "No volunteers yet." })]));
  }

  // ---------------------------------------------------------------- load
  function refreshResults() {
    showAlert(null);
    var base = projectBase();
    var jobs = [
      Promise.all([api(withMethod(base + "/map/tiles")), api(withMethod(base + "/map/structures")), api(withMethod(base + "/map/villages"))])
        .then(function (r) { drawResults(r[0], r[1], r[2]); renderToCheck(r[0]); renderVillages(r[2]); if (state.selected) openTile(state.selected); }),
      api(withMethod(base + "/volunteers")).then(renderVolunteers),
      loadChart("labelled"), loadChart("votes"), loadChart("volunteers"), loadChart("agreement")
    ];
    return Promise.all(jobs).then(function () { document.body.setAttribute("data-ready", "1"); }).catch(handleError);
  }

  function loadProject() {
    return api(projectBase()).then(function (s) {
      state.summary = s;
      state.method = state.method || s.default_method;
      document.title = s.project.name + " — crowdsight analyst";
      $("project-title").textContent = s.project.name;
      $("version").textContent = "crowdsight " + (s.software_version || "");
      $("dashboard").hidden = false;
      renderStats(s);
      if (s.role === "researcher" || s.role === "admin") {
        $("to-researcher").href = "/researcher/#p=" + encodeURIComponent(state.slug);
        $("to-researcher").hidden = false;
      }
      $("refresh").hidden = false;
      $("refresh").onclick = function () {
        document.body.removeAttribute("data-ready");
        api(projectBase()).then(function (fresh) { state.summary = fresh; renderStats(fresh); return refreshResults(); })
          .catch(handleError);
      };
      renderControls(s);
      renderExports(s);
      initMap(s);
      return refreshResults();
    });
  }

  function start() {
    state.slug = slugFromPath();
    if (!token()) { showSignin(); return; }
    $("sign-out").hidden = false;
    loadProjects().then(function () { if (state.slug) return loadProject(); }).catch(handleError);
  }

  document.addEventListener("DOMContentLoaded", function () {
    initAuth();
    $("panel-close").addEventListener("click", function () {
      $("panel").hidden = true; state.selected = null; restyleTiles();
      if (state.map) state.map.invalidateSize();
    });
    start();
  });
})();
