// Building the page from API data: text only ever goes in as textContent, never as HTML.

/** An element with attributes and children (strings become text nodes). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces every child of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** "3 min ago" for an RFC 3339 time, the exact time in the title. */
export function ago(time) {
  if (!time) return h("span", {}, "—");
  const seconds = Math.max(0, (Date.now() - Date.parse(time)) / 1000);
  const [n, unit] =
    seconds < 60 ? [seconds, "s"] : seconds < 3600 ? [seconds / 60, "min"] :
    seconds < 86400 ? [seconds / 3600, "h"] : [seconds / 86400, "d"];
  return h("time", { datetime: time, title: time }, `${Math.floor(n)} ${unit} ago`);
}

/** A message in the page's status line (errors stay until the next one). */
export function say(text, kind = "info") {
  const line = document.getElementById("status");
  if (!line) return;
  line.textContent = text;
  line.dataset.kind = kind;
}

/** A definition list of [term, value] pairs. */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value ?? "—")]));
}

/** The end of an id: UUIDv7 and ULID ids begin with their time, so the end tells them apart. */
export const shortId = (id) => String(id).slice(-8);

/** An SVG element with attributes and children; `class` names it for the style sheet's colours. */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

/** "14:05" (or "Dec 2 14:05" for a time on another day) in the browser's time zone. */
export function clock(time, seconds = false) {
  const at = new Date(time);
  const hm = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined });
  return at.toDateString() === new Date().toDateString()
    ? hm : `${at.toLocaleDateString([], { month: "short", day: "numeric" })} ${hm}`;
}

/** The longest wait between two tries of a read that keeps failing. */
const MAX_RETRY_MS = 10000;

/**
 * `fn` called at most once every `ms` however often the result is called, the first time no
 * sooner than `ms` after this (its caller has just read what `fn` reads); `cancel` stops it.
 * When the promise `fn` returns fails (the server busy or away for a moment), `fn` is called
 * again, twice as long after each failure (up to 10 s): a live view must not stay stale until
 * the next change happens to ask for it.
 */
export function throttled(fn, ms) {
  let last = Date.now();
  let due = null;
  let wait = ms;
  let stopped = false;
  const run = () => {
    due = null;
    last = Date.now();
    Promise.resolve().then(fn).then(
      () => { wait = ms; },
      () => {
        wait = Math.min(wait * 2, Math.max(ms, MAX_RETRY_MS));
        later();
      });
  };
  const later = () => {
    if (stopped) return;
    due ??= setTimeout(run, Math.max(0, last + wait - Date.now()));
  };
  later.cancel = () => {
    stopped = true;
    clearTimeout(due);
  };
  return later;
}
