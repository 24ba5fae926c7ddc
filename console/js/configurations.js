// Configurations: the list, one configuration's versions, a version's files, and the diff
// between two chosen versions side by side.
import { api } from "./api.js";
import { ago, fill, h, say } from "./dom.js";
import { diffTable } from "./diff.js";

const path = (name) => `/api/v1/configurations/${encodeURIComponent(name)}`;

export async function renderList(main) {
  const { items } = await api("/api/v1/configurations");
  fill(main, h("h1", {}, "Configurations"),
    items.length
      ? h("div", { class: "table-wrap" }, h("table", { id: "configurations" },
        h("thead", {}, h("tr", {}, ["Name", "Latest version", "Components", "Created"].map((t) => h("th", {}, t)))),
        h("tbody", {}, items.map((c) => h("tr", { "data-name": c.name },
          h("td", {}, h("a", { href: `#/configurations/${encodeURIComponent(c.name)}` }, c.name)),
          h("td", {}, `v${c.version}`), h("td", {}, c.components.join(", ")), h("td", {}, ago(c.created_at)))))))
      : h("p", { class: "muted" }, "No configurations yet: POST /api/v1/configurations stores one."));
}

export async function render(main, _role, name) {
  const history = await api(path(name));
  const versions = history.versions;
  const files = h("section", { class: "card", id: "version-files" });
  const diff = h("div", { id: "diff" });
  const choice = (id, text, selected) => h("div", {}, h("label", { for: id }, text),
    h("select", { id }, versions.map((v) => h("option", { value: v.version, selected: v.version === selected }, `v${v.version}`))));
  const latest = versions[versions.length - 1]?.version ?? 1;
  const form = h("form", { class: "filters", id: "diff-form", onsubmit: (event) => { event.preventDefault(); compare(); } },
    choice("diff-from", "From", Math.max(1, latest - 1)), choice("diff-to", "To", latest),
    h("button", { type: "submit", id: "diff-compare" }, "Compare"));

  fill(main, h("p", {}, h("a", { href: "#/configurations" }, "← Configurations")),
    h("h1", {}, name),
    h("section", { class: "card" }, h("h2", {}, "Versions"), h("div", { class: "table-wrap" }, h("table", { id: "versions" },
      h("thead", {}, h("tr", {}, ["Version", "Hash", "Components", "Created", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, [...versions].reverse().map((v) => h("tr", { "data-version": v.version },
        h("td", {}, `v${v.version}`), h("td", {}, h("code", { title: v.hash }, v.hash.slice(0, 12))),
        h("td", {}, v.components.join(", ")), h("td", {}, ago(v.created_at)),
        h("td", {}, h("button", { type: "button", class: "quiet", "data-show": v.version,
          onclick: () => show(v.version) }, "Files")))))))),
    h("section", { class: "card" }, h("h2", {}, "Compare two versions"), form, diff),
    files);

  async function show(version) {
    const v = await api(`${path(name)}/versions/${version}`);
    fill(files, h("h2", {}, `Files of v${v.version}`),
      Object.entries(v.files ?? {}).flatMap(([file, body]) => [h("h3", {}, file), h("pre", { "data-file": file }, body)]));
  }

  async function compare() {
    const from = document.getElementById("diff-from").value;
    const to = document.getElementById("diff-to").value;
    try {
      const d = await api(`${path(name)}/diff?from=${from}&to=${to}`);
      const changed = d.files.filter((f) => f.status !== "unchanged");
      fill(diff,
        d.components_added.length || d.components_removed.length
          ? h("p", { id: "diff-components" }, d.components_added.map((c) => `+${c}`).join(" "), " ",
            d.components_removed.map((c) => `−${c}`).join(" "))
          : null,
        changed.length ? changed.map((f) => h("section", { "data-file": f.name },
          h("h3", {}, `${f.name} (${f.status})`), diffTable(f.diff, `v${d.from}`, `v${d.to}`)))
          : h("p", { class: "muted" }, "The two versions hold the same files."));
    } catch (error) {
      say(`Compare: ${error.message}`, "error");
    }
  }

  await show(latest);
  if (versions.length > 1) await compare();
}
