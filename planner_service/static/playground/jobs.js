// Rendering: the render form, submitting a job, its card with live progress (the job's SSE events,
// then the final record), its images, cancel, "edit this canvas" and "copy as curl". The model
// picker and what it changes in the form are models.js's.

import { ApiError, curlCommand, openEvents, readEvents, requestJSON } from "./api.js";
import { canvasProblem, clone } from "./canvas_model.js";
import { $, el, setStatus, showError } from "./dom.js";
import { chooseModel, fitForm, loadModels, takes } from "./models.js";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

function renderHeaders() {
  const token = $("r-token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function renderApi(config, path) {
  return `${config.render_api_url}${path}`;
}

function absolute(config, url) {
  return new URL(url, `${config.render_api_url}/`).href;
}

/** The Flux knobs that differ from their defaults (none: the model's own), for a model that takes them. */
function fluxOptions(state) {
  if (!takes(state, "flux")) return null;
  const defaults = state.config.flux_defaults;
  const flux = {};
  const steps = $("r-flux-steps").value.trim();
  if (steps !== "") flux.regional_steps = Number(steps);
  const base = Number($("r-flux-base").value);
  if ($("r-flux-base").value.trim() !== "" && base !== defaults.base_ratio) flux.base_ratio = base;
  return Object.keys(flux).length ? flux : null;
}

/** The request the form describes. Only what the chosen model takes is sent: a field the form hides
 * for it (Flux's one sampler, SDXL's negative prompt and hires fix) is left to the model. */
function renderRequest(state, canvas) {
  const num = (id) => Number($(id).value);
  const body = { canvas };
  const model = $("r-model").value;
  if (model) body.model = model;
  Object.assign(body, {
    width: num("r-width"),
    height: num("r-height"),
    steps: num("r-steps"),
    guidance_scale: num("r-guidance"),
  });
  if (!$("sampler-field").hidden) body.sampler = $("r-sampler").value;
  body.num_images = num("r-images");
  if (takes(state, "negative_prompt")) body.negative_prompt = $("r-negative").value;
  const seed = $("r-seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  const flux = fluxOptions(state);
  if (flux) body.flux = flux;
  if (takes(state, "hires_fix") && $("r-hires").checked) {
    body.hires_fix = { scale: num("r-hires-scale"), steps: num("r-hires-steps"), denoise: num("r-hires-denoise") };
  }
  return body;
}

export function updateCurl(state) {
  if (!state.canvas) return;
  $("curl").value = curlCommand(renderApi(state.config, "/v1/renders"), renderRequest(state, state.canvas), { token: Boolean($("r-token").value.trim()) });
}

async function copyCurl(state) {
  updateCurl(state);
  const text = $("curl").value;
  $("curl-box").open = true;
  try {
    await navigator.clipboard.writeText(text);
    setStatus("curl command copied.");
  } catch {
    $("curl").focus();
    $("curl").select();
    const ok = document.execCommand?.("copy");
    setStatus(ok ? "curl command copied." : "Select the curl command below and copy it.");
  }
}

export function updateAspect() {
  const w = Number($("r-width").value) || 1;
  const h = Number($("r-height").value) || 1;
  $("stage").style.setProperty("--aspect", `${w} / ${h}`);
}

async function render(app, event) {
  const { state } = app;
  event.preventDefault();
  showError("render-error", "");
  const problem = canvasProblem(state.canvas, state.config);
  if (problem) {
    showError("render-error", problem);
    return;
  }
  const body = renderRequest(state, state.canvas);
  $("render-submit").disabled = true;
  try {
    const accepted = await requestJSON(renderApi(state.config, "/v1/renders"), { method: "POST", body, headers: renderHeaders() });
    const job = { id: accepted.id, status: accepted.status, urls: accepted.urls, request: body, step: 0, total: body.steps };
    addJobCard(app, job);
    setStatus(`Render ${job.id} queued.`);
    followJob(state.config, job);
  } catch (err) {
    const refusal = modelRefusal(err, body.model || state.defaultModel || "default");
    showError("render-error", refusal || err.message);
    $("render-error").dataset.kind = refusal ? "model" : "";
    setStatus(refusal ? "Render refused: the model cannot take it." : "Render refused.");
    // The model went away since the list was read: read it again, so the picker shows what is served.
    if (err.body?.errors?.some((e) => e.type === "model_not_served")) loadModels(app, renderHeaders);
  } finally {
    $("render-submit").disabled = false;
  }
}

/** The 422 of a model the render API refuses (not served, or asked for what it lacks), in words; null
 * for any other error. Each of the API's field errors is listed as it said it. */
function modelRefusal(err, model) {
  const errors = err.status === 422 && Array.isArray(err.body?.errors) ? err.body.errors : [];
  const mine = errors.filter((e) => String(e.type || "").startsWith("model_"));
  if (!mine.length) return null;
  const said = mine.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  return `The render API refused model ${JSON.stringify(model)} (422): ${said}`;
}

function addJobCard(app, job) {
  const progress = el("progress", { max: "1", value: "0", "aria-label": `Progress of render ${job.id}` });
  const stateText = el("span", { class: "state", text: job.status });
  const stepText = el("span", { class: "steps", text: "" });
  const cancel = el("button", { type: "button", class: "danger cancel", text: "Cancel", onclick: () => cancelJob(app.state.config, job) });
  const r = job.request;
  const params = [
    r.model || "default model",
    `${r.width}×${r.height}`, `${r.steps} steps`, `guidance ${r.guidance_scale}`, r.sampler ?? null,
    `seed ${r.seed ?? "random"}`, `${r.num_images} image${r.num_images > 1 ? "s" : ""}`,
    r.flux ? `Flux ${Object.entries(r.flux).map(([k, v]) => `${k.replace("_", " ")} ${v}`).join(", ")}` : null,
    r.hires_fix ? `hires ×${r.hires_fix.scale}, ${r.hires_fix.steps} steps, denoise ${r.hires_fix.denoise}` : null,
  ].filter(Boolean).join(" · ");
  const card = el(
    "li",
    { class: "job", "data-job": job.id, "data-status": job.status },
    el("div", {}, stateText, " ", stepText),
    progress,
    el("div", { class: "images" }),
    el("p", { class: "params", text: params }),
    el("p", { class: "error small", role: "alert", hidden: true }),
    el(
      "div",
      { class: "row buttons" },
      cancel,
      el("button", {
        type: "button",
        class: "reuse",
        text: "Edit this canvas",
        title: "Show the canvas this render used, and its parameters, in the editor",
        onclick: () => reuseJob(app, job),
      }),
    ),
    el("details", { class: "small" }, el("summary", { text: "Request JSON" }), el("pre", { class: "request", text: JSON.stringify(r, null, 2) })),
  );
  job.card = card;
  $("gallery").prepend(card);
}

function updateJobCard(job) {
  const card = job.card;
  card.dataset.status = job.status;
  card.querySelector(".state").textContent = job.status;
  const total = job.total || 0;
  const step = Math.min(job.step || 0, total);
  const progress = card.querySelector("progress");
  progress.max = Math.max(total, 1);
  progress.value = job.status === "succeeded" ? progress.max : step;
  const pct = job.status === "succeeded" ? 100 : total ? Math.round((100 * step) / total) : 0;
  card.querySelector(".steps").textContent = total ? `step ${job.status === "succeeded" ? total : step} of ${total} (${pct}%)` : "";
  card.dataset.percent = String(pct);
  card.querySelector(".cancel").hidden = TERMINAL.has(job.status);
  const error = card.querySelector(".error");
  error.textContent = job.error || "";
  error.hidden = !job.error;
}

async function followJob(config, job) {
  updateJobCard(job);
  const eventsUrl = absolute(config, job.urls?.events || `/v1/renders/${job.id}/events`);
  try {
    const response = await openEvents(eventsUrl, { headers: renderHeaders() });
    for await (const ev of readEvents(response)) {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        continue;
      }
      if (data.status) job.status = data.status;
      if (data.total != null) job.total = data.total;
      if (data.step != null) job.step = data.step;
      if (data.progress) {
        job.step = data.progress.step ?? job.step;
        job.total = data.progress.total ?? job.total;
      }
      if (data.error) job.error = data.error;
      updateJobCard(job);
      if (TERMINAL.has(job.status)) break;
    }
  } catch (err) {
    job.streamError = err.message;
  }
  // The final record (also the fallback when the stream broke): poll until terminal.
  for (let attempt = 0; ; attempt++) {
    try {
      const record = await requestJSON(absolute(config, job.urls?.self || `/v1/renders/${job.id}`), { headers: renderHeaders() });
      job.status = record.status;
      job.record = record;
      job.error = record.error || null;
      if (record.progress) {
        job.step = record.progress.step;
        job.total = record.progress.total;
      }
      updateJobCard(job);
      if (TERMINAL.has(record.status)) break;
    } catch (err) {
      job.error = err.message;
      updateJobCard(job);
      if (attempt > 5) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  setStatus(`Render ${job.id} ${job.status}.`);
  if (job.status === "succeeded") await showImages(config, job);
}

async function showImages(config, job) {
  const record = job.record;
  const urls = record.urls?.images?.length
    ? record.urls.images
    : Array.from({ length: record.num_images || job.request.num_images }, (_, n) => `/v1/renders/${job.id}/images/${n}`);
  const box = job.card.querySelector(".images");
  for (const [n, url] of urls.entries()) {
    try {
      const response = await fetch(absolute(config, url), { headers: renderHeaders() });
      if (!response.ok) throw new ApiError(`image ${n}: ${response.status}`, response.status, null);
      const blob = await response.blob();
      const objectUrl = URL.createObjectURL(blob);
      const seed = record.seeds?.[n];
      const img = el("img", { src: objectUrl, alt: `Render ${job.id}, image ${n + 1}${seed != null ? `, seed ${seed}` : ""}`, class: "result" });
      const name = `omost-${job.id}-${n}${seed != null ? `-seed${seed}` : ""}.png`;
      box.append(
        el("figure", {}, img, el("figcaption", { class: "small" }, el("a", { href: objectUrl, download: name, text: `Download${seed != null ? ` (seed ${seed})` : ""}` }))),
      );
    } catch (err) {
      box.append(el("p", { class: "error small", text: err.message }));
    }
  }
  const timings = record.timings ? Object.entries(record.timings).map(([k, v]) => `${k} ${Number(v).toFixed(2)} s`).join(", ") : "";
  if (timings) job.card.querySelector(".params").textContent += ` · ${timings}`;
}

function reuseJob(app, job) {
  const r = job.request;
  const d = app.state.config.render_defaults;
  const missing = r.model && !chooseModel(app, r.model);
  // A field the job's model did not take was not sent: the form gets its default back.
  for (const [id, value] of [["r-width", r.width], ["r-height", r.height], ["r-steps", r.steps], ["r-guidance", r.guidance_scale],
    ["r-images", r.num_images], ["r-seed", r.seed ?? ""], ["r-negative", r.negative_prompt ?? d.negative_prompt]]) {
    $(id).value = value;
  }
  if (r.sampler) $("r-sampler").value = r.sampler;
  $("r-flux-steps").value = r.flux?.regional_steps ?? "";
  $("r-flux-base").value = r.flux?.base_ratio ?? app.state.config.flux_defaults.base_ratio;
  $("r-hires").checked = Boolean(r.hires_fix);
  $("r-hires").dispatchEvent(new Event("change"));
  if (r.hires_fix) {
    $("r-hires-scale").value = r.hires_fix.scale;
    $("r-hires-steps").value = r.hires_fix.steps;
    $("r-hires-denoise").value = r.hires_fix.denoise;
  }
  updateAspect();
  app.state.selected = null;
  app.canvasEdited(clone(r.canvas), "reuse");
  const note = missing ? ` Its model ${r.model} is no longer listed: the form keeps the model chosen.` : "";
  setStatus(`The canvas and parameters of render ${job.id} are in the editor.${note}`);
}

async function cancelJob(config, job) {
  try {
    await requestJSON(absolute(config, job.urls?.self || `/v1/renders/${job.id}`), { method: "DELETE", headers: renderHeaders() });
    setStatus(`Cancel requested for ${job.id}.`);
  } catch (err) {
    job.error = err.message;
    updateJobCard(job);
  }
}

export function setupRenderForm(app) {
  const { state } = app;
  const { render_defaults: d, limits, samplers } = state.config;
  for (const id of ["r-width", "r-height"]) Object.assign($(id), { min: limits.min_side, max: limits.max_side });
  $("r-width").value = d.width;
  $("r-height").value = d.height;
  $("r-steps").max = limits.max_steps;
  $("r-steps").value = d.steps;
  $("r-guidance").value = d.guidance_scale;
  $("r-images").max = limits.max_images;
  $("r-images").value = 1;
  $("r-seed").max = limits.max_seed;
  $("plan-seed").max = limits.max_seed;
  $("r-sampler").replaceChildren(...samplers.map((s) => el("option", { value: s, text: s })));
  $("r-sampler").value = d.sampler;
  $("r-negative").value = d.negative_prompt;
  $("r-hires-steps").value = d.hires_fix.steps;
  $("r-hires-denoise").value = d.hires_fix.denoise;
  $("r-flux-base").value = state.config.flux_defaults.base_ratio;
  $("r-token").value = sessionStorage.getItem("omost-render-token") || "";
  $("plan-token").value = sessionStorage.getItem("omost-planner-token") || "";
  $("plan-token").addEventListener("change", () => sessionStorage.setItem("omost-planner-token", $("plan-token").value.trim()));
  $("r-token").addEventListener("change", () => {
    sessionStorage.setItem("omost-render-token", $("r-token").value.trim());
    if (state.config.render_api_url) loadModels(app, renderHeaders);  // a token may open the list
  });
  $("r-model").addEventListener("change", () => fitForm(app));
  $("models-reload").addEventListener("click", () => loadModels(app, renderHeaders));
  $("r-hires").addEventListener("change", () => {
    $("hires-fields").hidden = !$("r-hires").checked;
    $("hires-fields").disabled = !$("r-hires").checked;
  });
  $("render-form").addEventListener("input", () => {
    updateAspect();
    updateCurl(state);
  });
  $("render-form").addEventListener("submit", (event) => render(app, event));
  $("copy-curl").addEventListener("click", () => copyCurl(state));
  updateAspect();
  if (state.config.render_api_url) loadModels(app, renderHeaders);
}
