// The image builder page: submit builds, list them with live phase and log, retry, cancel,
// and Launch a ready image on the hub's spawn page. Every text from the server is set as
// text (never as HTML).
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("builder-data").textContent);
  const base = data.prefix;
  const headers = { "X-XSRFToken": data.xsrf };
  const terminal = new Set(["ready", "failed", "cancelled"]);
  // a build known here never goes back to an earlier phase (the list may lag the stream)
  const rank = { pending: 0, building: 1 };
  const builds = new Map();
  let selected = null;
  let announced = []; // the builds the form's message is about
  let source = null;

  const $ = (id) => document.getElementById(id);
  const form = $("build-form");
  const message = $("form-message");

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  function upsert(build) {
    const old = builds.get(build.id);
    if (!old || (rank[old.phase] ?? 2) <= (rank[build.phase] ?? 2)) {
      builds.set(build.id, { ...old, ...build });
    }
  }

  function age(timestamp) {
    if (!timestamp) return "";
    const seconds = Math.max(0, (Date.now() - Date.parse(timestamp)) / 1000);
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h`;
    return `${Math.round(seconds / 86400)} d`;
  }

  const badgeClass = {
    pending: "text-bg-warning",
    building: "text-bg-primary",
    ready: "text-bg-success",
    failed: "text-bg-danger",
    cancelled: "text-bg-secondary",
  };

  function badge(phase) {
    return el("span", { class: `badge ${badgeClass[phase] || "text-bg-light"}` }, phase);
  }

  function launchUrl(build) {
    return `${data.hub_prefix}spawn?image=${encodeURIComponent(build.image)}`;
  }

  // A launch link (?repo=…&ref=…, e.g. behind the badge in a README): the form is filled in;
  // pressing Build builds (or finds) the image and, once it is ready, opens the hub's spawn
  // page on it. Opening the link alone never starts a build.
  const wanted = new URLSearchParams(window.location.search);
  let launching = null; // the id of the build to launch when it is ready

  function shareLink(build) {
    const link = new URL(`${base}launch`, window.location.href);
    link.search = new URLSearchParams({ repo: build.repo, ref: build.ref }).toString();
    return link.toString();
  }

  function launchIfReady() {
    const build = launching && builds.get(launching);
    if (build && build.phase === "ready") {
      launching = null;
      window.location.assign(launchUrl(build));
    }
  }

  function actionCell(build) {
    const cell = el("td", { class: "text-end text-nowrap" });
    const label = `${build.image} (${build.ref})`;
    cell.append(
      el(
        "button",
        {
          type: "button",
          class: "btn btn-sm btn-outline-secondary me-1",
          "data-action": "show",
          "data-id": build.id,
          "aria-label": `Details of ${label}`,
        },
        "Details",
      ),
    );
    if (build.phase === "ready") {
      cell.append(
        el(
          "a",
          {
            class: "btn btn-sm btn-success",
            href: launchUrl(build),
            "aria-label": `Launch ${label}`,
          },
          "Launch",
        ),
      );
    } else if (!terminal.has(build.phase)) {
      cell.append(
        el(
          "button",
          {
            type: "button",
            class: "btn btn-sm btn-outline-danger",
            "data-action": "cancel",
            "data-id": build.id,
            "aria-label": `Cancel ${label}`,
          },
          "Cancel",
        ),
      );
    } else {
      cell.append(
        el(
          "button",
          {
            type: "button",
            class: "btn btn-sm btn-outline-primary",
            "data-action": "retry",
            "data-id": build.id,
            "aria-label": `Retry ${label}`,
          },
          "Retry",
        ),
      );
    }
    return cell;
  }

  function render() {
    const rows = [...builds.values()].sort((a, b) =>
      (b.created || "").localeCompare(a.created || ""),
    );
    $("builds").replaceChildren(
      ...rows.map((b) =>
        el(
          "tr",
          { "data-id": b.id },
          el("td", { class: "text-break" }, b.repo),
          el("td", {}, b.ref),
          el("td", { class: "text-break" }, b.image),
          el("td", {}, badge(b.phase)),
          el("td", { title: b.created || "" }, age(b.created)),
          data.admin ? el("td", {}, b.requester || "") : null,
          actionCell(b),
        ),
      ),
    );
    $("builds-empty").hidden = rows.length > 0;
    if (selected && builds.has(selected)) renderDetail(builds.get(selected));
    if (announced.length) announce(announced.map((id) => builds.get(id)).filter(Boolean));
    launchIfReady();
  }

  function renderDetail(build) {
    $("detail").hidden = false;
    $("detail-title").textContent = `${build.image} from ${build.repo} @ ${build.ref}`;
    const phase = $("detail-phase");
    phase.className = `badge ${badgeClass[build.phase] || "text-bg-light"}`;
    phase.textContent = build.phase;
    const facts = [
      ["Commit", build.commit],
      ["Strategy", build.strategy],
      ["Decided by", (build.decided_by || []).join(", ")],
      ["Image", build.image],
      ["Digest", build.digest],
      ["Launch link", build.phase === "ready" ? shareLink(build) : ""],
      [
        "Badge (Markdown)",
        build.phase === "ready"
          ? `[![Launch on JupyterHub](${new URL(`${base}static/launch-badge.svg`, window.location.href)})](${shareLink(build)})`
          : "",
      ],
      ...(build.notes || []).map((note) => ["Note", note]),
    ].filter(([, value]) => value);
    $("detail-facts").replaceChildren(
      ...facts.flatMap(([key, value]) => [
        el("dt", { class: "col-sm-3" }, key),
        el("dd", { class: "col-sm-9 text-break" }, String(value)),
      ]),
    );
    const failure = $("detail-message");
    failure.hidden = !(build.phase === "failed" && build.message);
    failure.textContent = build.phase === "failed" ? build.message || "" : "";
  }

  async function api(method, path, body) {
    const init = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(base + path, init);
    let json = null;
    try {
      json = await response.json();
    } catch (e) {
      json = null;
    }
    return { ok: response.ok, status: response.status, json };
  }

  async function load(first = false) {
    const { ok, json } = await api("GET", "api/builds");
    if (!ok || !json) return;
    json.builds.forEach(upsert);
    if (first && wanted.get("repo")) {
      // the link again: an image already built from it goes straight to the spawn page
      const done = json.builds.find(
        (b) => b.repo === wanted.get("repo") && b.ref === wanted.get("ref") && b.phase === "ready",
      );
      if (done) launching = done.id;
    }
    render();
  }

  function watch(id) {
    if (source) source.close();
    selected = id;
    const log = $("detail-log");
    log.textContent = "";
    renderDetail(builds.get(id));
    // JupyterHub checks XSRF on script-initiated GETs too; EventSource cannot send headers
    source = new EventSource(
      `${base}api/builds/${encodeURIComponent(id)}/events?_xsrf=${encodeURIComponent(data.xsrf)}`,
    );
    source.addEventListener("log", (ev) => {
      log.textContent += `${JSON.parse(ev.data).line}\n`;
      log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("phase", (ev) => {
      upsert(JSON.parse(ev.data));
      render();
    });
    source.addEventListener("end", () => source.close());
  }

  function say(text, kind) {
    message.className = `alert alert-${kind} mb-0`;
    message.textContent = text;
  }

  function announce(list) {
    // the phases as they change; the colour of the least advanced one
    const order = ["failed", "cancelled", "pending", "building", "ready"];
    const worst = list.map((b) => b.phase).sort((a, b) => order.indexOf(a) - order.indexOf(b))[0];
    const kind = { ready: "success", failed: "danger", cancelled: "secondary" }[worst];
    say(list.map((b) => `Build of ${b.image}: ${b.phase}`).join("; "), kind || "info");
  }

  async function submit(body) {
    const { ok, json } = await api("POST", "api/builds", body);
    if (!ok) {
      announced = [];
      say(json && json.message ? json.message : "The build could not be submitted.", "danger");
      await load();
      return;
    }
    // a repo with .aicoe-ci.yaml overlays builds one image per overlay
    const all = json.builds || [json];
    announced = all.map((b) => b.id);
    all.forEach(upsert);
    if (wanted.get("repo") && body.repo === wanted.get("repo")) launching = json.id;
    render();
    watch(json.id);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!form.checkValidity()) {
      form.classList.add("was-validated");
      say("Enter the repository URL and a tag, branch or commit.", "warning");
      return;
    }
    const fields = Object.fromEntries(new FormData(form));
    for (const key of Object.keys(fields)) if (!fields[key]) delete fields[key];
    await submit(fields);
  });

  $("builds").addEventListener("click", async (event) => {
    const target = event.target.closest("[data-action]");
    if (!target) return;
    const build = builds.get(target.dataset.id);
    if (!build) return;
    if (target.dataset.action === "show") watch(build.id);
    if (target.dataset.action === "cancel") {
      const { ok, json } = await api("DELETE", `api/builds/${encodeURIComponent(build.id)}`);
      if (!ok) say(json && json.message ? json.message : "Cancel failed.", "danger");
      await load();
    }
    if (target.dataset.action === "retry") await submit({ repo: build.repo, ref: build.ref });
  });

  if (wanted.get("repo")) {
    $("repo").value = wanted.get("repo");
    $("ref").value = wanted.get("ref") || "";
    $("build-button").textContent = "Build and launch";
    say(
      `Press Build and launch to build ${wanted.get("repo")} at ${wanted.get("ref") || "(a ref)"}: ` +
        "your server starts on the image as soon as it is ready.",
      "info",
    );
  }
  load(true);
  setInterval(() => {
    load();
  }, 5000);
})();
