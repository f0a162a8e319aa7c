// The playground: a chat through the gateway's own public endpoint (the real path: auth,
// limits, image policy, metering), streamed, with a picture from disk or the camera, and what
// the image policy did to it (the x-dashgate-image-* headers).
import { h, minted } from "./app.js";
import { t, fmtNum } from "./i18n.js";

const ENDPOINT = "/compatible-mode/v1/chat/completions";
let picture = null; // a data: URL
let stream = null; // the camera's MediaStream while open
let controller = null;

function keyOf(select, pasted) {
  return pasted.value.trim() || minted.get(select.value) || "";
}

// Offered when the key's model list names none (an upstream serving "*" names nothing).
const COMMON_MODELS = ["qwen-vl-plus", "qwen-vl-max", "qwen-plus", "qwen-max", "qwen-turbo", "qwen-long"];

async function loadModels(key, list) {
  let names = [];
  if (key) {
    const response = await fetch("/compatible-mode/v1/models", { credentials: "omit", headers: { authorization: `Bearer ${key}` } });
    if (response.ok) names = (await response.json()).data.map((m) => m.id);
  }
  if (names.length === 0) names = COMMON_MODELS;
  list.replaceChildren(...names.map((id) => h("option", { value: id })));
}

function stopCamera() {
  stream?.getTracks().forEach((track) => track.stop());
  stream = null;
}

/** The data URL of a picture, as the glasses send one. */
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function figures(headers) {
  const get = (name) => headers.get(`x-dashgate-image-${name}`);
  if (get("count") == null) return null;
  const row = (label, before, after) => h("tr", {}, h("th", {}, label),
    h("td", { class: "n" }, fmtNum(before)), h("td", { class: "n" }, fmtNum(after)));
  const count = (label, n, of) => (n == null ? "" : h("tr", {}, h("th", {}, label),
    h("td", { class: "n", colspan: 2 }, of == null ? n : `${n} / ${of}`)));
  return h("div", { class: "card", id: "image-figures" },
    h("h3", {}, t("pg_image_policy")),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, t("pg_before")), h("th", {}, t("pg_after")))),
      h("tbody", {},
        row(t("pg_bytes"), get("original-bytes"), get("sent-bytes")),
        row(t("pg_est_tokens"), get("tokens-before"), get("tokens-after")),
        count(t("pg_images"), get("count")),
        count(t("pg_stripped"), get("metadata-stripped"), get("count")),
        count(t("pg_resized"), get("resized"), get("count")))));
}

/** Reads an SSE body event by event, calling `ondelta` with each content delta. */
async function readStream(body, ondelta) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        try {
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) ondelta(delta);
        } catch (e) {
          if (e instanceof SyntaxError) continue;
          throw e;
        }
      }
    }
  }
}

export async function playground(root) {
  const keySelect = h("select", { id: "pg-key" },
    [...minted.keys()].map((name) => h("option", { value: name }, name)));
  const pasted = h("input", { id: "pg-paste", type: "password", placeholder: "sk-…", autocomplete: "off" });
  const modelList = h("datalist", { id: "pg-models" });
  const model = h("input", { id: "pg-model", list: "pg-models", value: "qwen-vl-plus", autocomplete: "off" });
  const message = h("textarea", { id: "pg-message", rows: 3 }, t("pg_default_message"));
  const answer = h("div", { class: "answer", id: "pg-answer" });
  const meta = h("div", { id: "pg-meta", class: "muted" });
  const status = h("p", { class: "error", id: "pg-error" });
  const preview = h("div", { class: "preview", id: "pg-preview" });
  const policy = h("div", { id: "pg-policy" });
  const video = h("video", { id: "pg-video", autoplay: true, playsinline: true, muted: true, hidden: true });
  const fileInput = h("input", { id: "pg-file", type: "file", accept: "image/*", hidden: true });

  const showPicture = (url) => {
    picture = url;
    preview.replaceChildren(url ? h("img", { src: url, alt: "" }) : "",
      url ? h("button", { class: "small ghost", onclick: () => showPicture(null) }, t("pg_remove")) : "");
  };
  fileInput.addEventListener("change", async () => {
    if (fileInput.files[0]) showPicture(await readFile(fileInput.files[0]));
  });
  const snap = h("button", {
    id: "pg-snap", type: "button", hidden: true,
    onclick: () => {
      const canvas = h("canvas", { width: video.videoWidth, height: video.videoHeight });
      canvas.getContext("2d").drawImage(video, 0, 0);
      showPicture(canvas.toDataURL("image/jpeg", 0.9));
      stopCamera();
      video.hidden = true;
      snap.hidden = true;
    },
  }, t("pg_snap"));
  const camera = h("button", {
    id: "pg-camera", type: "button", class: "ghost",
    onclick: async () => {
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
        video.srcObject = stream;
        video.hidden = false;
        snap.hidden = false;
        // A picture can be taken once the first frame is there.
        snap.disabled = true;
        video.addEventListener("loadeddata", () => { snap.disabled = false; }, { once: true });
      } catch (e) {
        status.textContent = `${t("pg_camera_failed")}: ${e.message}`;
      }
    },
  }, t("pg_camera"));

  const refreshModels = () => loadModels(keyOf(keySelect, pasted), modelList);
  keySelect.addEventListener("change", refreshModels);
  pasted.addEventListener("change", refreshModels);

  const send = h("button", { id: "pg-send", type: "submit" }, t("pg_send"));
  const form = h("form", { class: "card form playground", id: "pg-form" },
    h("label", {}, t("pg_key"), keySelect), h("label", {}, t("pg_paste"), pasted),
    h("p", { class: "muted small wide" }, t("pg_keys_note")),
    h("label", {}, t("pg_model"), model, modelList),
    h("label", { class: "wide" }, t("pg_message"), message),
    h("div", { class: "buttons wide" },
      h("button", { type: "button", class: "ghost", id: "pg-attach", onclick: () => fileInput.click() }, t("pg_attach")),
      camera, snap, send,
      h("button", { type: "button", class: "ghost", id: "pg-stop", onclick: () => controller?.abort() }, t("pg_stop"))),
    fileInput, video, preview);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = keyOf(keySelect, pasted);
    status.textContent = "";
    answer.textContent = "";
    meta.textContent = "";
    policy.replaceChildren();
    if (!key) {
      status.textContent = t("pg_no_key");
      return;
    }
    const content = picture
      ? [{ type: "image_url", image_url: { url: picture } }, { type: "text", text: message.value }]
      : message.value;
    controller = new AbortController();
    send.disabled = true;
    try {
      const response = await fetch(ENDPOINT, {
        method: "POST",
        signal: controller.signal,
        // The client key, not the console session: this is a device's request.
        credentials: "omit",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: model.value.trim(), stream: true, stream_options: { include_usage: true },
          messages: [{ role: "user", content }],
        }),
      });
      meta.textContent = [
        `HTTP ${response.status}`,
        response.headers.get("x-dashgate-upstream") ? `upstream: ${response.headers.get("x-dashgate-upstream")}` : "",
        `x-request-id: ${response.headers.get("x-request-id") || ""}`,
      ].filter(Boolean).join(" · ");
      const shown = figures(response.headers);
      if (shown) policy.replaceChildren(shown);
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        const error = body.error || {};
        status.textContent = `${response.status} ${error.code || ""}: ${error.message || response.statusText}`;
        return;
      }
      await readStream(response.body, (delta) => answer.append(delta));
    } catch (e) {
      if (e.name !== "AbortError") status.textContent = String(e.message || e);
    } finally {
      send.disabled = false;
      controller = null;
    }
  });

  root.replaceChildren(h("h2", {}, t("playground")),
    h("div", { class: "grid" }, form,
      h("div", {}, h("div", { class: "card" }, h("h3", {}, t("pg_answer")), meta, answer, status), policy)));
  window.addEventListener("hashchange", stopCamera, { once: true });
  showPicture(picture);
  await refreshModels();
}
