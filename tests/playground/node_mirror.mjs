// Runs the playground's ES modules under node for tests/shared/test_placement.py: reads a JSON job on stdin,
// answers what layout.js and omost.js compute for it as JSON on stdout.
import { makeLayout } from "../../planner_service/static/playground/layout.js";
import { canvasToCode, parseCanvasCode } from "../../planner_service/static/playground/omost.js";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const job = JSON.parse(input);
const layout = makeLayout(job.tables);
const out = {
  placements: layout.placements.map((p) => [p.location, p.offset, p.area]),
  rects: layout.placements.map((p) => layout.placementRect(p.location, p.offset, p.area)),
  snaps: job.snaps.map(([rect, prefer]) => {
    const s = layout.snapToPlacement(rect, prefer && { location: prefer[0], offset: prefer[1], area: prefer[2] });
    return [s.location, s.offset, s.area];
  }),
  images: job.canvases.map((c) => Buffer.from(layout.initialImage(c)).toString("base64")),
  codes: job.canvases.map((c) => canvasToCode(c)),
  parsed: job.texts.map((t) => {
    try {
      return { canvas: parseCanvasCode(t) };
    } catch (e) {
      return { error: String(e.message) };
    }
  }),
};
process.stdout.write(JSON.stringify(out));
