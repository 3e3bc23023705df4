// Calls to the router's HTTP API. The token (with `--auth`) lives in this
// tab's sessionStorage and goes in the Authorization header of every call;
// it never goes into a URL.

const TOKEN_KEY = "event-router.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An API error: `status`, `code` and the server's message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

async function failure(response) {
  let code = "http_" + response.status;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not our error shape: keep the status line
  }
  if (response.status === 401) {
    // The token expired or was revoked: the console asks for a new one.
    window.dispatchEvent(new CustomEvent("console:unauthorized", { detail: message }));
  }
  return new ApiError(response.status, code, message);
}

/** GET/POST/PUT a JSON API path; resolves to the parsed body. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, headers: headers(), signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** GET a text resource (e.g. /metrics). */
export async function text(path, { signal } = {}) {
  const response = await fetch(path, { headers: headers({ Accept: "text/plain" }), signal, cache: "no-store" });
  if (!response.ok) throw await failure(response);
  return response.text();
}

/**
 * Reads an SSE stream with fetch (EventSource cannot send headers), calling
 * onMessage({event, id, data}) per message, until `signal` aborts or the
 * stream ends. Rejects with ApiError when the server refuses the stream.
 */
export async function stream(path, onMessage, signal) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal, cache: "no-store" });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { event: "message", id: "", data: "" };
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const key = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (key === "data") data.push(val);
        else if (key === "event") message.event = val;
        else if (key === "id") message.id = val;
      }
      if (data.length) {
        message.data = data.join("\n");
        onMessage(message);
      }
    }
  }
}

/**
 * Reads one gauge family from Prometheus text: a Map from the value of
 * `label` to the number.
 */
export function gauge(metricsText, name, label) {
  const out = new Map();
  const re = new RegExp(`^${name}\\{([^}]*)\\}\\s+(\\S+)`);
  for (const line of metricsText.split("\n")) {
    const m = re.exec(line);
    if (!m) continue;
    const l = new RegExp(`${label}="((?:[^"\\\\]|\\\\.)*)"`).exec(m[1]);
    if (l) out.set(l[1], Number(m[2]));
  }
  return out;
}
