/* crowdsight researcher pages: projects, imagery upload + ingest progress, settings, gold,
 * expert review and access (private projects, invite links).
 *
 * Auth: a bearer token (role researcher or admin). `?token=...` in the URL is moved into
 * sessionStorage (key "crowdsight.token", shared with the analyst dashboard) and removed from
 * the address bar; every API call sends it as `Authorization: Bearer`.
 * No inline scripts or styles (CSP): all state is expressed with classes and `hidden`.
 */
(function () {
  "use strict";

  var TOKEN_KEY = "crowdsight.token";
  var state = { project: null, stats: null, answers: [], tileFilter: "gold", tilesAfter: 0,
                queue: "unresolved", jobTimer: null, maxUpload: null };

  // ---------------------------------------------------------------- helpers
  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, children) {
    var n = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "text") n.textContent = attrs[k];
      else if (k === "class") n.className = attrs[k];
      else if (k.slice(0, 2) === "on") n.addEventListener(k.slice(2), attrs[k]);
      else if (attrs[k] === true) n.setAttribute(k, "");
      else if (attrs[k] !== false && attrs[k] != null) n.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c != null) n.append(c); });
    return n;
  }
  function token() { try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; } }
  function setToken(t) {
    try { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); }
    catch (e) { /* private mode: the token lives only in memory */ state.memToken = t; }
  }
  function bearer() { return token() || state.memToken || ""; }
  function bytes(n) {
    if (n == null) return "";
    var u = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function when(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function pct(x) { return Math.round((x || 0) * 100) + "%"; }

  function ApiError(status, body) {
    var e = (body && body.error) || {};
    this.status = status; this.code = e.code || "http_" + status;
    this.message = e.message || ("request failed (" + status + ")"); this.field = e.field;
  }

  function api(method, path, body) {
    var opts = { method: method, headers: { "Authorization": "Bearer " + bearer(),
                                             "Accept": "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (r) {
      return r.text().then(function (t) {
        var data = null;
        try { data = t ? JSON.parse(t) : null; } catch (e) { data = null; }
        if (!r.ok) throw new ApiError(r.status, data);
        return data;
      });
    });
  }

  function alertBox(msg, info) {
    var a = $("alert");
    if (!msg) { a.hidden = true; a.textContent = ""; return; }
    a.textContent = msg; a.className = "dash-alert" + (info ? " info" : ""); a.hidden = false;
  }
  function fail(err) {
    if (err && (err.status === 401 || err.status === 403)) {
      setToken(null);
      showSignin((err.status === 403 ? "This token cannot manage projects. " : "") + err.message);
      return;
    }
    alertBox(err && err.message ? err.message : String(err));
  }

  // ---------------------------------------------------------------- sign-in
  function showSignin(msg) {
    ["home", "project"].forEach(function (id) { $(id).hidden = true; });
    $("signin").hidden = false; $("sign-out").hidden = true;
    $("signin-error").textContent = msg || "";
    $("signin-token").focus();
  }

  function takeTokenFromUrl() {
    var params = new URLSearchParams(location.search);
    var t = params.get("token");
    var hash = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (!t && hash.get("token")) { t = hash.get("token"); hash.delete("token"); }
    if (t) {
      setToken(t);
      params.delete("token");
      var q = params.toString(), h = hash.toString();
      history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + (h ? "#" + h : ""));
    }
  }

  // ---------------------------------------------------------------- routing
  function currentSlug() {
    var h = new URLSearchParams(location.hash.replace(/^#/, ""));
    return h.get("p");
  }
  function route() {
    alertBox(null);
    if (!bearer()) { showSignin(); return; }
    $("signin").hidden = true; $("sign-out").hidden = false;
    var slug = currentSlug();
    if (slug) openProject(slug); else showHome();
  }

  // ---------------------------------------------------------------- home
  function showHome() {
    stopJobPolling();
    $("project").hidden = true; $("home").hidden = false;
    $("page-title").textContent = "Projects";
    document.title = "crowdsight — researcher";
    api("GET", "/api/projects").then(function (data) {
      var tbody = $("project-table").querySelector("tbody");
      tbody.replaceChildren();
      (data.projects || []).forEach(function (p) {
        var pr = p.progress || {};
        tbody.append(el("tr", null, [
          el("td", null, [el("a", { href: "#p=" + encodeURIComponent(p.slug), text: p.name || p.slug }),
                          el("div", { class: "hint", text: p.question || "" })]),
          el("td", { text: p.type }),
          el("td", null, [el("span", { class: "rs-badge st-" + p.status, text: p.status })]),
          el("td", { class: "num", text: pr.tiles != null ? pr.tiles : "" }),
          el("td", { class: "num", text: pr.retired != null ? pr.retired : "" }),
          el("td", { class: "num", text: pr.labels != null ? pr.labels : "" }),
        ]));
      });
      $("no-projects").hidden = (data.projects || []).length > 0;
    }).catch(fail);
  }

  function slugify(s) {
    return s.toLowerCase().normalize("NFKD").replace(/[^\w\s-]/g, "").trim()
      .replace(/[\s_]+/g, "-").replace(/^-+/, "").slice(0, 63);
  }

  function onNewProject(ev) {
    ev.preventDefault();
    var f = ev.target, err = $("new-error");
    err.textContent = "";
    var body = { name: f.name.value.trim(), slug: f.slug.value.trim() || slugify(f.name.value),
                 type: f.type.value, question: f.question.value.trim() };
    if (!body.name || !body.slug) { err.textContent = "Give the project a name."; return; }
    api("POST", "/api/projects", body).then(function (p) {
      f.reset();
      location.hash = "p=" + encodeURIComponent(p.slug);
    }).catch(function (e) {
      if (e.status === 401 || e.status === 403) return fail(e);
      err.textContent = e.message;
      if (e.field && f[e.field]) f[e.field].focus();
    });
  }

  // ---------------------------------------------------------------- project
  function openProject(slug) {
    $("home").hidden = true; $("project").hidden = false;
    return api("GET", "/api/projects/" + encodeURIComponent(slug) + "/researcher").then(function (p) {
      state.project = p;
      state.answers = p.answers || [];
      renderHead(p);
      fillSettings(p);
      renderUploadLayers(p);
      loadJobs();
      loadUploadsHint();
      selectTab(state.tab || "imagery");
      refreshReviewCounts(p.review);
    }).catch(function (e) {
      if (e.status === 404) { alertBox("No project '" + slug + "'."); showHome(); return; }
      fail(e);
    });
  }

  function renderHead(p) {
    $("page-title").textContent = p.name || p.slug;
    document.title = "crowdsight — " + (p.name || p.slug);
    $("p-name").textContent = p.name || p.slug;
    $("p-slug").textContent = p.slug;
    $("p-type").textContent = p.type;
    var st = $("p-status");
    st.textContent = p.status; st.className = "rs-badge st-" + p.status;
    $("act-publish").hidden = !(p.status === "draft" || p.status === "paused" || p.status === "finished");
    $("act-publish").textContent = p.status === "draft" ? "Publish" : "Resume";
    $("act-pause").hidden = p.status !== "live";
    $("act-finish").hidden = p.status === "finished";
    $("p-volunteer-link").href = "/#/p/" + encodeURIComponent(p.slug);
    $("p-analyst-link").href = "/analyst/" + encodeURIComponent(p.slug);
    var pr = p.progress || {};
    var stats = $("p-stats");
    stats.replaceChildren();
    [["Tiles", pr.tiles], ["Retired", pr.retired], ["Labels", pr.labels]].forEach(function (kv) {
      stats.append(el("div", { class: "stat" }, [el("span", { class: "v", text: kv[1] != null ? kv[1] : "–" }),
                                                 el("span", { class: "k", text: kv[0] })]));
    });
    if (pr.tiles) {
      var m = el("div", { class: "stat rs-meter-stat" }, [
        el("progress", { max: pr.tiles, value: pr.retired || 0, "aria-label": "Tiles retired" }),
        el("span", { class: "k", text: pct((pr.retired || 0) / pr.tiles) + " done" })]);
      stats.append(m);
    }
  }

  function lifecycle(action) {
    var p = state.project;
    if (action === "finish" && !confirm("Finish '" + (p.name || p.slug) + "'? Volunteers will no longer get its tiles."))
      return;
    api("POST", "/api/projects/" + encodeURIComponent(p.slug) + "/" + action).then(function () {
      alertBox(action === "publish" ? "Published: volunteers can now label this project." :
               action === "pause" ? "Paused." : "Finished.", true);
      return openProject(p.slug);
    }).catch(fail);
  }

  // ---------------------------------------------------------------- tabs
  var TABS = ["imagery", "settings", "gold", "review", "access"];
  function selectTab(name) {
    if (state.tab && state.tab !== name) alertBox(null);
    state.tab = name;
    TABS.forEach(function (t) {
      var on = t === name;
      $("tab-" + t).setAttribute("aria-selected", on ? "true" : "false");
      $("tab-" + t).tabIndex = on ? 0 : -1;
      $("pane-" + t).hidden = !on;
    });
    // (before the project has loaded, openProject selects the tab again once it has)
    if (!state.project) return;
    if (name === "gold") loadTiles(true);
    if (name === "review") loadReview();
    if (name === "access") loadAccess();
  }
  function onTabKey(ev) {
    var i = TABS.indexOf(state.tab);
    if (ev.key === "ArrowRight") i = (i + 1) % TABS.length;
    else if (ev.key === "ArrowLeft") i = (i - 1 + TABS.length) % TABS.length;
    else return;
    ev.preventDefault(); selectTab(TABS[i]); $("tab-" + TABS[i]).focus();
  }

  // ---------------------------------------------------------------- imagery upload + jobs
  function layerNames(p) {
    var have = (p.layers || []).map(function (l) { return typeof l === "string" ? l : l.name; });
    if (have.length) return have;
    return p.type === "compare" ? ["before", "after"] : ["image"];
  }

  function renderUploadLayers(p) {
    var box = $("upload-layers");
    box.replaceChildren();
    layerNames(p).forEach(function (name) {
      box.append(el("label", null, [
        document.createTextNode((name === "before" ? "Before" : name === "after" ? "After" : "Imagery") +
                                " (GeoTIFF) "),
        el("input", { type: "file", name: "layer-" + name, "data-layer": name, multiple: true,
                      accept: ".tif,.tiff,image/tiff" })]));
    });
  }

  function loadUploadsHint() {
    $("max-upload").textContent = state.maxUpload ? bytes(state.maxUpload) : "the server's limit";
  }

  // PUT the raw file; XMLHttpRequest gives upload progress events (fetch does not).
  function putFile(slug, layer, file, onProgress) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open("PUT", "/api/projects/" + encodeURIComponent(slug) + "/uploads/" +
               encodeURIComponent(layer) + "?filename=" + encodeURIComponent(file.name));
      xhr.setRequestHeader("Authorization", "Bearer " + bearer());
      xhr.setRequestHeader("Content-Type", "image/tiff");
      xhr.upload.onprogress = function (e) { if (e.lengthComputable) onProgress(e.loaded); };
      xhr.onload = function () {
        var data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else reject(new ApiError(xhr.status, data));
      };
      xhr.onerror = function () { reject(new ApiError(0, { error: { message: "the upload of " + file.name + " was interrupted (network error); try again" } })); };
      xhr.send(file);
    });
  }

  function setProgress(stage, frac, msg) {
    $("upload-progress").hidden = false;
    $("upload-stage").textContent = stage;
    $("upload-bar").value = Math.max(0, Math.min(1, frac));
    $("upload-pct").textContent = pct(frac);
    $("upload-msg").textContent = msg || "";
  }

  function onUpload(ev) {
    ev.preventDefault();
    var p = state.project, err = $("upload-error");
    err.textContent = "";
    var inputs = Array.prototype.slice.call($("upload-layers").querySelectorAll("input[type=file]"));
    var files = [];
    inputs.forEach(function (inp) {
      Array.prototype.forEach.call(inp.files, function (f) { files.push({ layer: inp.dataset.layer, file: f }); });
    });
    var missing = inputs.filter(function (inp) { return !inp.files.length; });
    if (!files.length || (p.type === "compare" && missing.length)) {
      err.textContent = p.type === "compare" ? "Choose a GeoTIFF for both the before and the after imagery." :
        "Choose at least one GeoTIFF."; return;
    }
    var total = files.reduce(function (s, f) { return s + f.file.size; }, 0), sent = 0;
    var ids = {};
    $("upload-go").disabled = true;
    var chain = Promise.resolve();
    files.forEach(function (f) {
      chain = chain.then(function () {
        return putFile(p.slug, f.layer, f.file, function (loaded) {
          setProgress("Uploading " + f.file.name, 0.5 * (sent + loaded) / total, bytes(sent + loaded) + " of " + bytes(total));
        }).then(function (u) {
          sent += f.file.size;
          (ids[f.layer] = ids[f.layer] || []).push(u.id);
          setProgress("Uploaded " + f.file.name, 0.5 * sent / total,
                      u.raster ? u.raster.width + "×" + u.raster.height + " px, " + u.raster.crs : "");
        });
      });
    });
    var zoom = ev.target.task_zoom.value;
    chain.then(function () {
      var options = {};
      if (zoom) options.task_zoom = parseInt(zoom, 10);
      return api("POST", "/api/projects/" + encodeURIComponent(p.slug) + "/ingest-jobs", { uploads: ids, options: options });
    }).then(function (job) {
      ev.target.reset();
      pollJob(job.id);
    }).catch(function (e) {
      $("upload-go").disabled = false;
      if (e.status === 401) return fail(e);
      $("upload-progress").hidden = true;
      err.textContent = e.message;
    });
  }

  function stopJobPolling() { if (state.jobTimer) { clearTimeout(state.jobTimer); state.jobTimer = null; } }

  function pollJob(id) {
    stopJobPolling();
    if (!state.project) return;
    var slug = state.project.slug;
    api("GET", "/api/projects/" + encodeURIComponent(slug) + "/ingest-jobs/" + id).then(function (job) {
      if (!state.project || state.project.slug !== slug) return;
      var frac = 0.5 + 0.5 * (job.progress || 0);
      if (job.status === "succeeded") {
        setProgress("Imagery ready", 1, job.result ? (job.result.tiles_added + " new tiles, " + job.result.tiles_total + " in the project") : "");
        $("upload-go").disabled = false;
        $("upload-progress").classList.add("done");
        loadJobs();
        openProject(slug);
        return;
      }
      if (job.status === "failed") {
        $("upload-progress").hidden = true; $("upload-go").disabled = false;
        $("upload-error").textContent = (job.error && job.error.message) || "The ingest failed.";
        loadJobs();
        return;
      }
      setProgress(job.stage === "loading" ? "Adding tiles to the project" : "Cutting tiles", frac, job.message);
      state.jobTimer = setTimeout(function () { pollJob(id); }, 700);
    }).catch(function (e) { $("upload-go").disabled = false; fail(e); });
  }

  function loadJobs() {
    if (!state.project) return;
    var slug = state.project.slug;
    api("GET", "/api/projects/" + encodeURIComponent(slug) + "/ingest-jobs").then(function (data) {
      var tbody = $("job-table").querySelector("tbody");
      tbody.replaceChildren();
      var running = null;
      (data.jobs || []).forEach(function (j) {
        var files = [];
        var layers = (j.request && j.request.layers) || {};
        Object.keys(layers).forEach(function (l) {
          layers[l].forEach(function (f) { files.push(l + ": " + f.filename + " (" + bytes(f.size) + ")"); });
        });
        var result = j.status === "succeeded" && j.result ? j.result.tiles_added + " tiles added" :
          j.status === "failed" && j.error ? j.error.message : pct(j.progress);
        tbody.append(el("tr", null, [el("td", { text: when(j.created_at) }), el("td", { text: files.join(", ") }),
          el("td", null, [el("span", { class: "rs-badge job-" + j.status, text: j.status })]),
          el("td", { class: j.status === "failed" ? "rs-error-text" : "", text: result })]));
        if ((j.status === "running" || j.status === "queued") && !running) running = j;
      });
      if (!(data.jobs || []).length) tbody.append(el("tr", null, [el("td", { colspan: 4, class: "hint", text: "No imagery uploaded yet." })]));
      if (running && !state.jobTimer) { $("upload-go").disabled = true; pollJob(running.id); }
    }).catch(fail);
  }

  // ---------------------------------------------------------------- settings
  function fillSettings(p) {
    var f = $("settings-form");
    f.name.value = p.name || "";
    f.question.value = p.question || "";
    f.help_text.value = p.help_text || "";
    f.gold_rate.value = p.gold_rate != null ? p.gold_rate : 0.1;
    f.priority.value = p.priority || "completion";
    f.answers.value = (p.answers || []).map(function (a) {
      return [a.value, a.label, a.shortcut].join(" | ");
    }).join("\n");
    var r = p.retirement || { policy: "fixed" };
    f.policy.value = r.policy === "adaptive" ? "adaptive" : "fixed";
    f.redundancy.value = p.redundancy != null ? p.redundancy : 5;
    f.threshold.value = r.threshold != null ? r.threshold : 0.8;
    f.min_votes.value = r.min_votes != null ? r.min_votes : 3;
    f.max_votes.value = r.max_votes != null ? r.max_votes : 7;
    var b = p.block || { cols: 1, rows: 1 };
    f.block_cols.value = b.cols || 1; f.block_rows.value = b.rows || 1;
    f.context.checked = !!p.context;
    togglePolicy();
    renderExamples(p.examples || []);
  }
  function togglePolicy() {
    var adaptive = $("policy").value === "adaptive";
    Array.prototype.forEach.call(document.querySelectorAll(".adaptive-only"), function (n) { n.hidden = !adaptive; });
  }
  function parseAnswers(text) {
    return text.split("\n").map(function (l) { return l.trim(); }).filter(Boolean).map(function (line, i) {
      var parts = line.split("|").map(function (s) { return s.trim(); });
      var a = { value: parts[0] };
      if (parts[1]) a.label = parts[1];
      a.shortcut = parts[2] || String(i + 1);
      return a;
    });
  }
  function renderExamples(examples) {
    var ul = $("example-list");
    ul.replaceChildren();
    examples.forEach(function (ex, i) {
      var urls = ex.image_urls || {};
      var imgs = Object.keys(urls).map(function (k) { return el("img", { src: urls[k], alt: k, width: 96, height: 96, loading: "lazy" }); });
      ul.append(el("li", { class: "rs-example-item" }, [el("div", { class: "rs-imgs" }, imgs),
        el("div", null, [el("strong", { text: ex.answer || "" }), el("p", { class: "hint", text: ex.caption || "" }),
          el("button", { type: "button", class: "btn btn-quiet", text: "Remove", onclick: function () { removeExample(i); } })])]));
    });
    if (!examples.length) ul.append(el("li", { class: "hint", text: "No examples yet." }));
  }
  function examplesPayload(list) {
    return list.map(function (e) {
      var o = { caption: e.caption || "", answer: e.answer || null };
      if (e.tile_id != null) o.tile_id = e.tile_id; else if (e.image_url) o.image_url = e.image_url;
      return o;
    });
  }
  function saveExamples(list) {
    var p = state.project;
    return api("PATCH", "/api/projects/" + encodeURIComponent(p.slug), { examples: examplesPayload(list) }).then(function () {
      return api("GET", "/api/projects/" + encodeURIComponent(p.slug) + "/researcher");
    }).then(function (np) {
      state.project = np; renderExamples(np.examples || []);
    });
  }
  function removeExample(i) {
    var list = (state.project.examples || []).slice(); list.splice(i, 1);
    saveExamples(list).catch(fail);
  }
  function onSaveSettings(ev) {
    ev.preventDefault();
    var f = ev.target, err = $("settings-error"), p = state.project;
    err.textContent = "";
    var retirement = { policy: f.policy.value };
    if (f.policy.value === "adaptive") {
      retirement.threshold = parseFloat(f.threshold.value);
      retirement.min_votes = parseInt(f.min_votes.value, 10);
      retirement.max_votes = parseInt(f.max_votes.value, 10);
    }
    var body = { name: f.name.value.trim(), question: f.question.value, help_text: f.help_text.value,
                 gold_rate: parseFloat(f.gold_rate.value), priority: f.priority.value,
                 redundancy: parseInt(f.redundancy.value, 10), retirement: retirement,
                 block: { cols: parseInt(f.block_cols.value, 10) || 1, rows: parseInt(f.block_rows.value, 10) || 1 },
                 context: f.context.checked };
    if (p.type !== "mark") body.answers = parseAnswers(f.answers.value);
    api("PATCH", "/api/projects/" + encodeURIComponent(p.slug), body).then(function () {
      return api("GET", "/api/projects/" + encodeURIComponent(p.slug) + "/researcher");
    }).then(function (np) {
      state.project = np; state.answers = np.answers || state.answers;
      renderHead(np); fillSettings(np);
      alertBox("Settings saved.", true);
    }).catch(function (e) {
      if (e.status === 401 || e.status === 403) return fail(e);
      err.textContent = e.message + (e.field ? " (" + e.field + ")" : "");
    });
  }

  // ---------------------------------------------------------------- tiles (images)
  function tileImages(t) {
    var urls = t.image_urls || {};
    return Object.keys(urls).map(function (k) {
      return el("figure", null, [el("img", { src: urls[k], alt: k + " imagery of tile " + t.tile_id, width: 128, height: 128 }),
                                 el("figcaption", { text: k })]);
    });
  }
  function answerLabel(v) {
    for (var i = 0; i < state.answers.length; i++) if (state.answers[i].value === v) return state.answers[i].label || v;
    return v;
  }
  function countsText(t) {
    var c = t.answer_counts || {};
    var keys = Object.keys(c);
    if (!keys.length) return "no votes yet";
    return keys.sort(function (a, b) { return c[b] - c[a]; }).map(function (k) { return answerLabel(k) + " " + c[k]; }).join(" · ");
  }
  function answerSelect(sel, value) {
    sel.replaceChildren();
    state.answers.forEach(function (a) { sel.append(el("option", { value: a.value, text: a.label || a.value })); });
    if (value) sel.value = value;
  }

  // ---------------------------------------------------------------- gold
  function loadTiles(reset) {
    var p = state.project;
    if (reset) { state.tilesAfter = 0; $("tile-grid").replaceChildren(); }
    api("GET", "/api/projects/" + encodeURIComponent(p.slug) + "/researcher/tiles?which=" + state.tileFilter +
        "&after=" + state.tilesAfter + "&limit=24").then(function (data) {
      state.answers = data.answers || state.answers;
      var grid = $("tile-grid");
      (data.tiles || []).forEach(function (t) { grid.append(tileCard(t)); });
      if (reset && !(data.tiles || []).length) {
        grid.append(el("li", { class: "hint", text: state.tileFilter === "gold" ?
          "No gold tiles yet: show all tiles and mark a few, or promote confident ones." : "No tiles here yet." }));
      }
      state.tilesAfter = data.next_after || 0;
      $("tiles-more").hidden = !data.next_after;
    }).catch(fail);
  }

  function tileCard(t) {
    var node = $("tile-card").content.firstElementChild.cloneNode(true);
    node.dataset.tile = t.tile_id;
    node.querySelector(".rs-imgs").append.apply(node.querySelector(".rs-imgs"), tileImages(t));
    var meta = "Tile " + t.tile_id + " · " + t.state + " · " + countsText(t);
    if (t.decision) meta += " · expert: " + answerLabel(t.decision.answer);
    node.querySelector(".rs-tile-meta").textContent = meta;
    if (t.gold_answer) node.classList.add("is-gold");
    var f = node.querySelector("form");
    answerSelect(f.answer, t.gold_answer || (t.decision && t.decision.answer) || t.consensus_answer);
    f.explanation.value = t.gold_explanation || "";
    f.tutorial.checked = !!t.tutorial;
    f.querySelector(".rs-unmark").hidden = !t.gold_answer;
    f.addEventListener("submit", function (ev) {
      ev.preventDefault();
      gold(t.tile_id, f.answer.value, f.explanation.value, f.tutorial.checked, node);
    });
    f.querySelector(".rs-unmark").addEventListener("click", function () { gold(t.tile_id, null, null, false, node); });
    f.querySelector(".rs-example").addEventListener("click", function () {
      var list = (state.project.examples || []).slice();
      list.push({ tile_id: t.tile_id, answer: f.answer.value, caption: f.explanation.value });
      saveExamples(list).then(function () { alertBox("Added to the help examples.", true); }).catch(fail);
    });
    return node;
  }

  function gold(tileId, answer, explanation, tutorial, node) {
    var p = state.project;
    api("POST", "/api/projects/" + encodeURIComponent(p.slug) + "/researcher/gold",
        { tile_id: tileId, answer: answer, explanation: explanation, tutorial: tutorial }).then(function (t) {
      node.replaceWith(tileCard(t));
      alertBox(answer ? "Tile " + tileId + " is now gold." : "Tile " + tileId + " is no longer gold.", true);
    }).catch(function (e) {
      if (e.status === 401 || e.status === 403) return fail(e);
      alertBox(e.message);
    });
  }

  function onPromote(ev) {
    ev.preventDefault();
    var f = ev.target, p = state.project;
    api("POST", "/api/projects/" + encodeURIComponent(p.slug) + "/gold/promote",
        { min_confidence: parseFloat(f.min_confidence.value), limit: parseInt(f.limit.value, 10) }).then(function (r) {
      $("promote-msg").textContent = r.count ? r.count + " tile(s) promoted to gold." : "No retired tile is that confident yet.";
      loadTiles(true);
    }).catch(fail);
  }

  // ---------------------------------------------------------------- review
  function refreshReviewCounts(counts) {
    var p = state.project;
    var show = function (c) {
      ["unresolved", "flagged", "sample", "decided"].forEach(function (k) { $("q-" + k).textContent = c[k] != null ? "(" + c[k] + ")" : ""; });
      var open = (c.unresolved || 0) + (c.flagged || 0);
      $("review-count").textContent = open ? String(open) : "";
    };
    if (counts) { show(counts); return; }
    api("GET", "/api/projects/" + encodeURIComponent(p.slug) + "/review?queue=unresolved&limit=1").then(function (d) { show(d.counts); }).catch(function () {});
  }

  function loadReview() {
    var p = state.project;
    api("GET", "/api/projects/" + encodeURIComponent(p.slug) + "/review?queue=" + state.queue + "&limit=20").then(function (d) {
      state.answers = d.answers || state.answers;
      refreshReviewCounts(d.counts);
      var ul = $("review-list");
      ul.replaceChildren();
      (d.items || []).forEach(function (t) { ul.append(reviewCard(t)); });
      $("review-empty").hidden = (d.items || []).length > 0;
    }).catch(fail);
  }

  function reviewCard(t) {
    var node = $("review-card").content.firstElementChild.cloneNode(true);
    node.dataset.tile = t.tile_id;
    node.querySelector(".rs-imgs").append.apply(node.querySelector(".rs-imgs"), tileImages(t));
    var meta = "Tile " + t.tile_id + " · " + t.state;
    if (t.consensus_answer) meta += " · crowd: " + answerLabel(t.consensus_answer) +
      (t.confidence != null ? " (" + pct(t.confidence) + ")" : "");
    node.querySelector(".rs-tile-meta").textContent = meta;
    node.querySelector(".rs-votes").append(el("li", { text: countsText(t) }));
    var notes = node.querySelector(".rs-notes");
    (t.notes || []).forEach(function (n) {
      notes.append(el("li", null, [el("q", { text: n.note }), el("span", { class: "hint", text: " — " + (n.answer ? answerLabel(n.answer) : "skipped") + ", " + when(n.at) })]));
    });
    var f = node.querySelector("form");
    var fs = f.querySelector(".rs-answers");
    var current = t.decision ? t.decision.answer : null;
    state.answers.forEach(function (a, i) {
      var id = "d-" + t.tile_id + "-" + i;
      fs.append(el("input", { type: "radio", name: "answer", id: id, value: a.value, checked: a.value === current }),
                el("label", { for: id, text: a.label || a.value }));
    });
    if (t.decision) {
      f.note.value = t.decision.note || "";
      f.querySelector(".rs-withdraw").hidden = false;
      node.classList.add("is-decided");
    }
    var expl = f.querySelector(".rs-gold-expl");
    expl.hidden = true;
    f.make_gold.checked = !!t.gold_answer;
    f.make_gold.addEventListener("change", function () { expl.hidden = !f.make_gold.checked; });
    f.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var checked = f.querySelector("input[name=answer]:checked");
      if (!checked) { alertBox("Choose an answer for tile " + t.tile_id + "."); return; }
      var body = { answer: checked.value, note: f.note.value || null, source: state.queue === "decided" ? "manual" : state.queue,
                   make_gold: f.make_gold.checked };
      if (f.make_gold.checked) body.explanation = f.explanation.value;
      api("POST", "/api/projects/" + encodeURIComponent(state.project.slug) + "/review/" + t.tile_id, body).then(function () {
        alertBox("Decision saved for tile " + t.tile_id + "; it now overrides the crowd in exports.", true);
        loadReview();
      }).catch(function (e) { if (e.status === 401 || e.status === 403) return fail(e); alertBox(e.message); });
    });
    f.querySelector(".rs-withdraw").addEventListener("click", function () {
      api("DELETE", "/api/projects/" + encodeURIComponent(state.project.slug) + "/review/" + t.tile_id).then(function () {
        alertBox("Decision withdrawn for tile " + t.tile_id + ".", true); loadReview();
      }).catch(fail);
    });
    return node;
  }

  // ---------------------------------------------------------------- access
  function loadAccess() {
    var p = state.project, base = "/api/projects/" + encodeURIComponent(p.slug);
    var f = $("access-form");
    // not editable until the current settings are in: a late answer would overwrite a choice
    // made meanwhile, and saving would then send the old value
    var fields = Array.prototype.slice.call(f.elements);
    fields.forEach(function (e) { e.disabled = true; });
    api("GET", base + "/access").then(function (a) {
      f.private.checked = !!a.private; f.exports_restricted.checked = !!a.exports_restricted;
    }).catch(fail).then(function () {
      fields.forEach(function (e) { e.disabled = false; });
    });
    loadInvites();
  }
  function loadInvites() {
    var p = state.project;
    api("GET", "/api/projects/" + encodeURIComponent(p.slug) + "/invites").then(function (d) {
      var tbody = $("invite-table").querySelector("tbody");
      tbody.replaceChildren();
      (d.invites || []).forEach(function (inv) {
        var btn = inv.revoked ? el("span", { class: "hint", text: "withdrawn" }) :
          el("button", { type: "button", class: "btn btn-quiet", text: "Withdraw", onclick: function () {
            api("DELETE", "/api/projects/" + encodeURIComponent(p.slug) + "/invites/" + inv.id).then(loadInvites).catch(fail);
          } });
        tbody.append(el("tr", { class: inv.revoked ? "rs-revoked" : "" }, [el("td", null, [el("code", { text: inv.prefix + "…" })]),
          el("td", { text: inv.label }), el("td", { class: "num", text: inv.members }),
          el("td", { text: when(inv.created_at) }), el("td", null, [btn])]));
      });
      if (!(d.invites || []).length) tbody.append(el("tr", null, [el("td", { colspan: 5, class: "hint", text: "No invite links." })]));
    }).catch(fail);
  }
  function onSaveAccess(ev) {
    ev.preventDefault();
    var f = ev.target, p = state.project;
    api("PATCH", "/api/projects/" + encodeURIComponent(p.slug) + "/access",
        { private: f.private.checked, exports_restricted: f.exports_restricted.checked }).then(function (a) {
      $("access-msg").textContent = (a.private ? "Private" : "Public") + "; exports " +
        (a.exports_restricted ? "for researchers only." : "open to analysts.");
    }).catch(fail);
  }
  function onInvite(ev) {
    ev.preventDefault();
    var f = ev.target, p = state.project;
    api("POST", "/api/projects/" + encodeURIComponent(p.slug) + "/invites", { label: f.label.value }).then(function (inv) {
      f.reset();
      $("invite-new").hidden = false;
      $("invite-url").value = location.origin + inv.url;
      $("invite-url").select();
      loadInvites();
    }).catch(fail);
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    takeTokenFromUrl();
    $("signin-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      setToken($("signin-token").value.trim()); $("signin-token").value = "";
      route();
    });
    $("sign-out").addEventListener("click", function () { setToken(null); showSignin(); });
    $("new-form").addEventListener("submit", onNewProject);
    $("new-form").name.addEventListener("input", function (ev) {
      var slug = ev.target.form.slug;
      if (!slug.dataset.touched) slug.value = slugify(ev.target.value);
    });
    $("new-form").slug.addEventListener("input", function (ev) { ev.target.dataset.touched = "1"; });
    ["publish", "pause", "finish"].forEach(function (a) { $("act-" + a).addEventListener("click", function () { lifecycle(a); }); });
    TABS.forEach(function (t) {
      $("tab-" + t).addEventListener("click", function () { selectTab(t); });
      $("tab-" + t).addEventListener("keydown", onTabKey);
    });
    $("upload-form").addEventListener("submit", onUpload);
    $("settings-form").addEventListener("submit", onSaveSettings);
    $("policy").addEventListener("change", togglePolicy);
    $("promote-form").addEventListener("submit", onPromote);
    $("tiles-more").addEventListener("click", function () { loadTiles(false); });
    Array.prototype.forEach.call(document.querySelectorAll("input[name=tile-filter]"), function (r) {
      r.addEventListener("change", function () { state.tileFilter = r.value; loadTiles(true); });
    });
    Array.prototype.forEach.call(document.querySelectorAll("input[name=queue]"), function (r) {
      r.addEventListener("change", function () { state.queue = r.value; loadReview(); });
    });
    $("access-form").addEventListener("submit", onSaveAccess);
    $("invite-form").addEventListener("submit", onInvite);
    $("invite-copy").addEventListener("click", function () {
      var v = $("invite-url").value;
      if (navigator.clipboard) navigator.clipboard.writeText(v).catch(function () {});
      $("invite-url").select();
    });
    window.addEventListener("hashchange", route);
    fetch("/api/researcher/config", { headers: { "Authorization": "Bearer " + bearer() } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (c) { if (c) { state.maxUpload = c.max_upload_bytes; loadUploadsHint(); $("version").textContent = "crowdsight " + (c.version || ""); } })
      .catch(function () {});
    route();
  }

  // ---------------------------------------------------------------- /join#<invite>
  // A volunteer opens an invite link: start (or resume) the volunteer session, redeem the
  // invite with the session's CSRF token, then open the project on the volunteer page. The
  // invite code is in the URL fragment, so it never reaches server logs.
  function join() {
    var code = decodeURIComponent(location.hash.replace(/^#/, ""));
    history.replaceState(null, "", location.pathname);
    var msg = $("join-msg");
    function failed(text) {
      $("join-h").textContent = "This invite link does not work";
      msg.textContent = text; $("join-home").hidden = false;
    }
    if (!code) { failed("The link has no invitation code. Ask the project's researchers for the full link."); return; }
    fetch("/api/session", { method: "POST", credentials: "same-origin",
                            headers: { "Content-Type": "application/json", "Accept": "application/json" }, body: "{}" })
      .then(function (r) { return r.json().then(function (d) { if (!r.ok) throw new ApiError(r.status, d); return d; }); })
      .then(function (s) {
        return fetch("/api/invites/redeem", { method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": s.csrf_token },
          body: JSON.stringify({ token: code }) });
      })
      .then(function (r) { return r.json().then(function (d) { if (!r.ok) throw new ApiError(r.status, d); return d; }); })
      .then(function (d) {
        $("join-h").textContent = "Welcome!";
        msg.textContent = "Opening the project…";
        location.replace("/#/p/" + encodeURIComponent(d.slug));
      })
      .catch(function (e) { failed(e.message || String(e)); });
  }

  function start() { if (document.body.dataset.page === "join") join(); else init(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
