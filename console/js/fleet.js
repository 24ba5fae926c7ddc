// The fleet page: counts per state, their chart over the last hours, the collectors table with filters, sorting and keyset pages,
// and rows that follow the event stream.
import { api, query } from "./api.js";
import { ago, fill, h, say, shortId, throttled } from "./dom.js";
import { countsChart } from "./charts.js";
import { openEvents } from "./sse.js";
import { STATES, badge, label } from "./states.js";

/** How a person tells collectors apart: a display-name label wins, then the instance or host. */
export function displayName(c) {
  const attr = (key) => c.description?.identifying?.[key] ?? c.description?.non_identifying?.[key];
  const chosen = c.labels?.["display-name"] ?? attr("service.instance.name");
  if (chosen) return String(chosen);
  return `${c.name ?? "collector"} ${shortId(c.id)}`;
}

export const hostOf = (c) =>
  String(c.description?.non_identifying?.["host.name"] ?? c.description?.identifying?.["host.name"] ?? "—");

/**
 * What a transition does to the page of collectors shown: "update" its row in place, "reload"
 * the page (the collector may enter, leave or move among the rows), or "none" (it cannot be
 * among them). `view`: the state filter, the sort, whether its row is shown, whether this is the
 * first page and whether the page is full. The counts are read again after any transition.
 */
export function effectOn(view, t) {
  const { state, sort, shown, firstPage, full } = view;
  // Orders a transition moves a collector in.
  const moves = /^-?(state|state_since|last_seen)$/.test(sort);
  if (shown) return (state && t.to !== state) || moves ? "reload" : "update";
  if (!firstPage || (state && t.to !== state)) return "none";
  // A new collector, or one that now matches the state filter, may belong among the rows.
  if (t.from == null || (state && t.from !== state)) return "reload";
  // A page that is not full holds every collector the filters let through already.
  return moves && full ? "reload" : "none";
}

const COLUMNS = [
  ["state", "State", "state"], ["name", "Name", "name"], ["host", "Host", null],
  ["version", "Version", null], ["labels", "Labels", null], ["last_seen", "Last seen", "last_seen"],
  ["since", "Since", "state_since"],
];

export async function render(main) {
  const filters = { state: "", selector: "", q: "", sort: "name", limit: 25 };
  let cursors = [null]; // the cursor of each page shown so far; the last is the current one

  const counts = h("div", { class: "counts", id: "counts" });
  const total = h("span", { id: "total", class: "muted" });
  const chart = h("div", { id: "counts-chart" }, h("p", { class: "muted" }, "Loading…"));
  const stateSelect = h("select", { id: "filter-state", name: "state" },
    h("option", { value: "" }, "any state"), STATES.map((s) => h("option", { value: s }, label(s))));
  const selector = h("input", { id: "filter-selector", name: "selector", placeholder: "env=prod,tier!=gold" });
  const text = h("input", { id: "filter-text", name: "q", type: "search", placeholder: "name, host, version, id" });
  const perPage = h("input", { id: "filter-limit", name: "limit", type: "number", min: 1, max: 500, value: filters.limit });
  const head = h("tr");
  const body = h("tbody", { id: "collectors" });
  const previous = h("button", { type: "button", class: "quiet", id: "page-previous", onclick: () => page(-1) }, "Previous page");
  const next = h("button", { type: "button", class: "quiet", id: "page-next", onclick: () => page(1) }, "Next page");
  let nextCursor = null;

  const form = h("form", {
    class: "filters card", id: "filters",
    onsubmit: (event) => {
      event.preventDefault();
      Object.assign(filters, {
        state: stateSelect.value, selector: selector.value.trim(), q: text.value.trim(), limit: perPage.value || 25,
      });
      cursors = [null];
      load();
    },
  },
    h("div", {}, h("label", { for: "filter-state" }, "State"), stateSelect),
    h("div", {}, h("label", { for: "filter-selector" }, "Label selector"), selector),
    h("div", {}, h("label", { for: "filter-text" }, "Text"), text),
    h("div", {}, h("label", { for: "filter-limit" }, "Per page"), perPage),
    h("button", { type: "submit", id: "filter-apply" }, "Apply"));

  fill(main,
    h("h1", {}, "Fleet ", total),
    counts,
    h("section", { class: "card", "aria-labelledby": "chart-title" },
      h("h2", { id: "chart-title" }, "The last 6 hours"), chart),
    form,
    h("div", { class: "table-wrap" }, h("table", { id: "collectors-table" }, h("thead", {}, head), body)),
    h("div", { class: "pager" }, previous, next));

  function drawHead() {
    fill(head, COLUMNS.map(([key, title, sortKey]) => {
      if (!sortKey) return h("th", { class: key === "labels" || key === "host" ? "hide-narrow" : "" }, title);
      const current = filters.sort.replace(/^-/, "") === sortKey;
      const descending = filters.sort.startsWith("-");
      const sortLabel = current ? (descending ? "descending" : "ascending") : "none";
      return h("th", { "aria-sort": sortLabel },
        h("button", { type: "button", "data-sort": sortKey, onclick: () => {
          filters.sort = current && !descending ? `-${sortKey}` : sortKey;
          cursors = [null];
          load();
        } }, title, current ? (descending ? " ▼" : " ▲") : ""));
    }));
  }

  function row(c) {
    return h("tr", { "data-id": c.id },
      h("td", { class: "state-cell" }, badge(c.state)),
      h("td", {}, h("a", { href: `#/collectors/${encodeURIComponent(c.id)}` }, displayName(c))),
      h("td", { class: "hide-narrow" }, hostOf(c)),
      h("td", {}, c.version ?? "—"),
      h("td", { class: "hide-narrow" }, Object.entries(c.labels ?? {}).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
      h("td", { class: "seen-cell" }, ago(c.last_seen)),
      h("td", { class: "since-cell" }, ago(c.state_since)));
  }

  async function loadSummary() {
    const summary = await api("/api/v1/summary");
    total.textContent = `${summary.total} collectors`;
    fill(counts, STATES.map((s) => h("button", {
      type: "button", class: `count state-${s}`, "data-state": s, "aria-pressed": String(filters.state === s),
      onclick: () => {
        filters.state = filters.state === s ? "" : s;
        stateSelect.value = filters.state;
        cursors = [null];
        load();
      },
    }, h("strong", { class: "count-value" }, summary.by_state?.[s] ?? 0), label(s))));
  }

  let history = null;
  const drawChart = () => { if (history) fill(chart, countsChart(history, chart.clientWidth)); };
  async function loadChart() {
    try {
      history = await api("/api/v1/summary/history?hours=6");
      drawChart();
    } catch (error) {
      fill(chart, h("p", { class: "muted" }, `The chart cannot be read: ${error.message}`));
    }
  }
  // The chart is read again after changes too, but at most every 5 seconds: it changes slowly.
  const chartLater = throttled(loadChart, 5000);

  async function load() {
    drawHead();
    try {
      const cursor = cursors[cursors.length - 1];
      const page = await api(`/api/v1/collectors${query({ ...filters, cursor })}`);
      nextCursor = page.next_cursor;
      fill(body, page.items.length ? page.items.map(row) : h("tr", {}, h("td", { colspan: 7 }, "No collectors match.")));
      previous.disabled = cursors.length < 2;
      next.disabled = !nextCursor;
      await loadSummary();
    } catch (error) {
      say(`Could not list collectors: ${error.message}`, "error");
    }
  }

  function page(step) {
    if (step > 0 && nextCursor) cursors.push(nextCursor);
    if (step < 0 && cursors.length > 1) cursors.pop();
    load();
  }

  // Counts (and the page, when a change may add, drop or move a row: effectOn) are read again
  // after changes, at most twice a second however many arrive.
  let reloadPage = false;
  const refreshLater = throttled(() => {
    const whole = reloadPage;
    reloadPage = false;
    return (whole ? load() : loadSummary()).catch((error) => {
      reloadPage ||= whole;
      throw error;
    });
  }, 500);
  const stream = openEvents("", (type, data) => {
    if (type !== "transition") return;
    const tr = body.querySelector(`tr[data-id="${CSS.escape(data.collector_id)}"]`);
    const effect = effectOn({
      state: filters.state, sort: filters.sort, shown: Boolean(tr), firstPage: cursors.length === 1,
      full: body.querySelectorAll("tr[data-id]").length >= Number(filters.limit),
    }, data);
    if (effect === "update") {
      fill(tr.querySelector(".state-cell"), badge(data.to));
      fill(tr.querySelector(".since-cell"), ago(data.at));
      fill(tr.querySelector(".seen-cell"), ago(data.at));
      tr.classList.remove("changed");
      void tr.offsetWidth;
      tr.classList.add("changed");
    } else if (effect === "reload") {
      reloadPage = true;
    }
    refreshLater();
    chartLater();
  });

  // The stream first: a change between reading the table and opening the stream would be lost.
  await stream.ready;
  await load();
  await loadChart();
  // Drawn at its box's width (its text keeps its size): drawn again when the window changes.
  window.addEventListener("resize", drawChart);
  return () => {
    stream.close();
    refreshLater.cancel();
    chartLater.cancel();
    window.removeEventListener("resize", drawChart);
  };
}
