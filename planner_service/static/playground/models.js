// The model picker: what the render API's workers serve (GET /v1/models), the choice sent as the
// request's `model`, and the render form fitted to the chosen model (its size multiple, default
// steps, guidance and sampler; only the options it takes). Without a list (an older render API, or
// the list failed) the form stays as the page's config says and no `model` is sent: the default model.

import { requestJSON } from "./api.js";
import { $, el, setStatus, showError } from "./dom.js";

/** The chosen model's registration, or null (no list: the default model as the config describes it). */
export function chosenModel(state) {
  const name = $("r-model").value;
  return (state.models || []).find((m) => m.name === name) || null;
}

/** Whether the chosen model takes ``option`` (a `ModelInfo.options` entry); without a list, every
 * SDXL option the form offers is taken (the default model is SDXL unless the list says otherwise). */
export function takes(state, option) {
  const info = chosenModel(state);
  return info ? info.options.includes(option) : option !== "flux";
}

function label(info) {
  const family = info.variant ? `${info.family} ${info.variant}` : info.family;
  const idle = info.workers === 0 ? ", no live worker now" : "";
  return `${info.name} (${family}, ${info.default_steps} steps, sizes ×${info.size_multiple}${idle})`;
}

function describe(info) {
  if (!info) return "";
  const parts = [
    `${info.family}${info.variant ? ` [${info.variant}]` : ""} from ${info.source}`,
    `width and height multiples of ${info.size_multiple}`,
    `default ${info.default_steps} steps, guidance ${info.default_guidance_scale}`,
    `${info.workers} live worker${info.workers === 1 ? "" : "s"}`,
  ];
  return parts.join(" · ");
}

function nearestMultiple(value, multiple, limits) {
  const low = Math.ceil(limits.min_side / multiple) * multiple;
  const high = Math.floor(limits.max_side / multiple) * multiple;
  const rounded = Math.round((Number(value) || low) / multiple) * multiple;
  return Math.min(high, Math.max(low, rounded));
}

/** Fit the render form to the chosen model: sizes on its multiple, its steps, guidance and sampler
 * (``withDefaults``: overwrite what the form holds, as when the person picks another model), and show
 * only the options it takes. ``onChange`` redraws what depends on the form (aspect, curl). */
export function fitForm(app, { withDefaults = true } = {}) {
  const { state } = app;
  const info = chosenModel(state);
  const { limits, samplers, render_defaults: d } = state.config;
  const multiple = info ? info.size_multiple : 8;
  for (const id of ["r-width", "r-height"]) {
    $(id).step = multiple;
    if (withDefaults) $(id).value = nearestMultiple($(id).value, multiple, limits);
  }
  const offered = info ? info.samplers : samplers;
  const current = $("r-sampler").value;
  $("r-sampler").replaceChildren(...offered.map((s) => el("option", { value: s, text: s })));
  $("r-sampler").value = !withDefaults && offered.includes(current) ? current : (info ? info.default_sampler : d.sampler);
  // A model with one sampler has nothing to choose (Flux: its flow-matching Euler): the field goes,
  // and the request leaves it to the model.
  $("sampler-field").hidden = offered.length < 2;
  if (withDefaults) {
    $("r-steps").value = info ? info.default_steps : d.steps;
    $("r-guidance").value = info ? info.default_guidance_scale : d.guidance_scale;
  }
  $("hires-field").hidden = !takes(state, "hires_fix");
  if ($("hires-field").hidden && $("r-hires").checked) {
    $("r-hires").checked = false;
    $("r-hires").dispatchEvent(new Event("change"));
  }
  $("negative-field").hidden = !takes(state, "negative_prompt");
  // Regional-Prompting-FLUX's knobs, for a model that takes them (the rest keep their defaults).
  $("flux-fields").hidden = !takes(state, "flux");
  $("flux-fields").disabled = $("flux-fields").hidden;
  $("model-info").textContent = describe(info);
  $("r-model").dataset.family = info ? info.family : "";
  app.renderFormChanged();
}

/** Ask the render API which models it serves and fill the picker (keeping the choice when it is
 * still served, else the API's default). A failure is shown beside the picker, and the page goes on
 * rendering the default model. */
export async function loadModels(app, headers) {
  const { state } = app;
  const select = $("r-model");
  const previous = select.value;
  select.dataset.state = "loading";
  $("models-reload").disabled = true;
  try {
    const answer = await requestJSON(`${state.config.render_api_url}/v1/models`, { headers: headers() });
    state.models = answer.models;
    state.defaultModel = answer.default;
    showError("models-error", "");
    if (!answer.models.length) {
      select.replaceChildren(el("option", { value: "", text: `${answer.default} (no worker has registered a model yet)` }));
    } else {
      select.replaceChildren(...answer.models.map((m) => el("option", { value: m.name, text: label(m) })));
      const names = answer.models.map((m) => m.name);
      select.value = names.includes(previous) ? previous : names.includes(answer.default) ? answer.default : names[0];
    }
    select.dataset.state = "loaded";
    fitForm(app, { withDefaults: select.value !== previous });
  } catch (err) {
    state.models = [];
    select.replaceChildren(el("option", { value: "", text: "default (the model list is unavailable)" }));
    select.dataset.state = "error";
    showError("models-error", `Cannot list the render API's models (GET /v1/models): ${err.message}`);
    setStatus("The model list is unavailable; renders go to the default model.");
    fitForm(app, { withDefaults: false });
  } finally {
    $("models-reload").disabled = false;
  }
}

/** Choose ``name`` (e.g. a job's model, to edit it again); false when it is not in the list. */
export function chooseModel(app, name) {
  if (!(app.state.models || []).some((m) => m.name === name)) return false;
  $("r-model").value = name;
  fitForm(app, { withDefaults: false });
  return true;
}
