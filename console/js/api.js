// Calls to the REST API with the session's key; a 401 asks for a key and tries again.
import { askForKey, currentKey } from "./key.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function headers(extra = {}) {
  const key = currentKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** The JSON answer of `method path`, or an ApiError with the API's message. */
export async function api(path, { method = "GET", body } = {}) {
  for (;;) {
    const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(path, init);
    if (response.status === 401) {
      await askForKey(currentKey() ? "That key was not accepted." : "This server needs an API key.");
      continue;
    }
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = { error: { message: text } };
    }
    if (!response.ok) {
      const error = json?.error ?? {};
      throw new ApiError(response.status, error.code ?? "error", error.message ?? response.statusText);
    }
    return json;
  }
}

let role = null;

/** What the session's key may do: "viewer", "operator" or "admin". */
export async function whoami() {
  role ??= (await api("/api/v1/whoami")).role;
  return role;
}

export function forgetRole() {
  role = null;
}

const RANK = { viewer: 0, operator: 1, admin: 2 };
export const may = (have, need) => RANK[have] >= RANK[need];

/** A query string of the non-empty fields. */
export function query(fields) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined && value !== null && value !== "") params.set(name, value);
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}
