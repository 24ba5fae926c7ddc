// A unified diff (as `/api/v1/configurations/{name}/diff` writes it) read into side-by-side rows:
// a pure function of the text, and the table drawn from it.
import { h } from "./dom.js";

/**
 * Rows of `{ hunk }` (a hunk's header) or `{ left, right }`, each side `{ n, text, kind }` or
 * null; `kind` is "same", "del" or "add". A run of removed lines faces the run of added lines
 * that follows it, line by line.
 */
export function sideBySide(unified) {
  const rows = [];
  let oldN = 0, newN = 0, inHunk = false;
  let dels = [], adds = [];
  const flush = () => {
    for (let i = 0; i < Math.max(dels.length, adds.length); i++) rows.push({ left: dels[i] ?? null, right: adds[i] ?? null });
    dels = [];
    adds = [];
  };
  for (const line of unified.split("\n")) {
    const hunk = line.match(/^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@/);
    if (hunk) {
      flush();
      [oldN, newN] = [Number(hunk[1]), Number(hunk[2])];
      inHunk = true;
      rows.push({ hunk: line });
    } else if (!inHunk || line.startsWith("\\")) {
      // The file header (--- / +++), and "\ No newline at end of file".
    } else if (line.startsWith("-")) {
      dels.push({ n: oldN++, text: line.slice(1), kind: "del" });
    } else if (line.startsWith("+")) {
      adds.push({ n: newN++, text: line.slice(1), kind: "add" });
    } else if (line.startsWith(" ")) {
      flush();
      rows.push({ left: { n: oldN++, text: line.slice(1), kind: "same" }, right: { n: newN++, text: line.slice(1), kind: "same" } });
    }
  }
  flush();
  return rows;
}

/** The rows as a table: old version on the left, new on the right. */
export function diffTable(unified, fromLabel, toLabel) {
  const side = (cell) => cell
    ? [h("td", { class: "ln" }, cell.n), h("td", { class: `code ${cell.kind}` }, cell.text)]
    : [h("td", { class: "ln" }), h("td", { class: "code empty" })];
  return h("div", { class: "table-wrap" }, h("table", { class: "diff" },
    h("colgroup", {}, h("col", { class: "ln" }), h("col"), h("col", { class: "ln" }), h("col")),
    h("thead", {}, h("tr", {}, h("th", { colspan: 2 }, fromLabel), h("th", { colspan: 2 }, toLabel))),
    h("tbody", {}, sideBySide(unified).map((row) => row.hunk
      ? h("tr", { class: "hunk" }, h("td", { colspan: 4 }, row.hunk))
      : h("tr", {}, side(row.left), side(row.right))))));
}
