// The code and JSON views of the canvas, and the editor's tabs (fields / code / JSON).

import { canvasProblem, normalised } from "./canvas_model.js";
import { $, debounce, showError } from "./dom.js";
import { canvasToCode, parseCanvasCode } from "./omost.js";

/** Rewrite the code and JSON views for ``canvas``, except the one the change came from. */
export function showCanvasText(canvas, source) {
  if (source !== "code") {
    $("code").value = canvasToCode(canvas);
    showError("code-error", "");
  }
  if (source !== "json") {
    $("json").value = JSON.stringify(canvas, null, 2);
    showError("json-error", "");
  }
}

function fromCode(app) {
  try {
    const canvas = normalised(parseCanvasCode($("code").value));
    const problem = canvasProblem(canvas, app.state.config);
    if (problem) throw new Error(problem);
    showError("code-error", "");
    app.canvasEdited(canvas, "code");
  } catch (err) {
    showError("code-error", err.message);
  }
}

function fromJSON(app) {
  try {
    const parsed = JSON.parse($("json").value);
    const problem = canvasProblem(parsed, app.state.config);
    if (problem) throw new Error(problem);
    showError("json-error", "");
    app.canvasEdited(normalised(parsed), "json");
  } catch (err) {
    showError("json-error", err.message);
  }
}

/** Edits typed into the code or JSON view apply once they parse and validate. */
export function setupTextViews(app) {
  $("code").addEventListener("input", debounce(() => fromCode(app), 300));
  $("json").addEventListener("input", debounce(() => fromJSON(app), 300));
}

const TABS = ["fields", "code", "json"];

export function showTab(name) {
  for (const tab of TABS) {
    const selected = tab === name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(selected));
    $(`tab-${tab}`).tabIndex = selected ? 0 : -1;
    $(`view-${tab}`).hidden = !selected;
  }
}

export function setupTabs() {
  for (const [i, name] of TABS.entries()) {
    const tab = $(`tab-${name}`);
    tab.addEventListener("click", () => showTab(name));
    tab.addEventListener("keydown", (event) => {
      const delta = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!delta) return;
      const next = TABS[(i + delta + TABS.length) % TABS.length];
      showTab(next);
      $(`tab-${next}`).focus();
    });
  }
}
