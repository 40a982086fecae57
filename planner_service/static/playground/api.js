// Talking to the services over their public HTTP APIs only: JSON requests, Server-Sent Events read
// from a fetch() body stream (so POST bodies and cancellation work, unlike EventSource), and error
// bodies turned into the API's own message.

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** The API's message for a failed response: FastAPI's {detail} (string or list of field errors). */
export async function errorFrom(response) {
  let body = null;
  let text = "";
  try {
    text = await response.text();
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  let message = `${response.status} ${response.statusText}`.trim();
  const detail = body && (body.detail ?? body.error ?? body.message);
  if (typeof detail === "string") message = detail;
  else if (Array.isArray(detail)) {
    message = detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  } else if (detail && typeof detail === "object") message = detail.message || JSON.stringify(detail);
  else if (!body && text && text.length < 300) message = `${message}: ${text}`;
  if (body && Array.isArray(body.errors) && body.errors.length && typeof detail === "string") {
    const fields = body.errors.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
    if (!message.includes(fields)) message = `${message} (${fields})`;
  }
  return new ApiError(message, response.status, body);
}

export async function requestJSON(url, { method = "GET", body, signal, headers = {} } = {}) {
  let response;
  try {
    response = await fetch(url, {
      method,
      signal,
      headers: body === undefined ? headers : { "Content-Type": "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`cannot reach ${new URL(url, location.href).origin}: ${err.message}`, 0, null);
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/**
 * Server-Sent Events from a fetch Response: yields {event, data, id} as each event completes.
 * Follows the WHATWG parsing rules (CR, LF or CRLF line ends; comments; "data" lines joined by \n).
 */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "";
  let data = [];
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        if (!match) break;
        if (match[0] === "\r" && match.index === buffer.length - 1) break; // maybe half of CRLF
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          if (data.length) yield { event: event || "message", data: data.join("\n"), id };
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let val = colon === -1 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
    }
    if (data.length) yield { event: event || "message", data: data.join("\n"), id };
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** POST or GET that answers with an event stream; throws the API's message on an error status. */
export async function openEvents(url, { method = "GET", body, signal, headers = {} } = {}) {
  let response;
  try {
    response = await fetch(url, {
      method,
      signal,
      headers: {
        Accept: "text/event-stream",
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`cannot reach ${new URL(url, location.href).origin}: ${err.message}`, 0, null);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** A POSIX-shell single-quoted word. */
export function shellQuote(text) {
  return `'${String(text).replaceAll("'", `'"'"'`)}'`;
}

/** "Copy as curl": the exact request the page sends (a token stays in an environment variable). */
export function curlCommand(url, body, { method = "POST", token = false } = {}) {
  const json = JSON.stringify(body);
  const auth = token ? ` -H "Authorization: Bearer $OMOST_RENDER_API_TOKEN"` : "";
  return `curl -X ${method} ${shellQuote(url)} -H 'Content-Type: application/json'${auth} --data-raw ${shellQuote(json)}`;
}
