// The charts, drawn as SVG from API data: the fleet's counts over time (stacked areas) and one
// collector's state timeline. Colours come from the style sheet's state classes, never inline.
import { clock, h, svg } from "./dom.js";
import { STATES, label } from "./states.js";

/** Charts are drawn at the width of their box (in CSS pixels), so their text keeps its size. */
const drawnWidth = (width) => Math.max(300, Math.round(width || 960));

/** The coloured legend of the seven states. */
export function legend(states = STATES) {
  return h("ul", { class: "legend" }, states.map((s) => h("li", {}, h("span", { class: `swatch state-${s}` }), label(s))));
}

/**
 * The counts per state over time, stacked, from `/api/v1/summary/history`; with a legend and the
 * same numbers as a table for keyboards and screen readers.
 */
export function countsChart(history, width) {
  const WIDTH = drawnWidth(width);
  const points = history.points ?? [];
  const height = 170, left = 40, bottom = 22, top = 6;
  const plotW = WIDTH - left - 8, plotH = height - bottom - top;
  const totals = points.map((p) => STATES.reduce((n, s) => n + (p.by_state?.[s] ?? 0), 0));
  const most = Math.max(1, ...totals);
  const x = (k) => left + (points.length < 2 ? 0 : (k / (points.length - 1)) * plotW);
  const y = (n) => top + plotH - (n / most) * plotH;
  const below = points.map(() => 0);
  const areas = [];
  for (const s of STATES) {
    const lower = [...below];
    points.forEach((p, k) => { below[k] += p.by_state?.[s] ?? 0; });
    if (below.every((n, k) => n === lower[k])) continue;
    const upperLine = points.map((_, k) => `${x(k).toFixed(1)},${y(below[k]).toFixed(1)}`);
    const lowerLine = points.map((_, k) => `${x(k).toFixed(1)},${y(lower[k]).toFixed(1)}`).reverse();
    areas.push(svg("polygon", { class: `s-${s}`, "data-state": s, points: [...upperLine, ...lowerLine].join(" ") },
      svg("title", {}, label(s))));
  }
  const ticks = points.length ? [0, Math.floor((points.length - 1) / 2), points.length - 1] : [];
  const last = points[points.length - 1];
  const summary = last
    ? `Collectors per state over the last ${history.hours} hours; now ${STATES.map((s) => `${label(s)} ${last.by_state?.[s] ?? 0}`).join(", ")}.`
    : "No data.";
  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": summary, class: "chart" },
    svg("line", { class: "axis", x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH }),
    svg("text", { class: "tick", x: left - 6, y: top + 10, "text-anchor": "end" }, String(most)),
    svg("text", { class: "tick", x: left - 6, y: top + plotH, "text-anchor": "end" }, "0"),
    areas,
    ticks.map((k, i) => svg("text", { class: "tick", x: x(k), y: height - 6,
      "text-anchor": i === 0 ? "start" : i === ticks.length - 1 ? "end" : "middle" }, clock(points[k].at))));
  const table = h("table", { id: "counts-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "At"), STATES.map((s) => h("th", {}, label(s))))),
    h("tbody", {}, points.map((p) => h("tr", {}, h("td", {}, h("time", { datetime: p.at }, clock(p.at))),
      STATES.map((s) => h("td", { "data-state": s }, p.by_state?.[s] ?? 0))))));
  return [chart, legend(),
    h("details", {}, h("summary", {}, "The same counts as a table"), h("div", { class: "table-wrap" }, table))];
}

/**
 * One collector's states over time from its transitions (oldest first), until now: a bar of
 * segments with time labels; each segment's title says its state and when.
 */
export function timeline(transitions, width, now = Date.now()) {
  if (!transitions.length) return h("p", { class: "muted" }, "No transitions yet.");
  const WIDTH = drawnWidth(width);
  const start = Date.parse(transitions[0].at);
  const span = Math.max(1, now - start);
  const height = 44, barH = 24;
  const short = span < 10 * 60 * 1000;
  const x = (t) => ((t - start) / span) * WIDTH;
  const segments = transitions.map((t, i) => {
    const from = Date.parse(t.at);
    const to = i + 1 < transitions.length ? Date.parse(transitions[i + 1].at) : now;
    return { state: t.to, from, to };
  });
  const rects = segments.map((s) => svg("rect", { class: `s-${s.state}`, "data-state": s.state,
    x: x(s.from).toFixed(2), y: 0, height: barH, width: Math.max(0.5, x(s.to) - x(s.from)).toFixed(2) },
  svg("title", {}, `${label(s.state)} from ${new Date(s.from).toISOString()} to ${new Date(s.to).toISOString()}`)));
  const marks = [[start, "start"], [start + span / 2, "middle"], [now, "end"]];
  const anchor = { start: "start", middle: "middle", end: "end" };
  const described = segments.map((s) => `${label(s.state)} from ${clock(new Date(s.from).toISOString(), short)}`).join(", ");
  const shown = [...new Set(segments.map((s) => s.state))];
  return [svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", class: "chart timeline", "aria-label": `States over time: ${described}; until now.` },
    rects,
    marks.map(([t, where]) => svg("text", { class: "tick", x: x(t), y: height - 4, "text-anchor": anchor[where] },
      clock(new Date(t).toISOString(), short)))),
  legend(STATES.filter((s) => shown.includes(s)))];
}
