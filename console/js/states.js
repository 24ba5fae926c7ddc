// The seven collector states, in the order the console shows them; their colours are in
// console.css (--state-<name>), defined once.
import { h } from "./dom.js";

export const STATES = [
  "connected", "configuring", "upgrading", "pending", "error", "incompatible", "disconnected",
];

export const label = (state) => state ? state[0].toUpperCase() + state.slice(1) : "Unknown";

/** The coloured badge of a state, the same everywhere. */
export function badge(state) {
  return h("span", { class: `state state-${state ?? "unknown"}`, "data-state": state ?? "" }, label(state));
}
