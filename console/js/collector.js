// One collector: its facts, labels (editable by operators), state timeline, transition history, and the restart
// and forget buttons for the roles that may use them.
import { api, may, query } from "./api.js";
import { ago, facts, fill, h, say, throttled } from "./dom.js";
import { displayName, hostOf } from "./fleet.js";
import { timeline } from "./charts.js";
import { openEvents } from "./sse.js";
import { badge } from "./states.js";

/** The health tree, failing components marked (and named first to a screen reader). */
function healthTree(name, health) {
  const failing = !health.healthy;
  return h("li", { class: failing ? "failing" : "" },
    h("span", {}, `${failing ? "✗ failing: " : "✓ "}${name}`),
    health.status ? ` (${health.status})` : "",
    health.last_error ? h("div", { class: "muted" }, health.last_error) : null,
    Object.keys(health.components ?? {}).length
      ? h("ul", {}, Object.entries(health.components).map(([n, c]) => healthTree(n, c)))
      : null);
}

function attributes(map) {
  const entries = Object.entries(map ?? {});
  return entries.length ? facts(entries.map(([k, v]) => [k, String(v)])) : h("p", { class: "muted" }, "none");
}

export async function render(main, role, id) {
  const path = `/api/v1/collectors/${encodeURIComponent(id)}`;
  const header = h("div");
  const labelsCard = h("section", { class: "card", id: "labels" });
  const factsCard = h("div", { class: "grid2" });
  const history = h("tbody", { id: "transitions" });
  const more = h("button", { type: "button", class: "quiet", id: "history-more" }, "Older transitions");
  const timelineBox = h("div", { id: "timeline" });
  fill(main, header,
    h("section", { class: "card" }, h("h2", {}, "State timeline"), timelineBox),
    labelsCard, factsCard,
    h("section", { class: "card" }, h("h2", {}, "Transitions"),
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["At", "From", "To", "Reason", "Message"].map((t) => h("th", {}, t)))), history)),
      h("div", { class: "pager" }, more)));

  async function act(what, method, suffix, body) {
    try {
      await api(`${path}${suffix}`, { method, body });
      say(`${what}: done.`);
      return true;
    } catch (error) {
      say(`${what}: ${error.status} ${error.message}`, "error");
      return false;
    }
  }

  function drawLabels(labels) {
    const rows = Object.entries(labels).map(([k, v]) => h("tr", { "data-label": k },
      h("td", {}, k), h("td", {}, v),
      may(role, "operator")
        ? h("td", {}, h("button", { type: "button", class: "quiet", "aria-label": `Remove label ${k}`,
            onclick: async () => { if (await act("Remove label", "PATCH", "/labels", { [k]: null })) load(); } }, "Remove"))
        : null));
    const key = h("input", { id: "label-key", name: "key", required: true, placeholder: "env" });
    const value = h("input", { id: "label-value", name: "value", required: true, placeholder: "prod" });
    fill(labelsCard, h("h2", {}, "Labels"),
      rows.length ? h("table", {}, h("tbody", {}, rows)) : h("p", { class: "muted" }, "No labels."),
      may(role, "operator")
        ? h("form", { class: "filters", id: "label-form", onsubmit: async (event) => {
            event.preventDefault();
            if (await act("Set label", "PATCH", "/labels", { [key.value.trim()]: value.value.trim() })) load();
          } },
          h("div", {}, h("label", { for: "label-key" }, "Key"), key),
          h("div", {}, h("label", { for: "label-value" }, "Value"), value),
          h("button", { type: "submit", id: "label-save" }, "Set label"))
        : h("p", { class: "hint" }, "Editing labels needs an operator key."));
  }

  async function load() {
    const c = await api(`${path}${query({ include: "effective_config" })}`);
    const buttons = [];
    if (may(role, "operator")) {
      buttons.push(h("button", { type: "button", id: "restart", disabled: !c.connected,
        onclick: () => act("Restart", "POST", "/restart") }, "Restart"));
    }
    if (may(role, "admin")) {
      buttons.push(h("button", { type: "button", class: "danger", id: "forget", disabled: c.state !== "disconnected",
        title: "Only a disconnected collector can be forgotten",
        onclick: async () => {
          if (confirm(`Forget ${displayName(c)} and its history?`) && await act("Forget", "DELETE", "")) location.hash = "#/";
        } }, "Forget"));
    }
    fill(header,
      h("p", {}, h("a", { href: "#/" }, "← Fleet")),
      h("h1", {}, displayName(c), " ", h("span", { id: "collector-state" }, badge(c.state))),
      h("p", {}, c.state_reason ?? "", c.state_message ? ` — ${c.state_message}` : "", " · since ", ago(c.state_since)),
      h("div", { class: "actions" }, buttons));
    drawLabels(c.labels ?? {});
    const effective = c.effective_config;
    fill(factsCard,
      h("section", { class: "card" }, h("h2", {}, "Facts"), facts([
        ["id", c.id], ["name", c.name], ["host", hostOf(c)], ["version", c.version],
        ["transport", c.transport], ["connected since", ago(c.connected_since)], ["last seen", ago(c.last_seen)],
        ["facets", (c.facets ?? []).join(", ") || "none"],
      ])),
      h("section", { class: "card" }, h("h2", {}, "Health"),
        c.health ? h("ul", { class: "health" }, healthTree("collector", c.health)) : h("p", { class: "muted" }, "Not reported.")),
      h("section", { class: "card" }, h("h2", {}, "Description"),
        h("h3", {}, "Identifying"), attributes(c.description?.identifying),
        h("h3", {}, "Non-identifying"), attributes(c.description?.non_identifying)),
      h("section", { class: "card" }, h("h2", {}, "Capabilities"),
        h("ul", {}, (c.capabilities ?? []).map((n) => h("li", {}, n))),
        (c.custom_capabilities ?? []).length ? h("p", {}, "Custom: ", c.custom_capabilities.join(", ")) : null),
      h("section", { class: "card" }, h("h2", {}, "Remote configuration"),
        c.remote_config ? facts([["status", c.remote_config.status], ["hash", c.remote_config.hash],
          ["error", c.remote_config.error_message || "none"]]) : h("p", { class: "muted" }, "Not reported.")),
      h("section", { class: "card" }, h("h2", {}, "Effective configuration"),
        effective ? [h("p", { class: "muted" }, `hash ${effective.hash}`),
          Object.entries(effective.files ?? {}).map(([name, file]) => [h("h3", {}, name), h("pre", {}, file.body ?? `(${file.content_type})`)])]
          : h("p", { class: "muted" }, "Not reported.")),
      h("section", { class: "card" }, h("h2", {}, "Packages"),
        c.packages ? [c.packages.error_message ? h("p", { class: "muted" }, c.packages.error_message) : null,
          h("ul", {}, Object.entries(c.packages.packages ?? {}).map(([n, p]) => h("li", {}, `${n} ${p.version ?? ""} ${p.status ?? ""}`)))]
          : h("p", { class: "muted" }, "Not reported.")),
      h("section", { class: "card" }, h("h2", {}, "Available components"),
        c.available_components ? h("pre", {}, JSON.stringify(c.available_components.components ?? c.available_components, null, 2))
          : h("p", { class: "muted" }, "Not reported.")));
  }

  let historyCursor = null;
  async function loadHistory(reset) {
    if (reset) { historyCursor = null; fill(history); }
    const page = await api(`${path}/transitions${query({ limit: 20, cursor: historyCursor })}`);
    history.append(...page.items.map((t) => h("tr", {},
      h("td", {}, ago(t.at)), h("td", {}, badge(t.from)), h("td", {}, badge(t.to)),
      h("td", {}, t.reason ?? ""), h("td", {}, t.message ?? ""))));
    historyCursor = page.next_cursor;
    more.disabled = !historyCursor;
  }
  more.addEventListener("click", () => loadHistory(false));

  // The newest 500 transitions (one page at most), oldest first.
  async function loadTimeline() {
    const page = await api(`${path}/transitions${query({ limit: 500 })}`);
    fill(timelineBox, timeline([...page.items].reverse(), timelineBox.clientWidth),
      page.next_cursor ? h("p", { class: "hint" }, "The last 500 transitions.") : null);
  }

  // Read again after the collector's transitions, at most twice a second.
  const reloadLater = throttled(() => Promise.all([load(), loadHistory(true), loadTimeline()]), 500);
  const stream = openEvents("", (type, data) => {
    if (type === "transition" && data.collector_id === id) reloadLater();
  });
  await stream.ready;
  await load();
  await loadHistory(true);
  await loadTimeline();
  return () => { stream.close(); reloadLater.cancel(); };
}
