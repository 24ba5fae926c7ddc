// The event stream read with fetch (EventSource cannot send the Authorization header): parses
// Server-Sent Events itself and reconnects with Last-Event-ID, so no transition is missed.
import { headers } from "./api.js";
import { askForKey } from "./key.js";

/**
 * Calls `onEvent(type, data)` for each event of `/api/v1/events<query>` until closed. `ready`
 * resolves once the stream is open: a page that reads its data after that misses no change.
 */
export function openEvents(query, onEvent) {
  const abort = new AbortController();
  let lastId = null;
  let retry = 500;
  let opened;
  const ready = new Promise((resolve) => { opened = resolve; });

  async function readOnce() {
    const extra = lastId === null ? {} : { "Last-Event-ID": lastId };
    const response = await fetch(`/api/v1/events${query}`, { headers: headers(extra), signal: abort.signal });
    if (response.status === 401) {
      await askForKey("This server needs an API key.");
      return;
    }
    if (!response.ok || !response.body) throw new Error(`event stream: ${response.status}`);
    retry = 500;
    opened();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { type: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
        // A CR at the very end may be half of a CRLF split between two reads.
        if (buffer[end] === "\r" && end === buffer.length - 1) break;
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") {
          if (event.id !== null) lastId = event.id;
          if (event.data.length) dispatch(event);
          event = { type: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event.type = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") event.id = text;
      }
    }
  }

  function dispatch(event) {
    try {
      onEvent(event.type, JSON.parse(event.data.join("\n")));
    } catch (error) {
      console.warn("event not handled", error);
    }
  }

  (async () => {
    while (!abort.signal.aborted) {
      try {
        await readOnce();
      } catch (error) {
        if (abort.signal.aborted) return;
        console.warn("event stream", error);
        // A page waiting for the stream goes on without it rather than not at all.
        opened();
      }
      // Waits before reconnecting, longer each time the server is away (up to 10 s).
      await new Promise((resolve) => setTimeout(resolve, retry));
      retry = Math.min(retry * 2, 10000);
    }
  })();

  return { ready, close: () => abort.abort() };
}
