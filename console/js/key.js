// The API key: asked for when the API says 401 or 403, kept in sessionStorage (gone when the
// tab closes), sent as `Authorization: Bearer`.
import { h, fill } from "./dom.js";

const STORAGE = "opampd.key";

export const currentKey = () => sessionStorage.getItem(STORAGE);

export function forgetKey() {
  sessionStorage.removeItem(STORAGE);
}

let asking = null;

/** Shows the key form and resolves once a key was entered (one form for every caller). */
export function askForKey(why) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  asking = new Promise((resolve) => {
    const input = h("input", { type: "password", id: "key-input", name: "key", autocomplete: "off", required: true });
    const form = h("form", {
      id: "key-form",
      onsubmit: (event) => {
        event.preventDefault();
        sessionStorage.setItem(STORAGE, input.value.trim());
        dialog.hidden = true;
        asking = null;
        resolve();
      },
    },
      h("h2", {}, "API key"),
      h("p", {}, why),
      h("label", { for: "key-input" }, "Key"),
      input,
      h("p", { class: "hint" }, "Kept in this tab's session storage only. Without configured keys, the server's admin key is in its data directory (api-admin.key)."),
      h("button", { type: "submit", id: "key-submit" }, "Use this key"));
    fill(dialog, form);
    dialog.hidden = false;
    input.focus();
  });
  return asking;
}
