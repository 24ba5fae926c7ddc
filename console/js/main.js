// The console's entry: picks the page from the address's hash and shows who is signed in.
import { fill, h, say } from "./dom.js";
import { ApiError, forgetRole, whoami } from "./api.js";
import { askForKey, currentKey, forgetKey } from "./key.js";
import * as fleet from "./fleet.js";
import * as collector from "./collector.js";
import * as rollouts from "./rollouts.js";
import * as configurations from "./configurations.js";
import * as diagram from "./diagram.js";

const ROUTES = [
  [/^#?\/?$/, fleet.render, "fleet"],
  [/^#\/collectors\/([^/]+)$/, collector.render, "fleet"],
  [/^#\/rollouts\/?$/, rollouts.renderList, "rollouts"],
  [/^#\/rollouts\/([^/]+)$/, rollouts.renderOne, "rollouts"],
  [/^#\/configurations\/?$/, configurations.renderList, "configurations"],
  [/^#\/configurations\/([^/]+)$/, configurations.render, "configurations"],
  [/^#\/states\/?$/, diagram.render, "states"],
];

let leave = null;
let shown = 0;

async function show() {
  leave?.();
  leave = null;
  const generation = ++shown;
  const main = document.getElementById("main");
  const hash = location.hash;
  const route = ROUTES.find(([pattern]) => pattern.test(hash));
  say("");
  if (!route) {
    fill(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the fleet")));
    return;
  }
  const [pattern, render, page] = route;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const params = hash.match(pattern).slice(1).map(decodeURIComponent);
  try {
    const role = await whoami();
    const roleLine = document.getElementById("role");
    roleLine.textContent = `role: ${role}`;
    roleLine.dataset.role = role;
    labelKeyButton();
    fill(main);
    const cleanup = await render(main, role, ...params);
    // Left while it loaded: its stream is closed at once.
    if (generation === shown) leave = cleanup;
    else cleanup?.();
  } catch (error) {
    say(error instanceof ApiError ? `${error.status}: ${error.message}` : String(error), "error");
  }
}

// Without configured keys the API lets loopback read without one, so a key for writes is
// entered here rather than when a 401 asks for it.
const keyButton = document.getElementById("key-button");
function labelKeyButton() {
  keyButton.textContent = currentKey() ? "Forget key" : "Enter key";
}
keyButton.addEventListener("click", async () => {
  if (currentKey()) forgetKey();
  else await askForKey("A key lets you act as its role (operator or admin).");
  forgetRole();
  labelKeyButton();
  show();
});
labelKeyButton();
window.addEventListener("hashchange", show);
show();
