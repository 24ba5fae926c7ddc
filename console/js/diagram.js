// The state diagram page: the seven states and their edges drawn from /api/v1/state-machine,
// each state with its count from /api/v1/summary, kept live from the event stream.
import { api } from "./api.js";
import { fill, h, svg, throttled } from "./dom.js";
import { openEvents } from "./sse.js";
import { label } from "./states.js";

const W = 960, H = 470;
/** Half the width and height of a state's box. */
const HW = 64, HH = 30;

/** Where each state sits: on a circle, in the order the API lists them, the start beside the first. */
function layout(states) {
  const at = new Map();
  states.forEach((s, i) => {
    const angle = -Math.PI / 2 + (i / states.length) * 2 * Math.PI;
    at.set(s, { x: W / 2 + Math.cos(angle) * 330, y: H / 2 + 8 + Math.sin(angle) * 190 });
  });
  const first = at.get(states[0]);
  at.set(null, { x: first.x - 150, y: first.y });
  return at;
}

/** A curve from `a` to `b`, bent to its left so that the two directions of a pair stay apart. */
function curve(a, b, startGap, endGap) {
  // startGap > 0: `a` is a box, the curve starts that far outside it; < 0: a dot of that radius.
  const dx = b.x - a.x, dy = b.y - a.y, length = Math.hypot(dx, dy) || 1;
  const [ux, uy] = [dx / length, dy / length];
  const bend = 0.12 * length;
  const control = { x: (a.x + b.x) / 2 + uy * bend, y: (a.y + b.y) / 2 - ux * bend };
  // Where the line towards `to` leaves a box (or a dot of radius `gap`) centred on `from`.
  const towards = (from, to, box, gap) => {
    const ex = to.x - from.x, ey = to.y - from.y, n = Math.hypot(ex, ey) || 1;
    const t = box ? Math.min(HW / Math.abs(ex / n || 1e-9), HH / Math.abs(ey / n || 1e-9)) + gap : gap;
    return { x: from.x + (ex / n) * t, y: from.y + (ey / n) * t };
  };
  const start = towards(a, control, startGap > 0, Math.abs(startGap)), end = towards(b, control, true, endGap);
  return `M${start.x.toFixed(1)},${start.y.toFixed(1)} Q${control.x.toFixed(1)},${control.y.toFixed(1)} ${end.x.toFixed(1)},${end.y.toFixed(1)}`;
}

export async function render(main) {
  const machine = await api("/api/v1/state-machine");
  const at = layout(machine.states);
  const counts = new Map();
  const edges = [
    ...machine.edges.map((e) => ({ ...e, extension: false })),
    ...machine.extensions.map((e) => ({ ...e, extension: true })),
  ];
  const title = (e) => `${e.from ? label(e.from) : "Start"} → ${label(e.to)}: ${e.reasons.join(", ")}${e.extension ? ` (extension: ${e.why})` : ""}`;
  const drawing = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart diagram", role: "img",
    "aria-label": "The collector state diagram; the list below says the same." },
  svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))),
  edges.map((e) => svg("path", { class: `edge${e.extension ? " extension" : ""}`, "data-from": e.from ?? "", "data-to": e.to,
    d: curve(at.get(e.from), at.get(e.to), e.from ? 1 : -8, 2), "marker-end": "url(#arrow)" }, svg("title", {}, title(e)))),
  svg("circle", { class: "start", cx: at.get(null).x, cy: at.get(null).y, r: 8 }, svg("title", {}, "Start: a collector's first contact")),
  machine.states.map((s) => {
    const count = svg("text", { class: "node-count", x: at.get(s).x, y: at.get(s).y + 20, "text-anchor": "middle" }, "…");
    counts.set(s, count);
    return svg("g", { class: "node", "data-state": s },
      svg("rect", { class: `s-${s}`, x: at.get(s).x - HW, y: at.get(s).y - HH, width: 2 * HW, height: 2 * HH, rx: 12 }),
      svg("text", { class: "node-name", x: at.get(s).x, y: at.get(s).y - 6, "text-anchor": "middle" }, label(s)),
      count);
  }));
  const listed = new Map();
  const list = h("ul", { id: "states-list" }, machine.states.map((s) => {
    const n = h("span", { class: "list-count" }, "…");
    listed.set(s, n);
    const out = edges.filter((e) => e.from === s).map((e) => label(e.to));
    return h("li", { "data-state": s }, h("strong", {}, label(s)), ": ", n, " collectors; goes to ", out.join(", ") || "nothing", ".");
  }));
  fill(main, h("h1", {}, "States"),
    h("p", { class: "muted" }, "Each state with how many collectors are in it now; an arrow is an allowed transition (dashed: one the product adds to the diagram). Hover an arrow for its reasons."),
    h("div", { class: "card", id: "diagram" }, drawing),
    h("section", { class: "card" }, h("h2", {}, "As a list"), list));

  async function loadCounts() {
    const summary = await api("/api/v1/summary");
    for (const s of machine.states) {
      const n = String(summary.by_state?.[s] ?? 0);
      counts.get(s).textContent = n;
      listed.get(s).textContent = n;
    }
  }

  // Read again after transitions, at most twice a second.
  const countsLater = throttled(loadCounts, 500);
  const stream = openEvents("", (type) => {
    if (type === "transition") countsLater();
  });
  await stream.ready;
  await loadCounts();
  return () => { stream.close(); countsLater.cancel(); };
}
