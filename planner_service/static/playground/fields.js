// The fields editor: every field of the selected region (or of the global description).

import { canvasProblem, clone } from "./canvas_model.js";
import { $, el, showError } from "./dom.js";

function fieldInput(label, id, value, onInput, { multiline = false, type = "text" } = {}) {
  const input = multiline
    ? el("textarea", { id, rows: "4", spellcheck: "true" })
    : el("input", { id, type, ...(type === "number" ? { step: "any", min: "0" } : {}) });
  input.value = value;
  input.addEventListener("input", () => onInput(input.value, input));
  return [el("label", { for: id, text: label }), input];
}

function selectInput(label, id, value, options, onChange, colors = null) {
  const select = el("select", { id });
  for (const option of options) {
    const node = el("option", { value: option, text: option });
    if (colors) {
      const [r, g, b] = colors[option];
      node.style.background = `rgb(${r}, ${g}, ${b})`;
    }
    select.append(node);
  }
  select.value = value;
  select.addEventListener("change", () => onChange(select.value));
  return [el("label", { for: id, text: label }), select];
}

export function renderFields(app) {
  const { state } = app;
  const form = $("fields");
  const names = state.layout.names;
  const colors = state.config.tables.colors;
  const isGlobal = state.selected === "global";
  const index = state.selected;
  if (!isGlobal && typeof index !== "number") {
    form.replaceChildren(el("p", { class: "small", text: "Select a box on the canvas (or a region in the list) to edit it, or edit the global description." }));
    return;
  }
  const target = () => (isGlobal ? state.canvas.global_description : state.canvas.local_descriptions[index]);
  const update = (field, value) => {
    const canvas = clone(state.canvas);
    const obj = isGlobal ? canvas.global_description : canvas.local_descriptions[index];
    obj[field] = value;
    const problem = canvasProblem(canvas, state.config);
    showError("fields-error", problem);
    if (!problem) app.canvasEdited(canvas, "fields");
  };
  const t = target();
  const parts = [el("h3", { class: "small", text: isGlobal ? "Global description" : `Region ${index + 1}` })];
  parts.push(...fieldInput("Description", "f-description", t.description, (v) => update("description", v)));
  parts.push(
    ...fieldInput("Detailed descriptions (one per line)", "f-detailed", t.detailed_descriptions.join("\n"),
      (v) => update("detailed_descriptions", v.split("\n").filter((s) => s.trim() !== "")), { multiline: true }),
  );
  parts.push(...fieldInput("Tags", "f-tags", t.tags, (v) => update("tags", v)));
  if (!isGlobal) {
    parts.push(...fieldInput("Atmosphere", "f-atmosphere", t.atmosphere, (v) => update("atmosphere", v)));
    parts.push(...fieldInput("Style", "f-style", t.style, (v) => update("style", v)));
    parts.push(...fieldInput("Quality", "f-quality", t.quality_meta, (v) => update("quality_meta", v)));
  }
  parts.push(...selectInput("Colour", "f-color", t.HTML_web_color_name, names.colors, (v) => update("HTML_web_color_name", v), colors));
  if (!isGlobal) {
    parts.push(
      ...fieldInput("Distance to viewer", "f-distance", String(t.distance_to_viewer), (v) => {
        const n = Number(v);
        if (v.trim() !== "" && Number.isFinite(n) && n > 0) update("distance_to_viewer", n);
        else showError("fields-error", "distance_to_viewer must be a number above 0");
      }, { type: "number" }),
    );
    parts.push(...selectInput("Location", "f-location", t.location, names.locations, (v) => update("location", v)));
    parts.push(...selectInput("Offset", "f-offset", t.offset, names.offsets, (v) => update("offset", v)));
    parts.push(...selectInput("Area", "f-area", t.area, names.areas, (v) => update("area", v)));
    parts.push(el("div", { class: "row buttons" }, el("button", { type: "button", class: "danger", text: "Delete this region", onclick: () => app.deleteRegion(index) })));
  }
  parts.push(el("p", { class: "error small", id: "fields-error", role: "alert", hidden: true }));
  form.replaceChildren(...parts);
}
