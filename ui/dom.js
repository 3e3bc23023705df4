// Small DOM helpers. Text always goes in through textContent, never as
// HTML, so event data cannot inject markup.

/**
 * Creates an element: h("a", {href: "/x", class: "c", onclick: fn}, "text", child).
 * Attributes starting with "on" become listeners; null/false ones are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Pretty JSON in a <pre>. */
export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** A notice line: kind is "error", "ok" or "info". */
export function notice(kind, text) {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** A labelled form field. */
export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
}

/** Formats an integer with thousands separators. */
export function num(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "—";
}

/** Formats a rate per second. */
export function rate(n) {
  return typeof n === "number" && isFinite(n) ? n.toFixed(n < 10 ? 2 : 0) : "—";
}
