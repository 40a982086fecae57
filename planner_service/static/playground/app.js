// The Omost playground: chat with the planner, edit the canvas as boxes, render and watch progress.
// Only the public HTTP APIs are used: the planner's /v1/plans (this page's origin) and the render
// API's /v1/renders (its own origin, given by /playground/config.json).

import { ApiError, curlCommand, openEvents, readEvents, requestJSON } from "./api.js";
import { GRID, makeLayout } from "./layout.js";
import { canvasToCode, parseCanvasCode } from "./omost.js";
import { planStreamHandler } from "./plan_stream.js";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
};
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

const STARTER = {
  global_description: {
    description: "A cozy living room with a cat and a dog on a sofa.",
    detailed_descriptions: ["Warm afternoon light fills a small living room."],
    tags: "living room, sofa, cat, dog, warm light",
    HTML_web_color_name: "wheat",
  },
  local_descriptions: [
    {
      location: "on the bottom", offset: "no offset", area: "a large horizontal area", distance_to_viewer: 3.0,
      description: "A soft grey sofa.", detailed_descriptions: ["A three-seat fabric sofa."], tags: "sofa, grey",
      atmosphere: "Calm.", style: "Photograph.", quality_meta: "High quality.", HTML_web_color_name: "gray",
    },
    {
      location: "on the left", offset: "slightly to the lower", area: "a small vertical area", distance_to_viewer: 1.5,
      description: "A ginger cat.", detailed_descriptions: ["The cat sits upright."], tags: "cat, ginger",
      atmosphere: "Curious.", style: "Photograph.", quality_meta: "High quality.", HTML_web_color_name: "orange",
    },
    {
      location: "on the right", offset: "slightly to the lower", area: "a small vertical area", distance_to_viewer: 1.5,
      description: "A brown dog.", detailed_descriptions: ["The dog lies with its head up."], tags: "dog, brown",
      atmosphere: "Friendly.", style: "Photograph.", quality_meta: "High quality.", HTML_web_color_name: "sienna",
    },
  ],
};

const state = {
  config: null,
  layout: null,
  canvas: null,
  selected: null, // region index, "global" or null
  turns: [],
  activeTurn: -1,
  planAbort: null,
  drag: null,
  userEdited: false,
};

// ------------------------------------------------------------------------------------------------
// Status line and errors

function setStatus(text) {
  $("app-status").textContent = text;
}

function showError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

// ------------------------------------------------------------------------------------------------
// The canvas model

const clone = (value) => structuredClone(value);
const LOCAL_DEFAULTS = { detailed_descriptions: [], tags: "", atmosphere: "", style: "", quality_meta: "" };

/** A readable complaint when a canvas (from code or JSON) would not pass the services' validation. */
function canvasProblem(canvas) {
  const { tables, limits } = state.config;
  const words = (s) => typeof s === "string" && s.replace(/^[,. \t\r\n]+|[,. \t\r\n]+$/g, "") !== "";
  if (!canvas || typeof canvas !== "object") return "the canvas must be an object";
  const g = canvas.global_description;
  if (!g || typeof g !== "object") return "global_description is missing";
  if (!words(g.description)) return "global_description.description must contain words";
  if (!(g.HTML_web_color_name in tables.colors)) return `global_description.HTML_web_color_name ${JSON.stringify(g.HTML_web_color_name)} is not an HTML colour name`;
  if (!Array.isArray(canvas.local_descriptions)) return "local_descriptions must be a list";
  if (canvas.local_descriptions.length > limits.max_regions) return `at most ${limits.max_regions} regions`;
  for (const [i, r] of canvas.local_descriptions.entries()) {
    const where = `local_descriptions[${i}]`;
    if (!r || typeof r !== "object") return `${where} must be an object`;
    for (const [field, table] of [["location", tables.locations], ["offset", tables.offsets], ["area", tables.areas], ["HTML_web_color_name", tables.colors]]) {
      if (!(r[field] in table)) return `${where}.${field} ${JSON.stringify(r[field])} is not one of: ${Object.keys(table).slice(0, 9).join(", ")}${Object.keys(table).length > 9 ? ", …" : ""}`;
    }
    if (typeof r.distance_to_viewer !== "number" || !(r.distance_to_viewer > 0)) return `${where}.distance_to_viewer must be a number above 0`;
    if (!words(r.description)) return `${where}.description must contain words`;
    if (r.detailed_descriptions && !(Array.isArray(r.detailed_descriptions) && r.detailed_descriptions.every((s) => typeof s === "string"))) {
      return `${where}.detailed_descriptions must be a list of strings`;
    }
  }
  return null;
}

function normalised(canvas) {
  const g = { detailed_descriptions: [], tags: "", ...canvas.global_description };
  return {
    global_description: {
      description: g.description, detailed_descriptions: g.detailed_descriptions, tags: g.tags, HTML_web_color_name: g.HTML_web_color_name,
    },
    local_descriptions: canvas.local_descriptions.map((r) => {
      const full = { ...LOCAL_DEFAULTS, ...r };
      return Object.fromEntries(
        ["location", "offset", "area", "distance_to_viewer", "description", "detailed_descriptions", "tags", "atmosphere", "style", "quality_meta", "HTML_web_color_name"].map((k) => [k, full[k]]),
      );
    }),
  };
}

/** Make ``canvas`` the one shown; ``source`` is the view the change came from (it is not rewritten). */
function setCanvas(canvas, source = "external") {
  state.canvas = canvas;
  if (typeof state.selected === "number" && state.selected >= canvas.local_descriptions.length) state.selected = null;
  drawComposition();
  renderBoxes();
  renderLayers();
  if (source !== "fields") renderFields();
  if (source !== "code") {
    $("code").value = canvasToCode(canvas);
    showError("code-error", "");
  }
  if (source !== "json") {
    $("json").value = JSON.stringify(canvas, null, 2);
    showError("json-error", "");
  }
  $("delete-region").disabled = typeof state.selected !== "number";
  updateCurl();
}

function canvasEdited(canvas, source) {
  setCanvas(canvas, source);
  state.userEdited = true;
  const turn = state.turns[state.activeTurn];
  if (turn) turn.edited = true;
  renderTurns();
}

// ------------------------------------------------------------------------------------------------
// Drawing: colour composition, boxes in layer order, the layer list

function drawComposition() {
  const ctx = $("composition").getContext("2d");
  const rgba = state.layout.initialImage(state.canvas);
  ctx.putImageData(new ImageData(rgba, GRID, GRID), 0, 0);
}

function rectStyle(node, [top, bottom, left, right]) {
  node.style.top = `${(top / GRID) * 100}%`;
  node.style.left = `${(left / GRID) * 100}%`;
  node.style.height = `${((bottom - top) / GRID) * 100}%`;
  node.style.width = `${((right - left) / GRID) * 100}%`;
}

function regionRect(region) {
  return state.layout.placementRect(region.location, region.offset, region.area);
}

function regionLabel(index, region) {
  return `${index + 1}. ${region.description}`;
}

function renderBoxes() {
  const boxes = $("boxes");
  const order = state.layout.layerOrder(state.canvas);
  const existing = [...boxes.children];
  const sameShape = existing.length === order.length && existing.every((node, i) => Number(node.dataset.index) === order[i].index);
  if (!sameShape) {
    boxes.replaceChildren(
      ...order.map(({ index }) => {
        const box = el("button", { type: "button", class: "box", "data-index": String(index) }, el("span", { class: "label" }));
        for (const corner of ["nw", "ne", "sw", "se"]) box.append(el("span", { class: `handle ${corner}`, "data-handle": corner }));
        box.addEventListener("pointerdown", onBoxPointerDown);
        box.addEventListener("keydown", onBoxKey);
        box.addEventListener("click", () => select(index));
        return box;
      }),
    );
  }
  for (const [z, { region, index }] of order.entries()) {
    const box = boxes.children[z];
    rectStyle(box, regionRect(region));
    // Layer order (far to near); the selected box is lifted on top so its handles can be reached.
    box.style.zIndex = String(state.selected === index ? order.length + 1 : z + 1);
    box.querySelector(".label").textContent = regionLabel(index, region);
    box.classList.toggle("selected", state.selected === index);
    box.setAttribute("aria-pressed", state.selected === index ? "true" : "false");
    box.setAttribute(
      "aria-label",
      `Region ${index + 1}: ${region.description} — ${region.location}, ${region.offset}, ${region.area}, distance ${region.distance_to_viewer}`,
    );
  }
}

function renderLayers() {
  const order = state.layout.layerOrder(state.canvas);
  $("layers").replaceChildren(
    ...order.map(({ region, index }) => {
      const [r, g, b] = state.config.tables.colors[region.HTML_web_color_name] || [0, 0, 0];
      return el(
        "li",
        {},
        el(
          "button",
          { type: "button", "aria-current": state.selected === index ? "true" : "false", onclick: () => select(index, true) },
          el("span", { class: "swatch", style: `background: rgb(${r}, ${g}, ${b})` }),
          `${regionLabel(index, region)} (distance ${region.distance_to_viewer})`,
        ),
      );
    }),
  );
}

function select(index, focusBox = false) {
  state.selected = index;
  $("delete-region").disabled = typeof index !== "number";
  renderBoxes();
  renderLayers();
  renderFields();
  if (focusBox && typeof index === "number") $("boxes").querySelector(`[data-index="${index}"]`)?.focus();
}

// ------------------------------------------------------------------------------------------------
// Dragging and resizing with snapping (pointer) and the keyboard equivalents

function gridPoint(event) {
  const r = $("stage").getBoundingClientRect();
  return [((event.clientY - r.top) / r.height) * GRID, ((event.clientX - r.left) / r.width) * GRID];
}

function onBoxPointerDown(event) {
  if (event.button !== 0) return;
  const box = event.currentTarget;
  const index = Number(box.dataset.index);
  if (state.selected !== index) select(index);
  const region = state.canvas.local_descriptions[index];
  state.drag = {
    index,
    box,
    mode: event.target.dataset.handle || "move",
    start: gridPoint(event),
    rect: regionRect(region),
    moved: false,
  };
  box.setPointerCapture(event.pointerId);
  box.addEventListener("pointermove", onBoxPointerMove);
  box.addEventListener("pointerup", onBoxPointerUp);
  box.addEventListener("pointercancel", onBoxPointerUp);
  event.preventDefault();
  box.focus();
}

function draggedRect(drag, [y, x]) {
  const dy = y - drag.start[0];
  const dx = x - drag.start[1];
  let [top, bottom, left, right] = drag.rect;
  if (drag.mode === "move") return [top + dy, bottom + dy, left + dx, right + dx];
  if (drag.mode.includes("n")) top = Math.min(top + dy, bottom - 1);
  if (drag.mode.includes("s")) bottom = Math.max(bottom + dy, top + 1);
  if (drag.mode.includes("w")) left = Math.min(left + dx, right - 1);
  if (drag.mode.includes("e")) right = Math.max(right + dx, left + 1);
  return [top, bottom, left, right];
}

function applyRect(index, rect) {
  const region = state.canvas.local_descriptions[index];
  const snapped = state.layout.snapToPlacement(rect, region);
  if (snapped.location === region.location && snapped.offset === region.offset && snapped.area === region.area) return false;
  const canvas = clone(state.canvas);
  Object.assign(canvas.local_descriptions[index], snapped);
  canvasEdited(canvas, "drag");
  return true;
}

function onBoxPointerMove(event) {
  const drag = state.drag;
  if (!drag) return;
  const rect = draggedRect(drag, gridPoint(event));
  drag.moved = true;
  const ghost = $("ghost");
  ghost.hidden = false;
  rectStyle(ghost, rect);
  applyRect(drag.index, rect);
}

function onBoxPointerUp(event) {
  const drag = state.drag;
  const box = event.currentTarget;
  box.removeEventListener("pointermove", onBoxPointerMove);
  box.removeEventListener("pointerup", onBoxPointerUp);
  box.removeEventListener("pointercancel", onBoxPointerUp);
  if (box.hasPointerCapture(event.pointerId)) box.releasePointerCapture(event.pointerId);
  $("ghost").hidden = true;
  state.drag = null;
  if (drag?.moved) {
    const r = state.canvas.local_descriptions[drag.index];
    setStatus(`Region ${drag.index + 1} snapped to ${r.location}, ${r.offset}, ${r.area}.`);
  }
}

function onBoxKey(event) {
  const index = Number(event.currentTarget.dataset.index);
  const step = 10; // one Omost offset step in the 90-grid
  const moves = { ArrowUp: [-step, 0], ArrowDown: [step, 0], ArrowLeft: [0, -step], ArrowRight: [0, step] };
  if (event.key in moves) {
    event.preventDefault();
    const [dy, dx] = moves[event.key];
    let [top, bottom, left, right] = regionRect(state.canvas.local_descriptions[index]);
    if (event.shiftKey) {
      bottom = Math.max(top + 1, bottom + dy);
      right = Math.max(left + 1, right + dx);
    } else {
      top += dy; bottom += dy; left += dx; right += dx;
    }
    if (applyRect(index, [top, bottom, left, right])) {
      const r = state.canvas.local_descriptions[index];
      setStatus(`Region ${index + 1}: ${r.location}, ${r.offset}, ${r.area}.`);
    }
    $("boxes").querySelector(`[data-index="${index}"]`)?.focus();
  } else if (event.key === "Delete" || event.key === "Backspace") {
    event.preventDefault();
    deleteRegion(index);
  } else if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    select(index);
    showTab("fields");
    $("fields").querySelector("input, textarea, select")?.focus();
  }
}

function addRegion() {
  const canvas = clone(state.canvas);
  if (canvas.local_descriptions.length >= state.config.limits.max_regions) {
    setStatus(`A canvas holds at most ${state.config.limits.max_regions} regions.`);
    return;
  }
  const nearest = Math.min(2, ...canvas.local_descriptions.map((r) => r.distance_to_viewer));
  canvas.local_descriptions.push({
    location: "in the center", offset: "no offset", area: "a small square area",
    distance_to_viewer: Math.max(0.1, Math.round((nearest - 0.5) * 100) / 100),
    description: "A new object.", detailed_descriptions: [], tags: "", atmosphere: "", style: "", quality_meta: "",
    HTML_web_color_name: "cornflowerblue",
  });
  state.selected = canvas.local_descriptions.length - 1;
  canvasEdited(canvas, "add");
  select(state.selected, true);
  setStatus(`Region ${state.selected + 1} added.`);
}

function deleteRegion(index = state.selected) {
  if (typeof index !== "number") return;
  const canvas = clone(state.canvas);
  canvas.local_descriptions.splice(index, 1);
  state.selected = null;
  canvasEdited(canvas, "delete");
  renderFields();
  setStatus(`Region ${index + 1} deleted.`);
  $("add-region").focus();
}

// ------------------------------------------------------------------------------------------------
// The fields editor

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

function renderFields() {
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
    const problem = canvasProblem(canvas);
    showError("fields-error", problem);
    if (!problem) canvasEdited(canvas, "fields");
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
    parts.push(el("div", { class: "row buttons" }, el("button", { type: "button", class: "danger", text: "Delete this region", onclick: () => deleteRegion(index) })));
  }
  parts.push(el("p", { class: "error small", id: "fields-error", role: "alert", hidden: true }));
  form.replaceChildren(...parts);
}

// ------------------------------------------------------------------------------------------------
// Code and JSON views

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function fromCode() {
  try {
    const canvas = normalised(parseCanvasCode($("code").value));
    const problem = canvasProblem(canvas);
    if (problem) throw new Error(problem);
    showError("code-error", "");
    canvasEdited(canvas, "code");
  } catch (err) {
    showError("code-error", err.message);
  }
}

function fromJSON() {
  try {
    const parsed = JSON.parse($("json").value);
    const problem = canvasProblem(parsed);
    if (problem) throw new Error(problem);
    showError("json-error", "");
    canvasEdited(normalised(parsed), "json");
  } catch (err) {
    showError("json-error", err.message);
  }
}

function showTab(name) {
  for (const tab of ["fields", "code", "json"]) {
    const selected = tab === name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(selected));
    $(`tab-${tab}`).tabIndex = selected ? 0 : -1;
    $(`view-${tab}`).hidden = !selected;
  }
}

function setupTabs() {
  const tabs = ["fields", "code", "json"];
  for (const [i, name] of tabs.entries()) {
    const tab = $(`tab-${name}`);
    tab.addEventListener("click", () => showTab(name));
    tab.addEventListener("keydown", (event) => {
      const delta = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!delta) return;
      const next = tabs[(i + delta + tabs.length) % tabs.length];
      showTab(next);
      $(`tab-${next}`).focus();
    });
  }
}

// ------------------------------------------------------------------------------------------------
// Chat and planning

function renderTurns() {
  $("turns").replaceChildren(
    ...state.turns.map((turn, i) => {
      const n = turn.canvas?.local_descriptions.length;
      const regions = turn.canvas ? `${n} region${n === 1 ? "" : "s"}` : "no canvas";
      const from = turn.parent !== i - 1 ? (turn.parent >= 0 ? `from turn ${turn.parent + 1}, ` : "new conversation, ") : "";
      const meta = turn.error ? `failed: ${turn.error}` : turn.pending ? "planning…" : `${from}${regions}${turn.edited ? ", edited" : ""}`;
      return el(
        "li",
        { class: `turn${turn.error ? " failed" : ""}` },
        el(
          "button",
          {
            type: "button",
            "aria-current": i === state.activeTurn ? "true" : "false",
            disabled: !turn.canvas,
            onclick: () => goToTurn(i),
          },
          el("span", { class: "who", text: `Turn ${i + 1}` }),
          turn.prompt,
          el("span", { class: "meta", text: meta }),
        ),
      );
    }),
  );
}

function goToTurn(i) {
  const turn = state.turns[i];
  if (!turn?.canvas) return;
  state.activeTurn = i;
  state.selected = null;
  state.userEdited = false;
  turn.edited = false;
  setCanvas(clone(turn.canvas));
  renderTurns();
  setStatus(`Showing the canvas of turn ${i + 1}; the next prompt continues from here.`);
}

/**
 * What the planner saw before turn i's prompt and answered: the inline history of a branch.
 * Turns form a tree (any turn can be continued), so history follows the chosen turn's ancestors.
 */
function contextOf(index) {
  if (index < 0) return [];
  const turn = state.turns[index];
  return [...turn.sentTurns, { role: "user", content: turn.prompt }, { role: "assistant", content: turn.code }];
}

/** The planner's own rule (planner_service.prompting.with_canvas): a given canvas is the assistant's last word. */
function withCanvas(history, canvas) {
  if (!canvas) return history;
  const code = canvasToCode(canvas);
  if (history.length && history[history.length - 1].role === "assistant") {
    return [...history.slice(0, -1), { role: "assistant", content: code }];
  }
  return [...history, { role: "user", content: state.config.edit_lead_in }, { role: "assistant", content: code }];
}

async function plan(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) {
    showError("plan-error", "Write a prompt first.");
    $("prompt").focus();
    return;
  }
  showError("plan-error", "");
  const body = { prompt, stream: true };
  const seed = $("plan-seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  const temperature = $("plan-temperature").value.trim();
  if (temperature !== "") body.temperature = Number(temperature);
  const maxTokens = $("plan-max-tokens").value.trim();
  if (maxTokens !== "") body.max_new_tokens = Number(maxTokens);
  const parent = state.activeTurn;
  body.history = contextOf(parent);
  if ($("plan-from-canvas").checked && state.userEdited) {
    // The canvas shown, with the user's edits, is this turn's starting point.
    body.canvas = state.canvas;
  }
  const turn = {
    prompt, parent, sentTurns: withCanvas(body.history, body.canvas), canvas: null, code: "", pending: true, error: null, edited: false,
  };
  state.turns.push(turn);
  const turnIndex = state.turns.length - 1;
  renderTurns();
  const abort = new AbortController();
  state.planAbort = abort;
  $("plan-submit").disabled = true;
  $("plan-stop").hidden = false;
  $("stream").hidden = false;
  $("stream-text").textContent = "";
  setStatus("Planning…");
  const started = performance.now();
  const handler = planStreamHandler({
    onText: (text) => {
      $("stream-text").textContent = text;
      $("stream-text").scrollTop = $("stream-text").scrollHeight;
    },
    onRetry: (info) => setStatus(`Planning, attempt ${info?.attempt ?? "again"}: the last answer did not parse (${info?.error ?? ""}).`),
  });
  try {
    const url = `${state.config.planner_api_url}/v1/plans`;
    const token = $("plan-token").value.trim();
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await openEvents(url, { method: "POST", body, signal: abort.signal, headers });
    const type = response.headers.get("content-type") || "";
    let result;
    if (type.includes("text/event-stream")) {
      for await (const ev of readEvents(response)) {
        result = handler.event(ev);
        if (result) break;
      }
      result = result || handler.end();
    } else {
      result = handler.json(await response.json());
    }
    turn.canvas = result.canvas;
    turn.code = result.code || canvasToCode(result.canvas);
    turn.pending = false;
    state.activeTurn = turnIndex;
    state.selected = null;
    state.userEdited = false;
    setCanvas(clone(result.canvas), "plan");
    const notes = result.corrections?.length ? ` Corrections: ${result.corrections.map((c) => (typeof c === "string" ? c : JSON.stringify(c))).join("; ")}.` : "";
    setStatus(`Planned in ${((performance.now() - started) / 1000).toFixed(1)} s: ${result.canvas.local_descriptions.length} regions.${notes}`);
    $("prompt").value = "";
  } catch (err) {
    turn.pending = false;
    turn.error = err.name === "AbortError" ? "stopped" : err.message;
    if (err.name !== "AbortError") showError("plan-error", err.message);
    setStatus(err.name === "AbortError" ? "Planning stopped." : "Planning failed.");
  } finally {
    state.planAbort = null;
    $("plan-submit").disabled = false;
    $("plan-stop").hidden = true;
    $("stream").hidden = true;
    renderTurns();
  }
}

// ------------------------------------------------------------------------------------------------
// Rendering

function renderHeaders() {
  const token = $("r-token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function renderApi(path) {
  return `${state.config.render_api_url}${path}`;
}

function absolute(url) {
  return new URL(url, `${state.config.render_api_url}/`).href;
}

function renderRequest() {
  const num = (id) => Number($(id).value);
  const body = {
    canvas: state.canvas,
    width: num("r-width"),
    height: num("r-height"),
    steps: num("r-steps"),
    guidance_scale: num("r-guidance"),
    sampler: $("r-sampler").value,
    num_images: num("r-images"),
    negative_prompt: $("r-negative").value,
  };
  const seed = $("r-seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  if ($("r-hires").checked) {
    body.hires_fix = { scale: num("r-hires-scale"), steps: num("r-hires-steps"), denoise: num("r-hires-denoise") };
  }
  return body;
}

function updateCurl() {
  if (!state.canvas) return;
  $("curl").value = curlCommand(renderApi("/v1/renders"), renderRequest(), { token: Boolean($("r-token").value.trim()) });
}

async function copyCurl() {
  updateCurl();
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

function updateAspect() {
  const w = Number($("r-width").value) || 1;
  const h = Number($("r-height").value) || 1;
  $("stage").style.setProperty("--aspect", `${w} / ${h}`);
}

async function render(event) {
  event.preventDefault();
  showError("render-error", "");
  const problem = canvasProblem(state.canvas);
  if (problem) {
    showError("render-error", problem);
    return;
  }
  const body = renderRequest();
  $("render-submit").disabled = true;
  try {
    const accepted = await requestJSON(renderApi("/v1/renders"), { method: "POST", body, headers: renderHeaders() });
    const job = { id: accepted.id, status: accepted.status, urls: accepted.urls, request: body, step: 0, total: body.steps };
    addJobCard(job);
    setStatus(`Render ${job.id} queued.`);
    followJob(job);
  } catch (err) {
    showError("render-error", err.message);
    setStatus("Render refused.");
  } finally {
    $("render-submit").disabled = false;
  }
}

function addJobCard(job) {
  const progress = el("progress", { max: "1", value: "0", "aria-label": `Progress of render ${job.id}` });
  const stateText = el("span", { class: "state", text: job.status });
  const stepText = el("span", { class: "steps", text: "" });
  const cancel = el("button", { type: "button", class: "danger cancel", text: "Cancel", onclick: () => cancelJob(job) });
  const r = job.request;
  const params = [
    `${r.width}×${r.height}`, `${r.steps} steps`, `guidance ${r.guidance_scale}`, r.sampler,
    `seed ${r.seed ?? "random"}`, `${r.num_images} image${r.num_images > 1 ? "s" : ""}`,
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
        onclick: () => reuseJob(job),
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

async function followJob(job) {
  updateJobCard(job);
  const eventsUrl = absolute(job.urls?.events || `/v1/renders/${job.id}/events`);
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
      const record = await requestJSON(absolute(job.urls?.self || `/v1/renders/${job.id}`), { headers: renderHeaders() });
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
  if (job.status === "succeeded") await showImages(job);
}

async function showImages(job) {
  const record = job.record;
  const urls = record.urls?.images?.length
    ? record.urls.images
    : Array.from({ length: record.num_images || job.request.num_images }, (_, n) => `/v1/renders/${job.id}/images/${n}`);
  const box = job.card.querySelector(".images");
  for (const [n, url] of urls.entries()) {
    try {
      const response = await fetch(absolute(url), { headers: renderHeaders() });
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

function reuseJob(job) {
  const r = job.request;
  for (const [id, value] of [["r-width", r.width], ["r-height", r.height], ["r-steps", r.steps], ["r-guidance", r.guidance_scale],
    ["r-images", r.num_images], ["r-seed", r.seed ?? ""], ["r-negative", r.negative_prompt]]) {
    $(id).value = value;
  }
  $("r-sampler").value = r.sampler;
  $("r-hires").checked = Boolean(r.hires_fix);
  $("r-hires").dispatchEvent(new Event("change"));
  if (r.hires_fix) {
    $("r-hires-scale").value = r.hires_fix.scale;
    $("r-hires-steps").value = r.hires_fix.steps;
    $("r-hires-denoise").value = r.hires_fix.denoise;
  }
  updateAspect();
  state.selected = null;
  canvasEdited(clone(r.canvas), "reuse");
  setStatus(`The canvas and parameters of render ${job.id} are in the editor.`);
}

async function cancelJob(job) {
  try {
    await requestJSON(absolute(job.urls?.self || `/v1/renders/${job.id}`), { method: "DELETE", headers: renderHeaders() });
    setStatus(`Cancel requested for ${job.id}.`);
  } catch (err) {
    job.error = err.message;
    updateJobCard(job);
  }
}

// ------------------------------------------------------------------------------------------------
// Start

function setupRenderForm() {
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
  $("r-token").value = sessionStorage.getItem("omost-render-token") || "";
  $("plan-token").value = sessionStorage.getItem("omost-planner-token") || "";
  $("plan-token").addEventListener("change", () => sessionStorage.setItem("omost-planner-token", $("plan-token").value.trim()));
  $("r-token").addEventListener("change", () => sessionStorage.setItem("omost-render-token", $("r-token").value.trim()));
  $("r-hires").addEventListener("change", () => {
    $("hires-fields").hidden = !$("r-hires").checked;
    $("hires-fields").disabled = !$("r-hires").checked;
  });
  $("render-form").addEventListener("input", () => {
    updateAspect();
    updateCurl();
  });
  $("render-form").addEventListener("submit", render);
  $("copy-curl").addEventListener("click", copyCurl);
  updateAspect();
}

async function main() {
  try {
    state.config = await requestJSON("/playground/config.json");
  } catch (err) {
    setStatus(`Cannot load the playground's configuration: ${err.message}`);
    return;
  }
  state.layout = makeLayout(state.config.tables);
  $("plan-temperature").value = state.config.llm_defaults.temperature;
  setupRenderForm();
  setupTabs();
  $("plan-form").addEventListener("submit", plan);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("plan-form").requestSubmit();
  });
  $("plan-stop").addEventListener("click", () => state.planAbort?.abort());
  $("new-chat").addEventListener("click", () => {
    state.activeTurn = -1;
    renderTurns();
    setStatus("New conversation: the next prompt starts afresh (or from the canvas shown, if you edit it). Earlier turns stay listed.");
  });
  $("add-region").addEventListener("click", addRegion);
  $("delete-region").addEventListener("click", () => deleteRegion());
  $("edit-global").addEventListener("click", () => {
    select("global");
    showTab("fields");
    $("f-description")?.focus();
  });
  $("code").addEventListener("input", debounce(fromCode, 300));
  $("json").addEventListener("input", debounce(fromJSON, 300));
  setCanvas(clone(STARTER), "start");
  document.body.dataset.ready = "true";
  if (!state.config.render_api_url) {
    $("render-submit").disabled = true;
    showError("render-error", "The render API's address is not configured on the planner, so this page cannot render.");
    setStatus(`Ready to plan (planner: ${location.origin}); rendering is off: no render API address.`);
    return;
  }
  setStatus(`Ready. Planner: ${location.origin}; render API: ${state.config.render_api_url}.`);
}

main();
