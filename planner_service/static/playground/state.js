// The page's state (one object, created once by app.js and passed to every module) and the
// example canvas the editor starts with.

export const STARTER = {
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

export function createState(config, layout) {
  return {
    config, // /playground/config.json
    layout, // layout.js for the config's tables
    canvas: null,
    selected: null, // region index, "global" or null
    changes: null, // what the shown turn's plan changed (changes.js), highlighted until the canvas is edited
    turns: [],
    activeTurn: -1,
    planAbort: null,
    drag: null,
    userEdited: false,
    models: [], // GET /v1/models's list (empty: not read, or it failed): models.js
    defaultModel: null, // the name a request without `model` gets, as the render API says
  };
}
