// Chat and planning: the prompt form, the streamed plan, and the turns (a tree: any turn can be
// continued, and its history goes along inline).

import { openEvents, readEvents } from "./api.js";
import { clone } from "./canvas_model.js";
import { canvasChanges, changesSummary } from "./changes.js";
import { $, el, setStatus, showError } from "./dom.js";
import { canvasToCode } from "./omost.js";
import { planStreamHandler } from "./plan_stream.js";

export function renderTurns(app) {
  const { state } = app;
  $("turns").replaceChildren(
    ...state.turns.map((turn, i) => {
      const n = turn.canvas?.local_descriptions.length;
      const regions = turn.canvas ? `${n} region${n === 1 ? "" : "s"}` : "no canvas";
      const from = turn.parent !== i - 1 ? (turn.parent >= 0 ? `from turn ${turn.parent + 1}, ` : "new conversation, ") : "";
      const meta = turn.error ? `failed: ${turn.error}` : turn.pending ? "planning…" : `${from}${regions}${turn.edited ? ", edited" : ""}`;
      const changes = turn.canvas && turn.changes ? el("span", { class: "changes", text: `Changes: ${changesSummary(turn.changes)}` }) : null;
      return el(
        "li",
        { class: `turn${turn.error ? " failed" : ""}` },
        el(
          "button",
          {
            type: "button",
            "aria-current": i === state.activeTurn ? "true" : "false",
            disabled: !turn.canvas,
            onclick: () => goToTurn(app, i),
          },
          el("span", { class: "who", text: `Turn ${i + 1}` }),
          turn.prompt,
          el("span", { class: "meta", text: meta }),
          changes,
        ),
      );
    }),
  );
}

function goToTurn(app, i) {
  const { state } = app;
  const turn = state.turns[i];
  if (!turn?.canvas) return;
  state.activeTurn = i;
  state.selected = null;
  state.userEdited = false;
  state.changes = turn.changes;
  turn.edited = false;
  app.setCanvas(clone(turn.canvas));
  renderTurns(app);
  setStatus(`Showing the canvas of turn ${i + 1}; the next prompt continues from here.`);
}

/**
 * What the planner saw before turn i's prompt and answered: the inline history of a branch.
 * Turns form a tree (any turn can be continued), so history follows the chosen turn's ancestors.
 */
function contextOf(state, index) {
  if (index < 0) return [];
  const turn = state.turns[index];
  return [...turn.sentTurns, { role: "user", content: turn.prompt }, { role: "assistant", content: turn.code }];
}

/** The planner's own rule (planner_service.prompting.with_canvas): a given canvas is the assistant's last word. */
function withCanvas(state, history, canvas) {
  if (!canvas) return history;
  const code = canvasToCode(canvas);
  if (history.length && history[history.length - 1].role === "assistant") {
    return [...history.slice(0, -1), { role: "assistant", content: code }];
  }
  return [...history, { role: "user", content: state.config.edit_lead_in }, { role: "assistant", content: code }];
}

async function plan(app, event) {
  const { state } = app;
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
  body.history = contextOf(state, parent);
  if ($("plan-from-canvas").checked && state.userEdited) {
    // The canvas shown, with the user's edits, is this turn's starting point.
    body.canvas = state.canvas;
  }
  // The canvas the planner edits (none for a new conversation): what this turn's changes are against.
  const previous = body.canvas ? clone(body.canvas) : parent >= 0 ? state.turns[parent].canvas : null;
  const turn = {
    prompt, parent, sentTurns: withCanvas(state, body.history, body.canvas), canvas: null, code: "", changes: null, pending: true, error: null, edited: false,
  };
  state.turns.push(turn);
  const turnIndex = state.turns.length - 1;
  renderTurns(app);
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
    // The planner's own account when it gives one (PlanResponse.changes), else the same diff computed here.
    turn.changes = result.changes !== undefined ? result.changes : canvasChanges(previous, result.canvas);
    turn.pending = false;
    state.activeTurn = turnIndex;
    state.selected = null;
    state.userEdited = false;
    state.changes = turn.changes;
    app.setCanvas(clone(result.canvas), "plan");
    const notes = result.corrections?.length ? ` Corrections: ${result.corrections.map((c) => (typeof c === "string" ? c : JSON.stringify(c))).join("; ")}.` : "";
    const changed = turn.changes ? ` Changes: ${changesSummary(turn.changes)}.` : "";
    setStatus(`Planned in ${((performance.now() - started) / 1000).toFixed(1)} s: ${result.canvas.local_descriptions.length} regions.${changed}${notes}`);
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
    renderTurns(app);
  }
}

export function setupChat(app) {
  const { state } = app;
  $("plan-form").addEventListener("submit", (event) => plan(app, event));
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("plan-form").requestSubmit();
  });
  $("plan-stop").addEventListener("click", () => state.planAbort?.abort());
  $("new-chat").addEventListener("click", () => {
    state.activeTurn = -1;
    renderTurns(app);
    setStatus("New conversation: the next prompt starts afresh (or from the canvas shown, if you edit it). Earlier turns stay listed.");
  });
}
