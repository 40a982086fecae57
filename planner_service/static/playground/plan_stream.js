// Reading the planner's answer to POST /v1/plans with stream=true (planner_service/routers/plans.py).
// Each event's data is the JSON of its model in the contract, shared/plans.py (PLAN_EVENTS):
//   event "delta": PlanDelta {"text": "..."}              a piece of the code as the model writes it
//   event "retry": PlanRetry {"attempt": n, "error": ""}  the answer did not parse; a new attempt starts
//   event "plan":  PlanResult                             the parsed canvas, code, corrections, ... (last)
//   event "error": PlanError {"status": s, "detail": ""}  the planner's failure, as its HTTP error body (last)
// tests/shared/test_plan_events.py feeds this reader the contract's events under node.

import { ApiError } from "./api.js";

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

function errorMessage(payload) {
  if (typeof payload === "string") return payload;
  const detail = payload?.detail ?? payload?.error ?? payload?.message;
  if (typeof detail === "string") return detail;
  if (detail && typeof detail === "object") return detail.message || JSON.stringify(detail);
  return JSON.stringify(payload);
}

/** Collects the streamed text; ``event`` returns the PlanResponse once the final event arrives. */
export function planStreamHandler({ onText, onRetry = () => {} }) {
  let text = "";
  const result = (payload) => {
    if (!payload || typeof payload !== "object" || !payload.canvas) {
      throw new ApiError("the planner's final event holds no canvas", 502, payload);
    }
    return payload;
  };
  return {
    event({ event, data }) {
      const payload = parse(data);
      switch (event) {
        case "delta":
          text += typeof payload === "string" ? payload : payload?.text ?? "";
          onText(text);
          return null;
        case "retry":
          text = "";
          onText(text);
          onRetry(payload);
          return null;
        case "plan":
          return result(payload);
        case "error":
          throw new ApiError(errorMessage(payload), payload?.status || 502, payload);
        default:
          return null; // unknown events are for newer pages; ignore them
      }
    },
    end() {
      throw new ApiError("the planner's stream ended without a plan", 502, null);
    },
    json(payload) {
      return result(payload);
    },
  };
}
