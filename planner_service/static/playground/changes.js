// What an edit changed, in the shape the planner's PlanResponse.changes has (shared/plans.py):
//   {global_fields: [name], regions: [{kind: "added"|"removed"|"changed", index, description, fields}]}
// with ``index`` in the new canvas for added/changed regions and in the previous one for removed ones.
// The page uses the planner's ``changes`` when it sends them and computes the same here otherwise
// (an older planner, or the user's own edits).

import { GLOBAL_FIELDS, REGION_FIELDS } from "./canvas_model.js";

const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
const key = (description) => String(description).trim().toLowerCase();

/**
 * Regions are matched first by equal description (case and surrounding spaces aside), in order;
 * then a leftover previous region is matched to a leftover new one at the same location (the
 * edit rewrote what is there: "make the dog a corgi"). Whatever stays unmatched was removed or added.
 */
export function matchRegions(previous, next) {
  const pairs = new Map(); // new index -> previous index
  const used = new Set();
  for (const pass of [(p, n) => key(p.description) === key(n.description), (p, n) => p.location === n.location]) {
    for (const [j, n] of next.entries()) {
      if (pairs.has(j)) continue;
      const i = previous.findIndex((p, k) => !used.has(k) && pass(p, n));
      if (i >= 0) {
        pairs.set(j, i);
        used.add(i);
      }
    }
  }
  return pairs;
}

/** The changes from ``previous`` to ``next`` (null without a previous canvas, like the planner's). */
export function canvasChanges(previous, next) {
  if (!previous) return null;
  const pg = previous.global_description;
  const ng = next.global_description;
  const globalFields = GLOBAL_FIELDS.filter((f) => !same(pg[f], ng[f]));
  const before = previous.local_descriptions;
  const after = next.local_descriptions;
  const pairs = matchRegions(before, after);
  const regions = [];
  for (const [j, n] of after.entries()) {
    if (!pairs.has(j)) {
      regions.push({ kind: "added", index: j, description: n.description, fields: [] });
      continue;
    }
    const fields = REGION_FIELDS.filter((f) => !same(before[pairs.get(j)][f], n[f]));
    if (fields.length) regions.push({ kind: "changed", index: j, description: n.description, fields });
  }
  const matched = new Set(pairs.values());
  for (const [i, p] of before.entries()) {
    if (!matched.has(i)) regions.push({ kind: "removed", index: i, description: p.description, fields: [] });
  }
  return { global_fields: globalFields, regions };
}

/** One line for the chat turn: "1 added (The bird.) · 1 changed (The corgi.: description) · …". */
export function changesSummary(changes) {
  if (!changes) return "";
  const parts = [];
  for (const kind of ["added", "changed", "removed"]) {
    const items = changes.regions.filter((r) => r.kind === kind);
    if (!items.length) continue;
    const what = items.map((r) => (kind === "changed" && r.fields.length ? `${r.description}: ${r.fields.join(", ")}` : r.description));
    parts.push(`${items.length} ${kind} (${what.join("; ")})`);
  }
  if (changes.global_fields.length) parts.push(`global: ${changes.global_fields.join(", ")}`);
  return parts.length ? parts.join(" · ") : "nothing changed";
}

/** Region index (in the shown canvas) -> "added" | "changed", for highlighting boxes. */
export function highlights(changes) {
  const marks = new Map();
  for (const r of changes?.regions ?? []) if (r.kind !== "removed") marks.set(r.index, r.kind);
  return marks;
}
