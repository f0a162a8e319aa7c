// The console's pages over the admin API: overview, keys, usage, devices, files.
import { h, api, minted, copyButton } from "./app.js";
import { t, fmtTime, fmtNum } from "./i18n.js";
import { RANGES, fill, timeChart, emptyNote } from "./charts.js";

const qs = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null)).toString();

function table(headers, rows, id) {
  return h("table", { id },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows));
}

function rangePicker(current, onpick) {
  return h("div", { class: "tabs", id: "range" }, Object.entries(RANGES).map(([name, r]) =>
    h("button", { class: name === current ? "current" : "", "data-range": name, onclick: () => onpick(name) }, t(r.label))));
}

async function seriesFor(rangeName, filter = {}) {
  const range = RANGES[rangeName];
  const to = Date.now();
  const from = to - range.span;
  const data = await api("GET", `/admin/api/usage/series?${qs({ bucket: range.bucket, from, to, ...filter })}`);
  return { ...fill(data.data, from, to, range.bucketMs), points: data.data };
}

function stat(label, value, id) {
  return h("div", { class: "card stat", id }, h("div", { class: "muted" }, label), h("div", { class: "big" }, value));
}

// ---- Overview

export async function overview(root, rangeName = "day") {
  const range = RANGES[rangeName];
  const [s, totals, ups] = await Promise.all([
    seriesFor(rangeName),
    api("GET", `/admin/api/usage?${qs({ from: Date.now() - range.span })}`),
    api("GET", "/admin/api/upstreams"),
  ]);
  const sum = (f) => s.points.reduce((a, p) => a + (p[f] || 0), 0);
  root.replaceChildren(
    h("div", { class: "row" }, h("h2", {}, t("overview")), rangePicker(rangeName, (r) => overview(root, r))),
    h("div", { class: "stats" },
      stat(t("requests"), fmtNum(totals.totals.requests), "stat-requests"),
      stat(t("errors"), fmtNum(sum("errors")), "stat-errors"),
      stat(t("tokens_in"), fmtNum(totals.totals.prompt_tokens), "stat-tokens-in"),
      stat(t("tokens_out"), fmtNum(totals.totals.completion_tokens), "stat-tokens-out"),
      stat(t("cost"), totals.totals.cost.toFixed(4), "stat-cost")),
    emptyNote(s.points) || "",
    h("div", { class: "grid" },
      timeChart(t("requests"), s.times, [[t("requests"), s.col("requests")], [t("errors"), s.col("errors")]], "chart-requests"),
      timeChart(t("tokens"), s.times, [[t("tokens_in"), s.col("prompt_tokens")], [t("tokens_out"), s.col("completion_tokens")]], "chart-tokens"),
      timeChart(t("latency"), s.times, [[t("p50"), s.col("latency_p50_ms", true)], [t("p99"), s.col("latency_p99_ms", true)]], "chart-latency"),
      timeChart(t("ttft"), s.times, [[t("p50"), s.col("ttft_p50_ms", true)], [t("p99"), s.col("ttft_p99_ms", true)]], "chart-ttft")),
    h("h3", {}, t("upstreams")),
    table([t("name"), t("provider"), t("circuit"), t("in_flight"), t("models")],
      ups.data.map((u) => h("tr", {},
        h("td", {}, u.name, u.name === "simulator" ? h("span", { class: "tag warn" }, t("simulated")) : ""),
        h("td", {}, u.provider),
        h("td", {}, h("span", { class: `tag circuit-${u.circuit}` }, u.circuit)),
        h("td", {}, u.max_concurrency ? `${u.in_flight} / ${u.max_concurrency}` : String(u.in_flight)),
        h("td", {}, (u.models || []).join(", ")))), "upstreams"));
}

// ---- Keys

function limits(k) {
  const parts = [];
  if (k.rpm != null) parts.push(`${fmtNum(k.rpm)} rpm`);
  if (k.tpm != null) parts.push(`${fmtNum(k.tpm)} tpm`);
  if (k.token_quota != null) parts.push(`${fmtNum(k.token_quota)} / ${k.quota_period}`);
  return parts.length ? parts.join(" · ") : t("none");
}

const num = (v) => (v === "" || v == null ? null : Number(v));
const models = (v) => {
  const list = v.split(",").map((m) => m.trim()).filter(Boolean);
  return list.length ? list : null;
};

function field(label, input) {
  return h("label", {}, label, input);
}

function keyForm(onsubmit, k = null) {
  const f = {
    name: h("input", { name: "name", required: true, maxlength: 128 }),
    models: h("input", { name: "models", placeholder: t("models_hint"), value: k?.models?.join(", ") ?? "" }),
    rpm: h("input", { name: "rpm", type: "number", min: 0, value: k?.rpm ?? "" }),
    tpm: h("input", { name: "tpm", type: "number", min: 0, value: k?.tpm ?? "" }),
    token_quota: h("input", { name: "token_quota", type: "number", min: 0, value: k?.token_quota ?? "" }),
    quota_period: h("select", { name: "quota_period" }, ["total", "day", "month"].map((p) =>
      h("option", { value: p, selected: (k?.quota_period ?? "total") === p }, p))),
    expires: h("input", { name: "expires", type: "datetime-local" }),
  };
  const form = h("form", { class: "card form", id: k ? "edit-form" : "create-form" },
    k ? "" : field(t("name"), f.name),
    field(t("allow_list"), f.models), field(t("rpm"), f.rpm), field(t("tpm"), f.tpm),
    field(t("token_quota"), f.token_quota), field(t("quota_period"), f.quota_period),
    k ? "" : field(t("expires"), f.expires),
    h("div", { class: "buttons" },
      h("button", { type: "submit" }, k ? t("save") : t("create")),
      k ? h("button", { type: "button", class: "ghost", onclick: () => form.remove() }, t("cancel")) : ""));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = {
      models: models(f.models.value), rpm: num(f.rpm.value), tpm: num(f.tpm.value),
      token_quota: num(f.token_quota.value), quota_period: f.quota_period.value,
    };
    if (!k) {
      body.name = f.name.value.trim();
      if (f.expires.value) body.expires_at = new Date(f.expires.value).getTime();
      else delete body.expires_at;
    }
    onsubmit(body, form);
  });
  return form;
}

export async function keys(root) {
  const list = await api("GET", "/admin/api/keys");
  const shown = h("div", { id: "new-key" });
  const chart = h("div", { id: "key-chart" });
  const error = h("p", { class: "error", id: "keys-error" });
  const create = keyForm(async (body) => {
    try {
      const made = await api("POST", "/admin/api/keys", body);
      minted.set(made.name, made.key);
      await keys(root);
      document.getElementById("new-key").replaceChildren(h("div", { class: "banner ok" },
        h("p", {}, t("new_key_once")), h("code", { class: "secret", id: "minted-key" }, made.key), copyButton(made.key)));
    } catch (e) {
      error.textContent = e.message;
    }
  });
  const rows = list.data.map((k) => {
    const row = h("tr", { "data-key": k.name },
      h("td", {}, k.name), h("td", {}, h("code", {}, k.prefix + "…")),
      h("td", {}, h("span", { class: `tag status-${k.status}` }, t(k.status))),
      h("td", {}, limits(k)), h("td", {}, k.models ? k.models.join(", ") : t("all_models")),
      h("td", {}, k.expires_at ? fmtTime(k.expires_at) : t("none")),
      h("td", {}, fmtTime(k.last_used_at)),
      h("td", {}, h("div", { class: "buttons" },
        h("button", { class: "small ghost", "data-action": "chart", onclick: () => keyChart(chart, k.name) }, t("chart")),
        k.status === "revoked" ? "" : h("button", {
          class: "small ghost", "data-action": "edit",
          onclick: () => row.after(h("tr", {}, h("td", { colspan: 8 }, keyForm(async (body, form) => {
            try {
              await api("PATCH", `/admin/api/keys/${encodeURIComponent(k.id)}`, body);
              await keys(root);
            } catch (e) { form.append(h("p", { class: "error" }, e.message)); }
          }, k)))),
        }, t("edit")),
        k.status === "revoked" ? "" : h("button", {
          class: "small danger", "data-action": "revoke",
          onclick: async () => {
            if (!confirm(t("revoke_confirm"))) return;
            await api("DELETE", `/admin/api/keys/${encodeURIComponent(k.id)}`);
            await keys(root);
          },
        }, t("revoke")))));
    return row;
  });
  root.replaceChildren(h("h2", {}, t("keys")), shown,
    table([t("name"), t("prefix"), t("status"), t("limits"), t("allow_list"), t("expires"), t("last_used"), t("actions")], rows, "keys-table"),
    chart, h("h3", {}, t("create_key")), create, error);
}

async function keyChart(holder, name) {
  const s = await seriesFor("week", { key: name });
  holder.replaceChildren(timeChart(`${t("usage")}: ${name}`, s.times,
    [[t("requests"), s.col("requests")], [t("tokens"), s.col("total_tokens")]], "chart-key"));
}

// ---- Usage

const dayStart = (text) => (text ? new Date(`${text}T00:00:00Z`).getTime() : "");

export async function usage(root, filter = null) {
  const today = new Date().toISOString().slice(0, 10);
  const weekAgo = new Date(Date.now() - 6 * 86400e3).toISOString().slice(0, 10);
  filter = filter || { key: "", model: "", from: weekAgo, to: today };
  const params = { key: filter.key, model: filter.model, from: dayStart(filter.from), to: filter.to ? dayStart(filter.to) + 86400e3 : "" };
  const [keyList, rows, series] = await Promise.all([
    api("GET", "/admin/api/keys"),
    api("GET", `/admin/api/usage/table?${qs(params)}`),
    api("GET", `/admin/api/usage/series?${qs({ ...params, bucket: "day" })}`),
  ]);
  const f = {
    key: h("select", { name: "key", id: "filter-key" }, h("option", { value: "" }, t("all")),
      keyList.data.map((k) => h("option", { value: k.name, selected: k.name === filter.key }, k.name))),
    model: h("input", { name: "model", id: "filter-model", value: filter.model }),
    from: h("input", { type: "date", name: "from", value: filter.from }),
    to: h("input", { type: "date", name: "to", value: filter.to }),
  };
  const form = h("form", { class: "card filters", id: "usage-filters" },
    field(t("key"), f.key), field(t("model"), f.model), field(t("from"), f.from), field(t("to"), f.to),
    h("button", { type: "submit" }, t("apply")),
    h("a", { class: "button ghost", id: "export-csv", href: `/admin/api/usage/export.csv?${qs(params)}`, download: "dashgate-usage.csv" }, t("export_csv")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    usage(root, { key: f.key.value, model: f.model.value.trim(), from: f.from.value, to: f.to.value });
  });
  const from = params.from || (series.data[0]?.t ?? Date.now());
  const to = params.to ? params.to - 1 : Date.now();
  const s = fill(series.data, from, to, 86400e3);
  const sum = (field) => rows.data.reduce((a, r) => a + r[field], 0);
  const kinds = ["prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "image_tokens", "audio_tokens"];
  const labels = ["prompt", "cached", "completion", "reasoning", "image", "audio"].map(t);
  root.replaceChildren(h("h2", {}, t("usage")), form,
    timeChart(`${t("requests")} / ${t("tokens")}`, s.times,
      [[t("requests"), s.col("requests")], [t("tokens"), s.col("total_tokens")]], "chart-usage"),
    table([t("day"), t("key"), t("model"), t("requests"), t("errors"), ...labels, t("tokens"), t("cost")],
      [...rows.data.map((r) => h("tr", {},
        h("td", {}, r.day), h("td", {}, r.key), h("td", {}, r.model), h("td", { class: "n" }, fmtNum(r.requests)),
        h("td", { class: "n" }, fmtNum(r.errors)), kinds.map((k) => h("td", { class: "n" }, fmtNum(r[k]))),
        h("td", { class: "n" }, fmtNum(r.total_tokens)), h("td", { class: "n" }, r.cost.toFixed(6)))),
      h("tr", { class: "total" }, h("td", { colspan: 3 }, t("totals")), h("td", { class: "n" }, fmtNum(sum("requests"))),
        h("td", { class: "n" }, fmtNum(sum("errors"))), kinds.map((k) => h("td", { class: "n" }, fmtNum(sum(k)))),
        h("td", { class: "n" }, fmtNum(sum("total_tokens"))), h("td", { class: "n" }, sum("cost").toFixed(6)))],
      "usage-table"));
}

// ---- Devices: usage per account and device (device tokens, docs/fleet.md)

export async function devices(root, filter = null) {
  const today = new Date().toISOString().slice(0, 10);
  filter = filter || { from: new Date(Date.now() - 6 * 86400e3).toISOString().slice(0, 10), to: today };
  const params = { from: dayStart(filter.from), to: filter.to ? dayStart(filter.to) + 86400e3 : "" };
  const rows = await api("GET", `/admin/api/usage/devices?${qs(params)}`);
  const f = { from: h("input", { type: "date", name: "from", value: filter.from }), to: h("input", { type: "date", name: "to", value: filter.to }) };
  const form = h("form", { class: "card filters", id: "devices-filters" },
    field(t("from"), f.from), field(t("to"), f.to), h("button", { type: "submit" }, t("apply")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    devices(root, { from: f.from.value, to: f.to.value });
  });
  const n = (v) => h("td", { class: "n" }, fmtNum(v));
  root.replaceChildren(h("h2", {}, t("devices")), form,
    rows.data.length ? table([t("account"), t("device"), t("requests"), t("prompt"), t("completion"), t("tokens"), t("cost")],
      rows.data.map((r) => h("tr", { "data-device": `${r.account}/${r.device}` },
        h("td", {}, r.account), h("td", {}, r.device), n(r.requests), n(r.prompt_tokens), n(r.completion_tokens),
        n(r.total_tokens), h("td", { class: "n" }, r.cost.toFixed(6)))), "devices-table")
      : h("p", { class: "muted", id: "no-devices" }, t("no_data")));
}

// ---- Files

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

export async function files(root) {
  const list = await api("GET", "/admin/api/files");
  const rows = list.data.map((f) => h("tr", { "data-file": f.id },
    h("td", {}, h("code", {}, f.id)), h("td", {}, f.filename), h("td", {}, f.owner), h("td", {}, f.purpose),
    h("td", { class: "n" }, size(f.bytes)), h("td", {}, fmtTime(f.created_at)),
    h("td", {}, h("button", {
      class: "small danger", "data-action": "delete",
      onclick: async () => {
        if (!confirm(t("delete_confirm"))) return;
        await api("DELETE", `/admin/api/files/${encodeURIComponent(f.id)}`);
        await files(root);
      },
    }, t("delete")))));
  root.replaceChildren(h("h2", {}, t("files")),
    list.data.length ? table(["id", t("filename"), t("owner"), t("purpose"), t("size"), t("created"), ""], rows, "files-table")
      : h("p", { class: "muted", id: "no-files" }, t("no_files")));
}
