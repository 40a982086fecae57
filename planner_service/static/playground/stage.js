// The canvas stage: the colour composition, the boxes in layer order and the layer list; dragging
// and resizing with snapping (pointer) and the keyboard equivalents; adding and deleting regions.
// ``app`` is the page's wiring (app.js): its ``state`` and the actions that cross modules.

import { clone } from "./canvas_model.js";
import { highlights } from "./changes.js";
import { $, el, setStatus } from "./dom.js";
import { GRID } from "./layout.js";

function drawComposition(state) {
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

function regionRect(state, region) {
  return state.layout.placementRect(region.location, region.offset, region.area);
}

function regionLabel(index, region) {
  return `${index + 1}. ${region.description}`;
}

export function renderBoxes(app) {
  const { state } = app;
  const boxes = $("boxes");
  const order = state.layout.layerOrder(state.canvas);
  const marks = highlights(state.changes);
  const existing = [...boxes.children];
  const sameShape = existing.length === order.length && existing.every((node, i) => Number(node.dataset.index) === order[i].index);
  if (!sameShape) {
    boxes.replaceChildren(
      ...order.map(({ index }) => {
        const box = el("button", { type: "button", class: "box", "data-index": String(index) }, el("span", { class: "label" }));
        for (const corner of ["nw", "ne", "sw", "se"]) box.append(el("span", { class: `handle ${corner}`, "data-handle": corner }));
        box.addEventListener("pointerdown", (event) => onBoxPointerDown(app, event));
        box.addEventListener("keydown", (event) => onBoxKey(app, event));
        box.addEventListener("click", () => app.select(index));
        return box;
      }),
    );
  }
  for (const [z, { region, index }] of order.entries()) {
    const box = boxes.children[z];
    rectStyle(box, regionRect(state, region));
    // Layer order (far to near); the selected box is lifted on top so its handles can be reached.
    box.style.zIndex = String(state.selected === index ? order.length + 1 : z + 1);
    box.querySelector(".label").textContent = regionLabel(index, region);
    box.classList.toggle("selected", state.selected === index);
    if (marks.has(index)) box.dataset.change = marks.get(index);
    else delete box.dataset.change;
    box.setAttribute("aria-pressed", state.selected === index ? "true" : "false");
    const change = marks.has(index) ? ` (${marks.get(index)} by the last plan)` : "";
    box.setAttribute(
      "aria-label",
      `Region ${index + 1}: ${region.description} — ${region.location}, ${region.offset}, ${region.area}, distance ${region.distance_to_viewer}${change}`,
    );
  }
}

export function renderLayers(app) {
  const { state } = app;
  const order = state.layout.layerOrder(state.canvas);
  $("layers").replaceChildren(
    ...order.map(({ region, index }) => {
      const [r, g, b] = state.config.tables.colors[region.HTML_web_color_name] || [0, 0, 0];
      return el(
        "li",
        {},
        el(
          "button",
          { type: "button", "aria-current": state.selected === index ? "true" : "false", onclick: () => app.select(index, true) },
          el("span", { class: "swatch", style: `background: rgb(${r}, ${g}, ${b})` }),
          `${regionLabel(index, region)} (distance ${region.distance_to_viewer})`,
        ),
      );
    }),
  );
}

export function renderStage(app) {
  drawComposition(app.state);
  renderBoxes(app);
  renderLayers(app);
}

function gridPoint(event) {
  const r = $("stage").getBoundingClientRect();
  return [((event.clientY - r.top) / r.height) * GRID, ((event.clientX - r.left) / r.width) * GRID];
}

function onBoxPointerDown(app, event) {
  const { state } = app;
  if (event.button !== 0) return;
  const box = event.currentTarget;
  const index = Number(box.dataset.index);
  if (state.selected !== index) app.select(index);
  const region = state.canvas.local_descriptions[index];
  state.drag = {
    index,
    box,
    mode: event.target.dataset.handle || "move",
    start: gridPoint(event),
    rect: regionRect(state, region),
    moved: false,
  };
  const move = (e) => onBoxPointerMove(app, e);
  const up = (e) => {
    box.removeEventListener("pointermove", move);
    box.removeEventListener("pointerup", up);
    box.removeEventListener("pointercancel", up);
    onBoxPointerUp(app, e);
  };
  box.setPointerCapture(event.pointerId);
  box.addEventListener("pointermove", move);
  box.addEventListener("pointerup", up);
  box.addEventListener("pointercancel", up);
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

function applyRect(app, index, rect) {
  const { state } = app;
  const region = state.canvas.local_descriptions[index];
  const snapped = state.layout.snapToPlacement(rect, region);
  if (snapped.location === region.location && snapped.offset === region.offset && snapped.area === region.area) return false;
  const canvas = clone(state.canvas);
  Object.assign(canvas.local_descriptions[index], snapped);
  app.canvasEdited(canvas, "drag");
  return true;
}

function onBoxPointerMove(app, event) {
  const drag = app.state.drag;
  if (!drag) return;
  const rect = draggedRect(drag, gridPoint(event));
  drag.moved = true;
  const ghost = $("ghost");
  ghost.hidden = false;
  rectStyle(ghost, rect);
  applyRect(app, drag.index, rect);
}

function onBoxPointerUp(app, event) {
  const { state } = app;
  const drag = state.drag;
  const box = event.currentTarget;
  if (box.hasPointerCapture(event.pointerId)) box.releasePointerCapture(event.pointerId);
  $("ghost").hidden = true;
  state.drag = null;
  if (drag?.moved) {
    const r = state.canvas.local_descriptions[drag.index];
    setStatus(`Region ${drag.index + 1} snapped to ${r.location}, ${r.offset}, ${r.area}.`);
  }
}

function onBoxKey(app, event) {
  const { state } = app;
  const index = Number(event.currentTarget.dataset.index);
  const step = 10; // one Omost offset step in the 90-grid
  const moves = { ArrowUp: [-step, 0], ArrowDown: [step, 0], ArrowLeft: [0, -step], ArrowRight: [0, step] };
  if (event.key in moves) {
    event.preventDefault();
    const [dy, dx] = moves[event.key];
    let [top, bottom, left, right] = regionRect(state, state.canvas.local_descriptions[index]);
    if (event.shiftKey) {
      bottom = Math.max(top + 1, bottom + dy);
      right = Math.max(left + 1, right + dx);
    } else {
      top += dy; bottom += dy; left += dx; right += dx;
    }
    if (applyRect(app, index, [top, bottom, left, right])) {
      const r = state.canvas.local_descriptions[index];
      setStatus(`Region ${index + 1}: ${r.location}, ${r.offset}, ${r.area}.`);
    }
    $("boxes").querySelector(`[data-index="${index}"]`)?.focus();
  } else if (event.key === "Delete" || event.key === "Backspace") {
    event.preventDefault();
    deleteRegion(app, index);
  } else if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    app.select(index);
    app.showTab("fields");
    $("fields").querySelector("input, textarea, select")?.focus();
  }
}

export function addRegion(app) {
  const { state } = app;
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
  app.canvasEdited(canvas, "add");
  app.select(state.selected, true);
  setStatus(`Region ${state.selected + 1} added.`);
}

export function deleteRegion(app, index = app.state.selected) {
  const { state } = app;
  if (typeof index !== "number") return;
  const canvas = clone(state.canvas);
  canvas.local_descriptions.splice(index, 1);
  state.selected = null;
  app.canvasEdited(canvas, "delete");
  app.renderFields();
  setStatus(`Region ${index + 1} deleted.`);
  $("add-region").focus();
}
