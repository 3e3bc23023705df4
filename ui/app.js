// The console's entry: finds who the caller is (asking for a token when
// the server wants one), then draws the page named by the URL path. Links
// inside the console change the path with history.pushState, so every page
// keeps a URL that can be bookmarked.

import { api, ApiError, setToken, token } from "./api.js";
import { h, notice, replace, field } from "./dom.js";
import * as overview from "./pages/overview.js";
import * as tail from "./pages/tail.js";
import * as subscriptions from "./pages/subscriptions.js";
import * as deadLetters from "./pages/dead-letters.js";
import * as publish from "./pages/publish.js";
import * as replay from "./pages/replay.js";

const main = document.getElementById("main");
const who = document.getElementById("who");
let cleanup = null;
let me = null;

/** The page module and its parameters for a path under /ui/. */
function route(pathname) {
  const rest = pathname.replace(/^\/ui\/?/, "").replace(/\/$/, "");
  if (rest === "") return { page: overview, name: "overview" };
  if (rest === "tail") return { page: tail, name: "tail" };
  if (rest === "subscriptions") return { page: subscriptions, name: "subscriptions" };
  if (rest === "publish") return { page: publish, name: "publish" };
  if (rest === "replay") return { page: replay, name: "replay" };
  if (rest === "dead-letters") return { page: deadLetters, name: "dead-letters" };
  const m = /^dead-letters\/([^/]+)$/.exec(rest);
  if (m) return { page: deadLetters, name: "dead-letters", subscription: decodeURIComponent(m[1]) };
  return null;
}

export function navigate(url) {
  history.pushState(null, "", url);
  render();
}

function render() {
  if (cleanup) {
    try {
      cleanup();
    } catch (e) {
      console.warn("page cleanup failed", e);
    }
    cleanup = null;
  }
  const found = route(location.pathname);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", !!found && a.dataset.page === found.name);
  }
  if (!found) {
    replace(main, h("h1", {}, "Not found"), notice("error", `No console page at ${location.pathname}.`));
    return;
  }
  document.title = `${found.name} · event-router console`;
  main.replaceChildren();
  const ctx = { me, navigate, subscription: found.subscription, params: new URLSearchParams(location.search) };
  const result = found.page.render(main, ctx);
  cleanup = typeof result === "function" ? result : null;
}

function showIdentity() {
  const signOut = h("button", { class: "link", type: "button", id: "sign-out", onclick: () => { setToken(""); start(); } }, "sign out");
  replace(
    who,
    h("span", { id: "principal" }, me.principal),
    me.admin ? h("span", { class: "badge" }, "admin") : null,
    me.auth && token() ? signOut : null,
  );
  for (const el of document.querySelectorAll("[data-admin]")) el.hidden = !me.admin;
}

function askForToken(message) {
  for (const a of document.querySelectorAll("#nav a")) a.classList.remove("active");
  replace(who);
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true, size: 48 });
  const form = h(
    "form",
    { id: "token-form", class: "card narrow" },
    h("h1", {}, "Sign in"),
    h("p", {}, "This router requires a token: an API key or a JWT. It is kept in this tab only and sent in the Authorization header."),
    message ? notice("error", message) : null,
    field("Token", input),
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    start();
  });
  replace(main, form);
  input.focus();
}

async function start() {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  me = null;
  if (!token()) {
    // Ask before the first call: a 401 would be logged by the browser.
    const info = await fetch("/ui/auth", { cache: "no-store" })
      .then((r) => r.json())
      .catch(() => ({ token_required: false }));
    if (info.token_required) {
      askForToken("");
      return;
    }
  }
  try {
    me = await api("/api/v1/whoami");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      const had = token();
      setToken("");
      askForToken(had ? `The token was refused: ${e.message}` : "");
      return;
    }
    replace(main, notice("error", `Cannot reach the router: ${e.message}`));
    return;
  }
  showIdentity();
  render();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui/") || a.target) return;
  if (!me) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", () => me && render());
window.addEventListener("console:unauthorized", (e) => {
  if (!me) return; // start() handles the first call's refusal itself
  me = null;
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  setToken("");
  askForToken(`The token was refused: ${e.detail}`);
});
start();
