// Dead letters: which subscriptions have any, and per subscription the
// entries with reason and attempt history; redrive selected or all, and
// purge after a confirmation step (admins only; the server enforces it).

import { api } from "../api.js";
import { field, h, json, notice, num, replace } from "../dom.js";

const LIMIT = 1000;

export function render(main, ctx) {
  return ctx.subscription ? one(main, ctx) : index(main, ctx);
}

function index(main, { me, navigate }) {
  main.append(h("h1", {}, "Dead letters"));
  const name = h("input", { id: "dlq-name", name: "subscription", required: true, size: 30 });
  const form = h("form", { class: "toolbar" }, field("Subscription", name), h("div", { class: "buttons" }, h("button", { type: "submit" }, "Open")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    navigate(`/ui/dead-letters/${encodeURIComponent(name.value.trim())}`);
  });
  main.append(form);
  if (!me.admin) return null;
  const table = h("table", { id: "dlq-index", class: "grid" });
  main.append(table);
  api("/api/v1/subscriptions")
    .then((list) => {
      const subs = list.subscriptions.slice().sort((a, b) => b.dead_letters - a.dead_letters || a.spec.name.localeCompare(b.spec.name));
      replace(
        table,
        h("thead", {}, h("tr", {}, h("th", {}, "Subscription"), h("th", {}, "Dead letters"), h("th", {}, "Dead-lettered (total)"))),
        h(
          "tbody",
          {},
          subs.map((s) =>
            h(
              "tr",
              { dataset: { subscription: s.spec.name } },
              h("td", {}, h("a", { href: `/ui/dead-letters/${encodeURIComponent(s.spec.name)}` }, s.spec.name)),
              h("td", { class: "n" }, num(s.dead_letters)),
              h("td", { class: "n" }, num(s.dead_lettered)),
            ),
          ),
          subs.length ? null : h("tr", {}, h("td", { colspan: 3, class: "muted" }, "No durable subscriptions.")),
        ),
      );
    })
    .catch((e) => table.replaceWith(notice("error", e.message)));
  return null;
}

function one(main, { me, subscription }) {
  const base = `/api/v1/subscriptions/${encodeURIComponent(subscription)}/dlq`;
  const count = h("span", { id: "dlq-count" }, "…");
  const result = h("div", { id: "dlq-result" });
  const confirm = h("div", { id: "purge-confirm", class: "confirm", hidden: true });
  const table = h("table", { id: "dead-letters", class: "grid" });
  const refresh = h("button", { type: "button", id: "dlq-refresh", class: "secondary", onclick: () => load() }, "Refresh");
  const adminButtons = me.admin
    ? [
        h("button", { type: "button", id: "redrive-selected", onclick: () => act("redrive", selected()) }, "Redrive selected"),
        h("button", { type: "button", id: "redrive-all", onclick: () => act("redrive", null) }, "Redrive all"),
        h("button", { type: "button", id: "purge-selected", class: "danger", onclick: () => askPurge(selected()) }, "Purge selected"),
        h("button", { type: "button", id: "purge-all", class: "danger", onclick: () => askPurge(null) }, "Purge all"),
      ]
    : [h("span", { class: "muted" }, "Redrive and purge need an admin token.")];
  main.append(
    h("h1", {}, "Dead letters of ", h("code", { id: "dlq-subscription" }, subscription), " (", count, ")"),
    h("div", { class: "toolbar" }, h("div", { class: "buttons" }, refresh, ...adminButtons)),
    confirm,
    result,
    table,
  );
  let entries = [];

  function selected() {
    return [...table.querySelectorAll("input.pick:checked")].map((c) => c.value);
  }

  async function load() {
    try {
      const body = await api(`${base}?limit=${LIMIT}`);
      entries = body.dead_letters;
    } catch (e) {
      replace(result, notice("error", e.message));
      count.textContent = "?";
      return;
    }
    count.textContent = num(entries.length) + (entries.length >= LIMIT ? "+" : "");
    const all = h("input", { type: "checkbox", id: "pick-all", "aria-label": "select all" });
    all.addEventListener("change", () => {
      for (const c of table.querySelectorAll("input.pick")) c.checked = all.checked;
    });
    replace(
      table,
      h("thead", {}, h("tr", {}, h("th", {}, me.admin ? all : ""), ["Event", "Topic", "Reason", "Attempts", "Dead-lettered at"].map((t) => h("th", {}, t)))),
      h("tbody", {}, entries.map(row), entries.length ? null : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No dead letters."))),
    );
  }

  function row(d) {
    const details = h(
      "details",
      {},
      h("summary", {}, d.event.id),
      h("h3", {}, "Event"),
      json(d.event),
      h("h3", {}, "Attempts"),
      h("ol", { class: "attempts" }, (d.history || []).map((a) => h("li", {}, json(a)))),
    );
    return h(
      "tr",
      { class: "dead-letter", dataset: { id: d.id } },
      h("td", {}, me.admin ? h("input", { type: "checkbox", class: "pick", value: d.id, "aria-label": `select ${d.id}` }) : ""),
      h("td", {}, details),
      h("td", {}, h("code", {}, d.event.type)),
      h("td", { class: "reason" }, d.reason),
      h("td", { class: "n" }, num(d.attempts)),
      h("td", {}, d.dead_lettered_at),
    );
  }

  async function act(verb, ids) {
    confirm.hidden = true;
    if (ids && !ids.length) {
      replace(result, notice("error", "Select dead letters first."));
      return;
    }
    try {
      const body = await api(`${base}/${verb}`, { method: "POST", body: ids ? { ids } : {} });
      const what = verb === "redrive" ? "moved back into the subscription" : "purged";
      replace(result, notice("ok", `${num(body.count)} dead letters ${what}.`));
    } catch (e) {
      replace(result, notice("error", `${verb} refused: ${e.message}`));
    }
    load();
  }

  function askPurge(ids) {
    if (ids && !ids.length) {
      replace(result, notice("error", "Select dead letters first."));
      return;
    }
    const n = ids ? ids.length : entries.length;
    replace(
      confirm,
      h("p", {}, `Purge ${ids ? num(n) : "all " + num(n)} dead letters of ${subscription}? They are deleted for good.`),
      h("button", { type: "button", id: "purge-confirm-yes", class: "danger", onclick: () => act("purge", ids) }, "Yes, purge"),
      h("button", { type: "button", id: "purge-confirm-no", class: "secondary", onclick: () => { confirm.hidden = true; } }, "Cancel"),
    );
    confirm.hidden = false;
  }

  load();
  return null;
}
