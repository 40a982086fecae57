// The canvas model: validation with the services' rules (so a bad edit is refused with a reason
// before it is sent), and the normal form the code and JSON views produce.

export const clone = (value) => structuredClone(value);

const LOCAL_DEFAULTS = { detailed_descriptions: [], tags: "", atmosphere: "", style: "", quality_meta: "" };
export const GLOBAL_FIELDS = ["description", "detailed_descriptions", "tags", "HTML_web_color_name"];
export const REGION_FIELDS = [
  "location", "offset", "area", "distance_to_viewer", "description", "detailed_descriptions", "tags", "atmosphere", "style",
  "quality_meta", "HTML_web_color_name",
];

/** A readable complaint when a canvas (from code or JSON) would not pass the services' validation. */
export function canvasProblem(canvas, { tables, limits }) {
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

export function normalised(canvas) {
  const g = { detailed_descriptions: [], tags: "", ...canvas.global_description };
  return {
    global_description: Object.fromEntries(GLOBAL_FIELDS.map((k) => [k, g[k]])),
    local_descriptions: canvas.local_descriptions.map((r) => {
      const full = { ...LOCAL_DEFAULTS, ...r };
      return Object.fromEntries(REGION_FIELDS.map((k) => [k, full[k]]));
    }),
  };
}
