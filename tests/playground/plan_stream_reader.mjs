// Runs the playground's plan-stream reader (plan_stream.js) under node for tests/shared/test_plan_events.py:
// reads a JSON list of Server-Sent Events ({event, data}) on stdin, feeds them to the reader in order and
// answers, as JSON on stdout, the text it showed after each event, the retries it announced, and how the
// stream ended (the plan it returned, or the error it threw).
import { planStreamHandler } from "../../planner_service/static/playground/plan_stream.js";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const texts = [];
const retries = [];
const reader = planStreamHandler({ onText: (text) => texts.push(text), onRetry: (r) => retries.push(r) });
const out = { texts, retries, plan: null, error: null };
try {
  for (const sse of JSON.parse(input)) {
    const plan = reader.event(sse);
    if (plan) {
      out.plan = plan;
      break;
    }
  }
  if (!out.plan) reader.end();
} catch (e) {
  out.error = { message: String(e.message), status: e.status ?? null };
}
process.stdout.write(JSON.stringify(out));
