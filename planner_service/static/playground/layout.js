// Omost layout maths for the playground, mirroring shared/layout.py exactly:
// placement_rect, all_placements, rect_distance, snap_to_placement and the colour composition
// (CanvasLayout.initial_image at the 90-grid). The tables come from the server's config
// (shared.contract), so nothing here restates the contract. tests/shared/test_placement.py runs this
// file under node and checks it against the Python functions on all 729 placements.

export const GRID = 90;

const F32_03 = Math.fround(0.3);
const clip = (v) => Math.max(0, Math.min(GRID, v));
// Python's floor division for the (always integer) half sizes.
const half = (v) => Math.floor(v / 2);

export function makeLayout(tables) {
  const { locations, offsets, areas, colors } = tables;
  const offsetNames = Object.keys(offsets);
  const locationNames = Object.keys(locations);
  const areaNames = Object.keys(areas);

  /** [top, bottom, left, right] in the 90-grid, clipped: shared.layout.placement_rect. */
  function placementRect(location, offset, area) {
    const [cx, cy] = locations[location];
    const [dx, dy] = offsets[offset];
    const [w, h] = areas[area];
    const x = cx + dx;
    const y = cy + dy;
    return [y - half(h), y + half(h), x - half(w), x + half(w)].map(clip);
  }

  /** The 729 placements in tie-break order (offsets, then locations, then areas). */
  const placements = [];
  for (const offset of offsetNames) {
    for (const location of locationNames) {
      for (const area of areaNames) placements.push({ location, offset, area });
    }
  }
  const rects = placements.map((p) => placementRect(p.location, p.offset, p.area));

  /** L1 distance on the four edges. */
  function rectDistance(a, b) {
    return Math.abs(a[0] - b[0]) + Math.abs(a[1] - b[1]) + Math.abs(a[2] - b[2]) + Math.abs(a[3] - b[3]);
  }

  /** The nearest valid placement to rect; ties go to prefer, then to table order. */
  function snapToPlacement(rect, prefer = null) {
    let best = null;
    let bestDistance = Infinity;
    for (let i = 0; i < placements.length; i++) {
      const d = rectDistance(rect, rects[i]);
      if (d < bestDistance) {
        best = placements[i];
        bestDistance = d;
      }
    }
    if (prefer && prefer.location in locations && prefer.offset in offsets && prefer.area in areas) {
      const own = placementRect(prefer.location, prefer.offset, prefer.area);
      if (rectDistance(rect, own) === bestDistance) {
        return { location: prefer.location, offset: prefer.offset, area: prefer.area };
      }
    }
    return { ...best };
  }

  /** Regions sorted far to near (stable), as shared.layout.layout_canvas orders them. */
  function layerOrder(canvas) {
    const indexed = canvas.local_descriptions.map((region, index) => ({ region, index }));
    indexed.sort((a, b) => (b.region.distance_to_viewer || 0) - (a.region.distance_to_viewer || 0));
    return indexed;
  }

  /** The 90x90 colour composition as RGBA bytes, with Omost's arithmetic (CanvasLayout.initial_image). */
  function initialImage(canvas) {
    const rgba = new Uint8ClampedArray(GRID * GRID * 4);
    const image = new Float32Array(GRID * GRID * 3);
    const g = colors[canvas.global_description.HTML_web_color_name] || [0, 0, 0];
    for (let i = 0; i < GRID * GRID; i++) image.set(g, i * 3);
    for (const { region } of layerOrder(canvas)) {
      const color = colors[region.HTML_web_color_name];
      if (!color || !(region.location in locations) || !(region.offset in offsets) || !(region.area in areas)) continue;
      const [top, bottom, left, right] = placementRect(region.location, region.offset, region.area);
      for (let y = top; y < bottom; y++) {
        for (let x = left; x < right; x++) {
          const k = (y * GRID + x) * 3;
          // numpy: 0.7 * uint8 is float64, 0.3 * float32 stays float32, the sum is stored as float32.
          for (let c = 0; c < 3; c++) image[k + c] = Math.fround(0.7 * color[c] + Math.fround(F32_03 * image[k + c]));
        }
      }
    }
    for (let i = 0; i < GRID * GRID; i++) {
      for (let c = 0; c < 3; c++) rgba[i * 4 + c] = Math.trunc(Math.max(0, Math.min(255, image[i * 3 + c])));
      rgba[i * 4 + 3] = 255;
    }
    return rgba;
  }

  return {
    placements,
    placementRect,
    rectDistance,
    snapToPlacement,
    layerOrder,
    initialImage,
    names: { locations: locationNames, offsets: offsetNames, areas: areaNames, colors: Object.keys(colors) },
  };
}
