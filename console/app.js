// The console's shell: sign-in, navigation between pages, and the admin API client. A session
// is an HttpOnly cookie the page never sees; changes also send the session's CSRF token.
import { t, lang } from "./i18n.js";
import { overview, keys, usage, devices, files } from "./pages.js";
import { playground } from "./playground.js";

const state = { csrf: null, source: null, minted: new Map() };

/** A DOM element: h("div", {class: "x", onclick: f}, "text", child, ...). Text is never HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the admin API with the session cookie; JSON in, JSON out. */
export async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["x-dashgate-csrf"] = state.csrf;
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (response.status === 401 && path.startsWith("/admin/api/")) {
    signedOut();
    throw new ApiError(401, t("signin"));
  }
  if (!response.ok) {
    throw new ApiError(response.status, data?.error?.message || data?.message || text || response.statusText);
  }
  return data;
}

/** Keys minted in this tab (the only time the console sees one), for the playground. */
export const minted = state.minted;

const PAGES = [
  ["overview", overview],
  ["keys", keys],
  ["usage", usage],
  ["devices", devices],
  ["files", files],
  ["playground", playground],
];

const root = () => document.getElementById("app");

function signedOut() {
  state.csrf = null;
  state.source = null;
  renderSignIn();
}

function renderSignIn(message) {
  const input = h("input", { type: "password", id: "admin-token", autocomplete: "current-password", required: true });
  const error = h("p", { class: "error", id: "signin-error" }, message || "");
  const form = h("form", { class: "card signin", id: "signin-form" },
    h("h1", {}, t("title")),
    h("p", { class: "muted" }, t("signin_hint")),
    h("label", {}, t("admin_token"), input),
    h("button", { type: "submit", id: "signin-button" }, t("signin")),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await signIn(input.value.trim());
    } catch {
      error.textContent = t("signin_failed");
    }
  });
  root().replaceChildren(form);
  input.focus();
}

async function signIn(token) {
  const response = await fetch("/admin/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify({ token }),
  });
  if (!response.ok) throw new ApiError(response.status, "sign-in failed");
  const data = await response.json();
  state.csrf = data.csrf;
  state.source = data.token_source;
  renderShell();
}

async function signOut() {
  try { await api("DELETE", "/admin/session"); } catch { /* signed out either way */ }
  state.minted.clear();
  location.hash = "";
  signedOut();
}

function bootstrapBanner() {
  if (state.source !== "bootstrap") return null;
  const box = h("div", { class: "banner", id: "bootstrap-banner" }, h("span", {}, t("bootstrap_banner")));
  const button = h("button", {
    id: "replace-token",
    onclick: async () => {
      const data = await api("POST", "/admin/api/admin-token");
      // The old session ended with the old token: sign in again with the new one.
      await signIn(data.admin_token);
      const shown = document.getElementById("bootstrap-banner") || document.querySelector("main");
      const note = h("div", { class: "banner ok", id: "new-admin-token" },
        h("p", {}, t("new_admin_token")), h("code", { class: "secret" }, data.admin_token),
        copyButton(data.admin_token), h("p", {}, t("token_replaced")));
      shown.before(note);
    },
  }, t("replace_token"));
  box.append(button);
  return box;
}

export function copyButton(text) {
  const button = h("button", { class: "small copy", type: "button" }, t("copy"));
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Without clipboard access (plain http on another host), select the text for Ctrl+C.
      const code = button.previousElementSibling;
      if (code) getSelection().selectAllChildren(code);
    }
    button.textContent = t("copied");
  });
  return button;
}

function renderShell() {
  const nav = h("nav", {},
    h("span", { class: "brand" }, "dashgate"),
    ...PAGES.map(([name]) => h("a", { href: `#${name}`, id: `nav-${name}` }, t(name))),
    h("span", { class: "spacer" }),
    h("button", { id: "signout", class: "ghost", onclick: signOut }, t("signout")));
  const main = h("main", { id: "page" });
  root().replaceChildren(nav, bootstrapBanner() || "", main);
  route();
}

let rendering = 0;

async function route() {
  if (!state.csrf) return;
  const name = (location.hash || "#overview").slice(1);
  const page = PAGES.find(([n]) => n === name) || PAGES[0];
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.id === `nav-${page[0]}`);
  }
  const main = document.getElementById("page");
  if (!main) return;
  const mine = ++rendering;
  main.replaceChildren(h("p", { class: "muted" }, "…"));
  const content = h("section", { id: `page-${page[0]}` });
  try {
    await page[1](content);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    content.append(h("p", { class: "error" }, String(e.message || e)));
  }
  // A later navigation wins over a slow page.
  if (mine === rendering) main.replaceChildren(content);
}

window.addEventListener("hashchange", route);
document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
document.title = t("title");

(async () => {
  const response = await fetch("/admin/session", { credentials: "same-origin" });
  if (response.ok) {
    const data = await response.json();
    state.csrf = data.csrf;
    state.source = data.token_source;
    renderShell();
  } else {
    renderSignIn();
  }
})();
