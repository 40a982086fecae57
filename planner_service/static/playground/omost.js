// The Omost code form of a canvas in the browser: canvasToCode mirrors shared.omost_code.canvas_to_code
// (tests/shared/test_placement.py checks it against Python under node), and parseCanvasCode reads the same
// whitelisted form the server accepts (canvas = Canvas(), the two method calls with literal arguments,
// comments) without evaluating anything. The server stays the judge: the render API and the planner
// validate whatever the page sends.

export const GLOBAL_ARGUMENTS = ["description", "detailed_descriptions", "tags", "HTML_web_color_name"];
export const LOCAL_ARGUMENTS = [
  "location", "offset", "area", "distance_to_viewer", "description", "detailed_descriptions",
  "tags", "atmosphere", "style", "quality_meta", "HTML_web_color_name",
];
const DEFAULTS = { detailed_descriptions: [], tags: "", atmosphere: "", style: "", quality_meta: "" };

// Characters Python's str.isprintable() rejects (space is printable).
const NON_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;
const isPrintable = (ch) => ch === " " || !NON_PRINTABLE.test(ch);

function hex(code, width) {
  return code.toString(16).padStart(width, "0");
}

/** Python's repr() of a str. */
export function pyRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (ch === quote || ch === "\\") out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code < 0x20 || code === 0x7f) out += "\\x" + hex(code, 2);
    else if (code < 0x7f || isPrintable(ch)) out += ch;
    else if (code <= 0xff) out += "\\x" + hex(code, 2);
    else if (code <= 0xffff) out += "\\u" + hex(code, 4);
    else out += "\\U" + hex(code, 8);
  }
  return out + quote;
}

/** Python's repr() of a float (shortest round-trip digits, scientific below 1e-4 and from 1e16). */
export function pyFloat(value) {
  if (!Number.isFinite(value)) return value > 0 ? "inf" : value < 0 ? "-inf" : "nan";
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const [m, e] = value.toExponential().split("e");
  const exponent = parseInt(e, 10);
  const sign = m.startsWith("-") ? "-" : "";
  const digits = m.replace(/[-.]/g, "");
  if (exponent < -4 || exponent >= 16) {
    const mantissa = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${mantissa}e${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  if (exponent < 0) return `${sign}0.${"0".repeat(-exponent - 1)}${digits}`;
  if (digits.length <= exponent + 1) return `${sign}${digits}${"0".repeat(exponent + 1 - digits.length)}.0`;
  return `${sign}${digits.slice(0, exponent + 1)}.${digits.slice(exponent + 1)}`;
}

const quoteArg = (text) => pyRepr(text).replaceAll("`", "\\x60");

function comment(description) {
  let printable = "";
  for (const ch of description) printable += isPrintable(ch) && ch !== "`" ? ch : " ";
  let words = printable.split(/[\s\x1c-\x1f\x85]+/u).filter(Boolean).join(" ");
  words = words.slice(0, 1).toLowerCase() + words.slice(1);
  return words.endsWith(".") ? words : words + ".";
}

function argumentLines(values, names) {
  const lines = [];
  for (const name of names) {
    const value = values[name] ?? DEFAULTS[name];
    if (Array.isArray(value)) {
      lines.push(`    ${name}=[`);
      for (const item of value) lines.push(`        ${quoteArg(item)},`);
      lines.push("    ],");
    } else if (typeof value === "number") {
      lines.push(`    ${name}=${pyFloat(value)},`);
    } else {
      lines.push(`    ${name}=${quoteArg(String(value ?? ""))},`);
    }
  }
  return lines;
}

/** The canvas in Omost's code form, fenced, exactly as shared.omost_code.canvas_to_code writes it. */
export function canvasToCode(canvas) {
  const out = ["```python", "# Initialize the canvas", "canvas = Canvas()", ""];
  out.push("# Set a global description for the canvas", "canvas.set_global_description(");
  out.push(...argumentLines(canvas.global_description, GLOBAL_ARGUMENTS), ")");
  for (const region of canvas.local_descriptions) {
    out.push("", `# Add ${comment(region.description)}`, "canvas.add_local_description(");
    out.push(...argumentLines(region, LOCAL_ARGUMENTS), ")");
  }
  out.push("```");
  return out.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Reading the code form back (for the editable code view). A small tokenizer, never eval.

export class CodeError extends Error {
  constructor(message, line) {
    super(line ? `line ${line}: ${message}` : message);
    this.line = line;
  }
}

const ESCAPES = { n: "\n", r: "\r", t: "\t", "\\": "\\", "'": "'", '"': '"', "\n": "", a: "\x07", b: "\b", f: "\f", v: "\v", "0": "\0" };

function tokenize(code) {
  const tokens = [];
  let i = 0;
  let line = 1;
  const n = code.length;
  while (i < n) {
    const ch = code[i];
    if (ch === "\n") { tokens.push({ t: "nl", line }); line++; i++; continue; }
    if (ch === " " || ch === "\t" || ch === "\r") { i++; continue; }
    if (ch === "#") { while (i < n && code[i] !== "\n") i++; continue; }
    if (ch === "\\" && code[i + 1] === "\n") { i += 2; line++; continue; }
    const prefix = /^[rRuUbBfF]{0,2}(?=['"])/.exec(code.slice(i, i + 3));
    if (prefix && (code[i] === "'" || code[i] === '"' || prefix[0].length)) {
      const flags = prefix[0].toLowerCase();
      if (flags.includes("f")) throw new CodeError("f-strings are not allowed, write a plain string", line);
      if (flags.includes("b")) throw new CodeError("bytes literals are not allowed", line);
      const raw = flags.includes("r");
      i += prefix[0].length;
      const q = code[i];
      const triple = code.slice(i, i + 3) === q.repeat(3);
      const close = triple ? q.repeat(3) : q;
      i += close.length;
      const startLine = line;
      let value = "";
      for (;;) {
        if (i >= n) throw new CodeError("unterminated string", startLine);
        if (code.startsWith(close, i)) { i += close.length; break; }
        const c = code[i];
        if (c === "\n") {
          if (!triple) throw new CodeError("unterminated string", startLine);
          line++;
        }
        if (c === "\\" && !raw) {
          const e = code[i + 1];
          if (e === "x") { value += String.fromCodePoint(parseInt(code.slice(i + 2, i + 4), 16)); i += 4; continue; }
          if (e === "u") { value += String.fromCodePoint(parseInt(code.slice(i + 2, i + 6), 16)); i += 6; continue; }
          if (e === "U") { value += String.fromCodePoint(parseInt(code.slice(i + 2, i + 10), 16)); i += 10; continue; }
          if (e in ESCAPES) { if (e === "\n") line++; value += ESCAPES[e]; i += 2; continue; }
          value += c; i++; continue;
        }
        value += c; i++;
      }
      tokens.push({ t: "str", v: value, line: startLine });
      continue;
    }
    const num = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?/.exec(code.slice(i));
    if (num && /[-+.\d]/.test(ch)) { tokens.push({ t: "num", v: Number(num[0]), line }); i += num[0].length; continue; }
    const name = /^[A-Za-z_][A-Za-z0-9_]*/.exec(code.slice(i));
    if (name) { tokens.push({ t: "name", v: name[0], line }); i += name[0].length; continue; }
    if ("()[],=.".includes(ch)) { tokens.push({ t: ch, line }); i++; continue; }
    throw new CodeError(`unexpected character ${JSON.stringify(ch)}`, line);
  }
  tokens.push({ t: "eof", line });
  return tokens;
}

/** Parse Omost's code form into a canvas object (no enum correction: the server reports those). */
export function parseCanvasCode(text) {
  let code = text;
  let offset = 0;
  const fence = /```[ \t]*(?:python|py)?[ \t]*\r?\n/i.exec(text);
  if (fence) {
    const start = fence.index + fence[0].length;
    offset = text.slice(0, start).split("\n").length - 1;
    const end = text.indexOf("```", start);
    code = end === -1 ? text.slice(start) : text.slice(start, end);
  }
  const tokens = tokenize(code).map((tok) => ({ ...tok, line: tok.line + offset }));
  let p = 0;
  const peek = () => tokens[p];
  const expect = (t, what) => {
    const tok = tokens[p];
    if (tok.t !== t) throw new CodeError(`expected ${what || t}`, tok.line);
    p++;
    return tok;
  };
  const skipNewlines = () => { while (peek().t === "nl") p++; };
  const skipNl = () => { while (peek().t === "nl") p++; };  // newlines inside brackets
  let glob = null;
  const regions = [];
  let haveCanvas = false;

  function literal() {
    skipNl();
    const tok = peek();
    if (tok.t === "str") {
      let value = "";
      while (peek().t === "str") { value += peek().v; p++; skipNl(); }
      return value;
    }
    if (tok.t === "num") { p++; return tok.v; }
    if (tok.t === "[" || tok.t === "(") {
      const closer = tok.t === "[" ? "]" : ")";
      p++;
      const items = [];
      for (;;) {
        skipNl();
        if (peek().t === closer) { p++; break; }
        const item = literal();
        if (typeof item !== "string") throw new CodeError("lists must hold plain strings", tok.line);
        items.push(item);
        skipNl();
        if (peek().t === ",") { p++; continue; }
        skipNl();
        expect(closer, `"${closer}"`);
        break;
      }
      return items;
    }
    throw new CodeError("arguments must be literal strings, numbers or lists of strings", tok.line);
  }

  function call(method, names) {
    const values = {};
    let positional = 0;
    expect("(", '"("');
    for (;;) {
      skipNl();
      if (peek().t === ")") { p++; break; }
      let name;
      if (peek().t === "name" && tokens[p + 1].t === "=") {
        name = peek().v;
        if (!names.includes(name)) throw new CodeError(`${method} has no argument ${name}`, peek().line);
        p += 2;
      } else {
        name = names[positional++];
        if (!name) throw new CodeError(`${method} takes ${names.length} arguments`, peek().line);
      }
      if (name in values) throw new CodeError(`argument ${name} is given twice`, peek().line);
      values[name] = literal();
      skipNl();
      if (peek().t === ",") { p++; continue; }
      skipNl();
      expect(")", '")"');
      break;
    }
    const missing = names.filter((k) => !(k in values) && !(k in DEFAULTS));
    if (missing.length) throw new CodeError(`${method} is missing ${missing.join(", ")}`);
    for (const k of names) if (!(k in values)) values[k] = structuredClone(DEFAULTS[k]);
    return values;
  }

  for (;;) {
    skipNewlines();
    const tok = peek();
    if (tok.t === "eof") break;
    if (tok.t === "str") { literal(); continue; }
    const head = expect("name", "a statement");
    if (head.v !== "canvas") throw new CodeError(`only canvas = Canvas() and canvas.<method>(...) are allowed, not ${head.v}`, head.line);
    if (peek().t === "=") {
      p++;
      const c = expect("name", "Canvas()");
      if (c.v !== "Canvas") throw new CodeError("the only assignment allowed is canvas = Canvas()", c.line);
      expect("(", '"("'); expect(")", '")"');
      if (haveCanvas) throw new CodeError("canvas = Canvas() appears twice", c.line);
      haveCanvas = true;
    } else {
      expect(".", '"."');
      const method = expect("name", "a method name");
      if (!haveCanvas) throw new CodeError("canvas is used before canvas = Canvas()", method.line);
      if (method.v === "set_global_description") {
        if (glob) throw new CodeError("set_global_description is called more than once", method.line);
        glob = call(method.v, GLOBAL_ARGUMENTS);
      } else if (method.v === "add_local_description") {
        regions.push(call(method.v, LOCAL_ARGUMENTS));
      } else {
        throw new CodeError(`canvas.${method.v} is not allowed`, method.line);
      }
    }
    const end = peek();
    if (end.t !== "nl" && end.t !== "eof") throw new CodeError("one statement per line", end.line);
  }
  if (!glob) throw new CodeError("the code never calls canvas.set_global_description(...)");
  for (const r of regions) {
    if (typeof r.distance_to_viewer !== "number") throw new CodeError("distance_to_viewer must be a number");
  }
  return { global_description: glob, local_descriptions: regions };
}
