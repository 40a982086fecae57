// The Omost playground: chat with the planner, edit the canvas as boxes, render and watch progress.
// Only the public HTTP APIs are used: the planner's /v1/plans (this page's origin) and the render
// API's /v1/renders (its own origin, given by /playground/config.json).
//
// This module only wires the parts together. Each part gets ``app``: the one ``state`` object
// (state.js) and the few actions that cross parts, so no module reaches into another's DOM.
//   canvas_model.js  validation and normal form      changes.js  what an edit changed
//   stage.js         composition, boxes, drag, keys   fields.js   the fields editor
//   views.js         code and JSON views, tabs        chat.js     prompt, streamed plans, turns
//   jobs.js          render form, job cards        models.js   the model picker (GET /v1/models)

import { requestJSON } from "./api.js";
import { clone } from "./canvas_model.js";
import { renderTurns, setupChat } from "./chat.js";
import { $, setStatus, showError } from "./dom.js";
import { renderFields } from "./fields.js";
import { setupRenderForm, updateAspect, updateCurl } from "./jobs.js";
import { makeLayout } from "./layout.js";
import { addRegion, deleteRegion, renderBoxes, renderLayers, renderStage } from "./stage.js";
import { createState, STARTER } from "./state.js";
import { setupTabs, setupTextViews, showCanvasText, showTab } from "./views.js";

function makeApp(state) {
  const app = {
    state,
    /** Make ``canvas`` the one shown; ``source`` is the view the change came from (it is not rewritten). */
    setCanvas(canvas, source = "external") {
      state.canvas = canvas;
      if (typeof state.selected === "number" && state.selected >= canvas.local_descriptions.length) state.selected = null;
      renderStage(app);
      if (source !== "fields") renderFields(app);
      showCanvasText(canvas, source);
      $("delete-region").disabled = typeof state.selected !== "number";
      updateCurl(state);
    },
    /** A change made on this page: the plan's highlights no longer describe the canvas shown. */
    canvasEdited(canvas, source) {
      state.changes = null;
      app.setCanvas(canvas, source);
      state.userEdited = true;
      const turn = state.turns[state.activeTurn];
      if (turn) turn.edited = true;
      renderTurns(app);
    },
    select(index, focusBox = false) {
      state.selected = index;
      $("delete-region").disabled = typeof index !== "number";
      renderBoxes(app);
      renderLayers(app);
      renderFields(app);
      if (focusBox && typeof index === "number") $("boxes").querySelector(`[data-index="${index}"]`)?.focus();
    },
    /** The render form changed (e.g. fitted to another model): the stage's aspect and the curl follow. */
    renderFormChanged() {
      updateAspect();
      updateCurl(state);
    },
    deleteRegion: (index) => deleteRegion(app, index),
    renderFields: () => renderFields(app),
    showTab,
  };
  return app;
}

async function main() {
  let config;
  try {
    config = await requestJSON("/playground/config.json");
  } catch (err) {
    setStatus(`Cannot load the playground's configuration: ${err.message}`);
    return;
  }
  const app = makeApp(createState(config, makeLayout(config.tables)));
  $("plan-temperature").value = config.llm_defaults.temperature;
  setupRenderForm(app);
  setupTabs();
  setupChat(app);
  $("add-region").addEventListener("click", () => addRegion(app));
  $("delete-region").addEventListener("click", () => deleteRegion(app));
  $("edit-global").addEventListener("click", () => {
    app.select("global");
    showTab("fields");
    $("f-description")?.focus();
  });
  setupTextViews(app);
  app.setCanvas(clone(STARTER), "start");
  document.body.dataset.ready = "true";
  if (!config.render_api_url) {
    $("render-submit").disabled = true;
    showError("render-error", "The render API's address is not configured on the planner, so this page cannot render.");
    setStatus(`Ready to plan (planner: ${location.origin}); rendering is off: no render API address.`);
    return;
  }
  setStatus(`Ready. Planner: ${location.origin}; render API: ${config.render_api_url}.`);
}

main();
