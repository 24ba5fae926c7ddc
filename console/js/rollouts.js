// Rollouts: the list with a start form (dry run first), and one rollout with its progress bar per
// outcome from the event stream, a bar per batch from its targets, its controls and its targets
// page by page.
import { api, may, query } from "./api.js";
import { ago, facts, fill, h, say, shortId, throttled } from "./dom.js";
import { openEvents } from "./sse.js";

const OUTCOMES = ["applied", "configuring", "upgrading", "waiting", "pending", "failed", "incompatible",
  "timed_out", "skipped", "unsupported", "replaced", "cancelled"];

const payloadText = (r) => r.kind === "package"
  ? `package ${r.package?.name ?? ""} ${r.package?.version ?? ""}`
  : `${r.configuration} v${r.version}`;

/** A bar with one segment per outcome, and the counts beside it. */
function progressBar(progress) {
  const total = Object.values(progress ?? {}).reduce((a, b) => a + b, 0);
  const present = OUTCOMES.filter((o) => progress?.[o]);
  const percent = (n) => total ? Math.round((n / total) * 100) : 0;
  return h("div", { class: "progress", "data-total": total },
    h("div", { class: "bar", role: "img", "aria-label": present.map((o) => `${o} ${progress[o]}`).join(", ") || "no targets" },
      present.map((o) => h("span", { class: `outcome-${o}`, "data-outcome": o, title: `${o}: ${progress[o]}`,
        "data-width": percent(progress[o]) }))),
    h("div", { class: "outcomes" }, present.map((o) => h("span", { "data-outcome": o },
      h("span", { class: `swatch outcome-${o}` }), `${o} ${progress[o]} (${percent(progress[o])}%)`))));
}

/** Targets counted per batch (from 0; `null`: not sent in any batch yet), then per outcome. */
export function byBatch(targets) {
  const batches = new Map();
  for (const t of targets) {
    const key = t.batch ?? null;
    if (!batches.has(key)) batches.set(key, {});
    const counts = batches.get(key);
    counts[t.outcome] = (counts[t.outcome] ?? 0) + 1;
  }
  return [...batches].sort(([a], [b]) => (a ?? Infinity) - (b ?? Infinity));
}

/** How many targets the per-batch bars read at most (pages of 500). */
const BATCH_TARGETS = 5000;

/** Inline styles are refused by the policy: widths are set through the CSSOM instead. */
function sizeBars(root) {
  for (const span of root.querySelectorAll(".bar span[data-width]")) span.style.width = `${span.dataset.width}%`;
}

export async function renderList(main, role) {
  const body = h("tbody", { id: "rollouts" });
  const formCard = h("section", { class: "card", id: "start" });
  fill(main, h("h1", {}, "Rollouts"),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Rollout", "What", "Selector", "Status", "Progress", "Started"].map((t) => h("th", {}, t)))), body)),
    formCard);

  async function load() {
    const page = await api("/api/v1/rollouts?limit=50");
    fill(body, page.items.length ? page.items.map((r) => h("tr", { "data-id": r.id },
      h("td", {}, h("a", { href: `#/rollouts/${encodeURIComponent(r.id)}` }, shortId(r.id))),
      h("td", {}, payloadText(r)), h("td", {}, r.selector || "(all)"), h("td", { class: "status" }, r.status),
      h("td", {}, progressBar(r.progress)), h("td", {}, ago(r.created_at)))) : h("tr", {}, h("td", { colspan: 6 }, "No rollouts yet.")));
    sizeBars(body);
  }

  if (may(role, "operator")) startForm(formCard);
  else fill(formCard, h("p", { class: "hint" }, "Starting a rollout needs an operator key."));
  await load();
  // Read again after rollout events, at most twice a second.
  const loadLater = throttled(load, 500);
  const stream = openEvents("?rollouts=true", (type) => {
    if (type === "rollout") loadLater();
  });
  return () => { stream.close(); loadLater.cancel(); };
}

function startForm(card) {
  const field = (id, text, attrs = {}) => h("div", {}, h("label", { for: id }, text), h("input", { id, name: id, ...attrs }));
  const kind = h("select", { id: "start-kind" }, h("option", { value: "configuration" }, "Configuration"), h("option", { value: "package" }, "Package (upgrade)"));
  const plan = h("p", { id: "start-plan", class: "muted" }, "Dry run first: it shows which collectors would be sent what.");
  const start = h("button", { type: "button", id: "start-rollout", disabled: true }, "Start");
  const form = h("form", { id: "start-form" },
    h("div", { class: "form-grid" },
      h("div", {}, h("label", { for: "start-kind" }, "Kind"), kind),
      field("start-configuration", "Configuration", { placeholder: "gateway" }),
      field("start-version", "Version", { type: "number", min: 1, placeholder: "1 (configuration) or 1.2.3 (package)" }),
      field("start-package", "Package name", { placeholder: "otelcol-contrib" }),
      field("start-package-version", "Package version", {}),
      field("start-url", "Download URL", { type: "url" }),
      field("start-sha256", "SHA-256", {}),
      field("start-selector", "Label selector", { placeholder: "env=prod" }),
      field("start-initial", "First batch", { type: "number", min: 1, value: 1 }),
      field("start-multiplier", "Multiplier", { type: "number", min: 1, value: 2 }),
      field("start-max-batch", "Largest batch", { type: "number", min: 1, value: 100 }),
      field("start-max-errors", "Errors allowed", { type: "number", min: 0, value: 0 })),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "dry-run" }, "Dry run"), start), plan);
  fill(card, h("h2", {}, "Start a rollout"), form);

  // How many collectors the selector picks, read again a moment after each change.
  const matching = h("p", { id: "selector-count", class: "hint", "aria-live": "polite" });
  document.getElementById("start-selector").after(matching);
  let countDue = null;
  async function countMatching() {
    const selector = document.getElementById("start-selector").value.trim();
    try {
      const page = await api(`/api/v1/collectors${query({ selector, limit: 500 })}`);
      const n = page.items.length;
      matching.textContent = `${n}${page.next_cursor ? " or more" : ""} collector${n === 1 ? "" : "s"} match`;
    } catch (error) {
      matching.textContent = error.message;
    }
  }
  document.getElementById("start-selector").addEventListener("input", () => {
    clearTimeout(countDue);
    countDue = setTimeout(countMatching, 300);
  });
  countMatching();

  const value = (id) => document.getElementById(id).value.trim();
  const number = (id) => Number(value(id));
  function request(dryRun) {
    const batches = { selector: value("start-selector"), initial_batch: number("start-initial"), multiplier: number("start-multiplier"),
      max_batch: number("start-max-batch"), max_errors: number("start-max-errors"), dry_run: dryRun };
    return kind.value === "package"
      ? ["/api/v1/upgrades", { name: value("start-package"), version: value("start-package-version"), download_url: value("start-url"), sha256: value("start-sha256"), ...batches }]
      : ["/api/v1/rollouts", { configuration: value("start-configuration"), version: number("start-version"), ...batches }];
  }
  // Any change after the dry run asks for another.
  form.addEventListener("input", () => { start.disabled = true; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const [path, body] = request(true);
    try {
      const answer = await api(path, { method: "POST", body });
      const targets = answer.targets ?? [];
      fill(plan, `Would reach ${targets.length} collector(s)${answer.targets_next_cursor ? " or more" : ""}.`);
      start.disabled = targets.length === 0;
    } catch (error) {
      fill(plan, `Dry run refused: ${error.message}`);
    }
  });
  start.addEventListener("click", async () => {
    const [path, body] = request(false);
    try {
      const answer = await api(path, { method: "POST", body });
      location.hash = `#/rollouts/${encodeURIComponent(answer.id)}`;
    } catch (error) {
      say(`Start refused: ${error.status} ${error.message}`, "error");
    }
  });
}

export async function renderOne(main, role, id) {
  const path = `/api/v1/rollouts/${encodeURIComponent(id)}`;
  const header = h("div");
  const progress = h("section", { class: "card", id: "progress" });
  const batches = h("section", { class: "card", id: "batches" });
  const targets = h("tbody", { id: "targets" });
  const more = h("button", { type: "button", class: "quiet", id: "targets-more" }, "More targets");
  fill(main, header, progress, batches, h("section", { class: "card" }, h("h2", {}, "Targets"),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Collector", "Outcome", "Batch", "Error"].map((t) => h("th", {}, t)))), targets)),
    h("div", { class: "pager" }, more)));

  function draw(r) {
    const control = (action, text, allowed) => h("button", { type: "button", id: action, class: action === "cancel" ? "danger" : "",
      disabled: !allowed, onclick: async () => {
        try {
          draw(await api(`${path}/${action}`, { method: "POST" }));
          loadTargets(true);
        } catch (error) {
          say(`${text}: ${error.status} ${error.message}`, "error");
        }
      } }, text);
    const live = r.status === "running" || r.status === "paused";
    fill(header, h("p", {}, h("a", { href: "#/rollouts" }, "← Rollouts")),
      h("h1", {}, `Rollout ${shortId(r.id)}`),
      facts([["what", payloadText(r)], ["selector", r.selector || "(all)"], ["status", h("span", { id: "rollout-status" }, r.status)],
        ["reason", r.reason || "—"], ["batches started", String(r.batches_started)], ["started", ago(r.created_at)]]),
      may(role, "operator") ? h("div", { class: "actions" },
        control("pause", "Pause", r.status === "running"), control("resume", "Resume", r.status === "paused"),
        control("cancel", "Cancel", live)) : null);
    const total = Object.values(r.progress ?? {}).reduce((a, b) => a + b, 0);
    const applied = total ? Math.round(((r.progress?.applied ?? 0) / total) * 100) : 0;
    fill(progress, h("h2", {}, "Progress ", h("span", { id: "applied-percent" }, `${applied}% applied`)), progressBar(r.progress));
    sizeBars(progress);
  }

  // Every target's batch, read in pages of 500 (up to BATCH_TARGETS).
  async function loadBatches() {
    const all = [];
    let next = null;
    do {
      const page = await api(`${path}/targets${query({ limit: 500, cursor: next })}`);
      all.push(...page.items);
      next = page.next_cursor;
    } while (next && all.length < BATCH_TARGETS);
    const rows = byBatch(all);
    fill(batches, h("h2", {}, "By batch"),
      next ? h("p", { class: "hint" }, `The first ${all.length} targets.`) : null,
      rows.length ? rows.map(([batch, counts]) => {
        const total = Object.values(counts).reduce((a, b) => a + b, 0);
        const applied = Math.round(((counts.applied ?? 0) / total) * 100);
        return h("div", { class: "batch", "data-batch": batch ?? "none" },
          h("h3", {}, batch === null ? `Not sent yet (${total})` : `Batch ${batch + 1} (${total})`, " ",
            h("span", { class: "batch-applied muted" }, `${applied}% applied`)),
          progressBar(counts));
      }) : h("p", { class: "muted" }, "No targets."));
    sizeBars(batches);
  }
  // After rollout events, read again at most every 2 seconds.
  const batchesLater = throttled(loadBatches, 2000);

  let cursor = null;
  async function loadTargets(reset) {
    if (reset) { cursor = null; fill(targets); }
    const page = await api(`${path}/targets${query({ limit: 50, cursor })}`);
    targets.append(...page.items.map((t) => h("tr", { "data-id": t.collector },
      h("td", {}, h("a", { href: `#/collectors/${encodeURIComponent(t.collector)}` }, shortId(t.collector))),
      h("td", {}, h("span", { class: `swatch outcome-${t.outcome}` }), t.outcome),
      h("td", {}, t.batch ?? "—"), h("td", {}, t.error || (t.missing?.length ? `missing ${t.missing.join(", ")}` : "")))));
    cursor = page.next_cursor;
    more.disabled = !cursor;
  }
  more.addEventListener("click", () => loadTargets(false));
  const targetsLater = throttled(() => loadTargets(true), 500);

  const stream = openEvents("?rollouts=true", (type, data) => {
    if (type === "rollout" && data.id === id) {
      draw(data);
      targetsLater();
      batchesLater();
    }
  });
  await stream.ready;
  draw(await api(path));
  await loadTargets(true);
  await loadBatches();
  return () => { stream.close(); batchesLater.cancel(); targetsLater.cancel(); };
}
