/* Peephole viewer: run a peephole LSTM and plot its outputs, memory cells and gates.
 *
 * Plain browser JavaScript, no build step; plots by uPlot (vendor/, MIT). Talks to the
 * native API of the same server: GET /v1/models, GET /v1/models/{name}/versions/{v},
 * POST .../predict with return_internals, POST /v1/sessions and WS /v1/sessions/{id}/stream.
 * With API keys the first 401 opens a key dialog; the key stays in sessionStorage and is
 * sent as `Authorization: Bearer` (WebSocket: `?access_token=`).
 */
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  // The API lives next to the page: /ui -> /, /prefix/ui -> /prefix/ (behind a proxy).
  const API_BASE = location.pathname.replace(/\/ui\/?$/, "/");
  const KEY_STORE = "peephole.apiKey";
  const GATES = ["input", "forget", "output"];
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  const DASHES = [null, [6, 4], [2, 3], [10, 3, 2, 3]];

  const ui = {
    model: $("model"), version: $("version"), info: $("model-info"),
    generator: $("generator"), genHelp: $("generator-help"), genParams: $("generator-params"),
    generate: $("generate"), inputs: $("inputs"), targets: $("targets"),
    internals: $("internals"), run: $("run"), stream: $("stream"), stop: $("stop"),
    endSession: $("end-session"), delay: $("delay"), sessionId: $("session-id"),
    error: $("error"), status: $("status"), plots: $("plots"), download: $("download"),
    keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"),
    keyReason: $("key-reason"), keyStatus: $("key-status"), forgetKey: $("forget-key"),
  };

  let card = null; // the selected version's public model card
  let live = null; // the running live stream, if any
  let ownSession = null; // a session this page opened and has not ended

  // ---------------------------------------------------------------- state and messages

  function setState(state) { document.body.dataset.state = state; }

  function say(text) { ui.status.textContent = text; }

  function clearError() { ui.error.hidden = true; ui.error.textContent = ""; }

  function showError(title, detail) {
    ui.error.textContent = "";
    const strong = document.createElement("strong");
    strong.textContent = title;
    ui.error.append(strong);
    if (detail) ui.error.append(document.createTextNode(detail));
    ui.error.hidden = false;
    setState("error");
  }

  function showFailure(err, what) {
    if (err instanceof ApiError) {
      const code = err.status ? `HTTP ${err.status}` : "no answer";
      showError(`${what} failed (${code})`, err.detail);
    } else if (err instanceof InputError) {
      showError("Bad input", err.message);
    } else {
      showError(`${what} failed`, String(err && err.message ? err.message : err));
    }
    say("");
  }

  class InputError extends Error {}

  class ApiError extends Error {
    constructor(status, detail, body) {
      super(detail);
      this.status = status;
      this.detail = detail;
      this.body = body;
    }
  }

  // ---------------------------------------------------------------- API keys

  function apiKey() { return sessionStorage.getItem(KEY_STORE); }

  function showKeyStatus() {
    const key = apiKey();
    ui.keyStatus.textContent = key ? "An API key is in use (this tab only)." : "No API key in use.";
    ui.forgetKey.hidden = !key;
  }

  let keyPrompt = null;

  /** Ask for a key; resolves true when one was given, false when cancelled. */
  function askForKey(reason) {
    if (keyPrompt) return keyPrompt;
    ui.keyReason.textContent = reason;
    ui.keyInput.value = "";
    keyPrompt = new Promise((resolve) => {
      const done = () => {
        ui.keyDialog.removeEventListener("close", done);
        keyPrompt = null;
        const key = ui.keyInput.value.trim();
        if (ui.keyDialog.returnValue === "ok" && key) {
          sessionStorage.setItem(KEY_STORE, key);
          showKeyStatus();
          resolve(true);
        } else {
          resolve(false);
        }
      };
      ui.keyDialog.addEventListener("close", done);
    });
    ui.keyDialog.returnValue = "";
    ui.keyDialog.showModal();
    ui.keyInput.focus();
    return keyPrompt;
  }

  ui.forgetKey.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    showKeyStatus();
  });

  // ---------------------------------------------------------------- HTTP

  function detailOf(body, fallback) {
    if (body && typeof body === "object") {
      const d = body.detail ?? body.error;
      if (typeof d === "string") return d;
      if (d !== undefined) return JSON.stringify(d);
    }
    return fallback;
  }

  /** One call to the native API; a 401 asks for a key and tries again. */
  async function api(method, path, body) {
    for (;;) {
      const headers = { accept: "application/json" };
      const key = apiKey();
      if (key) headers.authorization = `Bearer ${key}`;
      const init = { method, headers };
      if (body !== undefined) {
        headers["content-type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      let r;
      try {
        r = await fetch(API_BASE + path, init);
      } catch (e) {
        throw new ApiError(0, `the server did not answer (${e.message})`);
      }
      let data = null;
      if (r.status !== 204) {
        try { data = await r.json(); } catch { data = null; }
      }
      if (r.status === 401) {
        const reason = key
          ? "The server refused this API key. Enter another one."
          : "This server needs an API key.";
        if (await askForKey(reason)) continue;
        throw new ApiError(401, detailOf(data, "missing or wrong API key"), data);
      }
      if (!r.ok) throw new ApiError(r.status, detailOf(data, r.statusText), data);
      return data;
    }
  }

  function wsUrl(path) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const key = apiKey();
    const query = key ? `?access_token=${encodeURIComponent(key)}` : "";
    return `${proto}//${location.host}${API_BASE}${path}${query}`;
  }

  // ---------------------------------------------------------------- parsing

  function isNum(v) { return typeof v === "number" && Number.isFinite(v); }

  /** Text -> {rows: [[...]], extra: [[...]] | null}. JSON or rows of numbers. */
  function parseRows(text, what, width, allowNull) {
    const t = text.trim();
    if (!t) throw new InputError(`${what}: enter at least one time step.`);
    if (t[0] === "[" || t[0] === "{") {
      let v;
      try { v = JSON.parse(t); } catch (e) { throw new InputError(`${what}: not valid JSON (${e.message}).`); }
      if (v && !Array.isArray(v) && typeof v === "object") {
        if (!("inputs" in v)) throw new InputError(`${what}: a JSON object needs an "inputs" field.`);
        v = v.inputs;
      }
      // A batch [[[...]]] of one sequence: take it.
      if (Array.isArray(v) && v.length === 1 && Array.isArray(v[0]) && Array.isArray(v[0][0])) v = v[0];
      if (!Array.isArray(v) || v.length === 0) throw new InputError(`${what}: expected a non-empty list of time steps.`);
      // A flat list: one value per step.
      const rows = v.map((s) => (Array.isArray(s) ? s : [s]));
      // Shapes and types are the server's to check (its 422 is shown as it comes).
      return { rows, extra: null };
    }
    const rows = [];
    const extra = [];
    let first = true;
    for (const [i, rawLine] of text.split(/\r?\n/).entries()) {
      const line = rawLine.trim();
      if (!line || line.startsWith("#")) continue;
      const cells = line.split(/\s*[,;\t]\s*|\s+/);
      const vals = cells.map((c) => (c === "" || c.toLowerCase() === "null" ? null : Number(c)));
      const bad = cells.findIndex((c, k) => vals[k] === null ? !allowNull : !Number.isFinite(vals[k]));
      if (bad >= 0) {
        if (first && vals.every((x) => x === null || Number.isNaN(x))) { first = false; continue; } // a header row
        throw new InputError(`${what}, line ${i + 1}: "${cells[bad]}" is not a number.`);
      }
      first = false;
      if (width && vals.length > width) {
        rows.push(vals.slice(0, width));
        extra.push(vals.slice(width));
      } else {
        rows.push(vals);
      }
    }
    if (!rows.length) throw new InputError(`${what}: enter at least one time step.`);
    return { rows, extra: extra.length ? extra : null };
  }

  // The sequence in the input box, or null after showing why it cannot be read.
  function readSequenceOrShow() {
    try {
      return readSequence();
    } catch (err) {
      showFailure(err, "Reading the input");
      return null;
    }
  }

  function readSequence() {
    const inputSize = card.input_size;
    const { rows, extra } = parseRows(ui.inputs.value, "Inputs", inputSize, false);
    let targets = null;
    if (ui.targets.value.trim()) {
      targets = parseRows(ui.targets.value, "Targets", 0, true).rows;
    } else if (extra) {
      targets = extra;
    }
    if (targets) {
      targets = targets.map((r) => (Array.isArray(r) ? r : [r]));
      if (targets.length !== rows.length) {
        throw new InputError(`Targets: ${targets.length} rows for ${rows.length} input steps.`);
      }
      const width = targetSize(card);
      const bad = targets.findIndex((r) => r.length !== width || r.some((v) => v !== null && !isNum(v)));
      if (bad >= 0) {
        throw new InputError(`Targets, step ${bad}: expected ${width} numbers (or null).`);
      }
    }
    return { inputs: rows, targets };
  }

  function formatRows(rows) {
    return rows.map((r) => r.map((v) => (v === null ? "null" : +v.toFixed(6))).join(", ")).join("\n");
  }

  // ---------------------------------------------------------------- generators

  /** A small seeded PRNG (mulberry32), so a seed gives the same sequence every time. */
  function rng(seed) {
    let a = seed >>> 0;
    const next = () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    return {
      next,
      int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)), // inclusive
      uniform: (lo, hi) => lo + (hi - lo) * next(),
      normal: () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next()),
    };
  }

  /** Mackey-Glass by RK4 on a fine grid with Hermite midpoints of the delayed value
   * (the scheme of training/tasks/mackey_glass.py), sampled every `every` time units. */
  function mackeyGlass(n, x0, p) {
    const { tau, beta, gamma, n: power, dt, interval, transient } = p;
    const d = Math.round(tau / dt);
    const every = Math.round(interval / dt);
    const skip = Math.round(transient / dt);
    const total = skip + (n - 1) * every;
    const xs = new Float64Array(d + total + 1).fill(x0);
    const fs = new Float64Array(d + total + 1);
    const D = (v) => (beta * v) / (1 + v ** power);
    fs[d] = -gamma * x0 + D(x0);
    const h = dt;
    for (let k = d; k < d + total; k++) {
      const lo = k - d;
      const a = xs[lo];
      const b = xs[lo + 1];
      const mid = lo < d ? x0 : 0.5 * (a + b) + (dt / 8) * (fs[lo] - fs[lo + 1]);
      const f0 = D(a);
      const fm = D(mid);
      const f1 = D(b);
      const x = xs[k];
      const k1 = -gamma * x + f0;
      const k2 = -gamma * (x + 0.5 * h * k1) + fm;
      const k3 = -gamma * (x + 0.5 * h * k2) + fm;
      const k4 = -gamma * (x + h * k3) + f1;
      xs[k + 1] = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4);
      fs[k + 1] = -gamma * xs[k + 1] + f1;
    }
    const out = [];
    for (let i = 0; i < n; i++) out.push(xs[d + skip + i * every]);
    return out;
  }

  const REBER = { 0: [["B", 1]], 1: [["T", 2], ["P", 3]], 2: [["S", 2], ["X", 4]],
    3: [["T", 3], ["V", 5]], 4: [["X", 3], ["S", 6]], 5: [["P", 4], ["V", 6]], 6: [["E", 7]] };
  const SYMBOLS = "BTSXPVE";

  function reberLegalNext(s) {
    const sets = [];
    let inner = 0;
    for (let t = 0; t < s.length - 1; t++) {
      if (t === 0) sets.push("TP");
      else if (t === 1) sets.push("B");
      else if (inner !== 7) {
        inner = REBER[inner].find(([c]) => c === s[t])[1];
        sets.push(inner !== 7 ? REBER[inner].map(([c]) => c).join("") : s[1]);
      } else sets.push("E");
    }
    return sets;
  }

  const num = (name, label, value, min, max, step = 1) => ({ name, label, value, min, max, step });

  /** Built-in generators; `task` is the model card's `task` they belong to. */
  const GENERATORS = {
    "trace-conditioning": {
      label: "Trace conditioning trials",
      tasks: ["trace-conditioning", "rivest2010"],
      inputs: 2,
      help: "200 ms steps, lnsc's timings truncated to whole steps; inputs [CS, US]: a first " +
        "interval of 20-29 silent steps, then trials with CS = 1 at trial step 0 and US = 1 at " +
        "step 5 (1 s later), each followed by 20-29 silent steps. The last trial can be a probe " +
        "(US at 500 ms = step 2, at 1500 ms = step 7) or an omission (CS, no US: an 8-step " +
        "trial). Target: the next step's US.",
      params: [
        num("trials", "Normal trials first", 3, 0, 50),
        { name: "last", label: "Last trial", value: "normal",
          options: [["normal", "normal (US at 1 s)"], ["probe500", "probe: US at 500 ms (step 2)"],
            ["probe1500", "probe: US at 1500 ms (step 7)"], ["omission", "omission (no US)"]] },
        num("seed", "Seed", 1, 0, 1e9),
      ],
      make(p) {
        const r = rng(p.seed);
        const delays = [];
        for (let i = 0; i < p.trials; i++) delays.push(5);
        delays.push({ normal: 5, probe500: 2, probe1500: 7, omission: null }[p.last]);
        const onsets = [];
        let t = r.int(20, 29);
        for (let i = 0; i < delays.length; i++) {
          onsets.push(t);
          const length = delays[i] === null ? 8 : delays[i] + 1;
          if (i < delays.length - 1) t += length + r.int(20, 29);
        }
        const steps = t + 16;
        const cs = new Array(steps + 1).fill(0);
        const us = new Array(steps + 1).fill(0);
        onsets.forEach((o, i) => {
          cs[o] = 1;
          if (delays[i] !== null) us[o + delays[i]] = 1;
        });
        const inputs = [];
        const targets = [];
        for (let k = 0; k < steps; k++) {
          inputs.push([cs[k], us[k]]);
          targets.push([us[k + 1]]);
        }
        return { inputs, targets, note: `CS at steps ${onsets.join(", ")}` };
      },
    },
    "mackey-glass": {
      label: "Mackey-Glass series",
      task: "mackey-glass",
      inputs: 1,
      help: "dx/dt = 0.2 x(t-17) / (1 + x(t-17)^10) - 0.1 x(t), RK4 (dt 0.01) in the page, " +
        "sampled every 6 time units after a transient. Target: the next sample.",
      params: [num("steps", "Samples", 300, 2, 20000), num("x0", "Initial x0", 0.5, 0.01, 2, 0.01)],
      make(p, c) {
        const d = (c && c.training && c.training.data) || {};
        const knobs = {
          tau: d.tau ?? 17, beta: d.beta ?? 0.2, gamma: d.gamma ?? 0.1, n: d.n ?? 10,
          dt: d.dt ?? 0.01, interval: d.sample_interval ?? 6, transient: d.transient ?? 1000,
        };
        const s = mackeyGlass(p.steps + 1, p.x0, knobs);
        return {
          inputs: s.slice(0, -1).map((v) => [v]),
          targets: s.slice(1).map((v) => [v]),
          note: `tau ${knobs.tau}, sampled every ${knobs.interval}`,
        };
      },
    },
    "embedded-reber": {
      label: "Embedded Reber string",
      task: "embedded-reber",
      inputs: 7,
      help: "One-hot symbols B, T, S, X, P, V, E. Target: the set of legal next symbols.",
      params: [num("seed", "Seed", 1, 0, 1e9)],
      make(p) {
        const r = rng(p.seed);
        let state = 0;
        let inner = "";
        while (state !== 7) {
          const opts = REBER[state];
          const [c, next] = opts[r.int(0, opts.length - 1)];
          inner += c;
          state = next;
        }
        const branch = "TP"[r.int(0, 1)];
        const s = `B${branch}${inner}${branch}E`;
        const hot = (chars) => [...SYMBOLS].map((c) => (chars.includes(c) ? 1 : 0));
        return {
          inputs: [...s.slice(0, -1)].map((c) => hot(c)),
          targets: reberLegalNext(s).map(hot),
          note: `string ${s}`,
        };
      },
    },
    adding: {
      label: "Adding problem",
      task: "adding",
      inputs: 2,
      help: "Pairs (value in [-1, 1], marker); two marked values; length T..1.1T. " +
        "Target at the last step only: 0.5 + (X1 + X2) / 4.",
      params: [num("T", "T", 100, 4, 5000), num("seed", "Seed", 1, 0, 1e9)],
      make(p) {
        const r = rng(p.seed);
        const T = p.T;
        const len = r.int(T, T + Math.floor(T / 10));
        const x = [];
        for (let i = 0; i < len; i++) x.push([r.uniform(-1, 1), 0]);
        const first = r.int(1, Math.min(9, len - 2));
        let second = first;
        while (second === first) second = r.int(1, Math.max(2, Math.floor(T / 2) - 1));
        x[0][1] = -1;
        x[len - 1][1] = -1;
        x[first][1] = 1;
        x[second][1] = 1;
        const targets = x.map(() => [null]);
        targets[len - 1] = [0.5 + (x[first][0] + x[second][0]) / 4];
        return { inputs: x, targets, note: `marked steps ${first} and ${second}` };
      },
    },
    msd: {
      label: "MSD spike train",
      task: "msd",
      inputs: 1,
      help: "Spikes at T(n) = T(n-1) + 10 + I(n), I(n) in {0, 1}. Target at each spike: I(n).",
      params: [num("steps", "Steps", 200, 12, 20000), num("seed", "Seed", 1, 0, 1e9)],
      make(p) {
        const r = rng(p.seed);
        const times = [r.int(0, 9)];
        for (;;) {
          const next = times[times.length - 1] + 10 + r.int(0, 1);
          if (next >= p.steps) break;
          times.push(next);
        }
        const inputs = Array.from({ length: p.steps }, () => [0]);
        const targets = Array.from({ length: p.steps }, () => [null]);
        times.forEach((t, i) => {
          inputs[t] = [1];
          if (i > 0) targets[t] = [t - times[i - 1] - 10];
        });
        return { inputs, targets, note: `${times.length} spikes` };
      },
    },
    sine: {
      label: "Sine waves",
      help: "One sine per input, phases staggered; no targets.",
      params: [num("steps", "Steps", 200, 1, 20000), num("period", "Period (steps)", 40, 2, 10000)],
      make(p, c) {
        const n = c.input_size;
        return {
          inputs: Array.from({ length: p.steps }, (_, t) =>
            Array.from({ length: n }, (_, k) => Math.sin((2 * Math.PI * t) / p.period + (k * Math.PI) / n))),
          targets: null,
        };
      },
    },
    random: {
      label: "Random normal",
      help: "Independent N(0, 1) values; no targets.",
      params: [num("steps", "Steps", 100, 1, 20000), num("seed", "Seed", 1, 0, 1e9)],
      make(p, c) {
        const r = rng(p.seed);
        return {
          inputs: Array.from({ length: p.steps }, () => Array.from({ length: c.input_size }, r.normal)),
          targets: null,
        };
      },
    },
  };

  const forTask = (g, task) => (g.tasks ? g.tasks.includes(task) : g.task === task);

  function generatorsFor(c) {
    return Object.entries(GENERATORS).filter(([, g]) => !g.inputs || g.inputs === c.input_size);
  }

  function fillGenerators() {
    const list = generatorsFor(card);
    const own = list.find(([, g]) => forTask(g, card.task));
    ui.generator.replaceChildren(...list.map(([id, g]) => new Option(g.label, id)));
    ui.generator.value = own ? own[0] : (card.input_size === 1 || !own ? "sine" : list[0][0]);
    showGeneratorParams();
  }

  function showGeneratorParams() {
    const g = GENERATORS[ui.generator.value];
    ui.genHelp.textContent = g ? g.help : "";
    ui.genParams.replaceChildren();
    if (!g) return;
    for (const p of g.params) {
      const wrap = document.createElement("div");
      wrap.className = "field";
      const label = document.createElement("label");
      const id = `gen-${p.name}`;
      label.htmlFor = id;
      label.textContent = p.label;
      let input;
      if (p.options) {
        input = document.createElement("select");
        for (const [v, text] of p.options) input.append(new Option(text, v));
        input.value = p.value;
      } else {
        input = document.createElement("input");
        input.type = "number";
        Object.assign(input, { min: p.min, max: p.max, step: p.step, value: p.value });
      }
      input.id = id;
      input.dataset.param = p.name;
      wrap.append(label, input);
      ui.genParams.append(wrap);
    }
  }

  function generate() {
    clearError();
    const g = GENERATORS[ui.generator.value];
    const params = {};
    for (const p of g.params) {
      const el = $(`gen-${p.name}`);
      if (p.options) {
        params[p.name] = el.value;
        continue;
      }
      const v = Number(el.value);
      if (!Number.isFinite(v) || v < p.min || v > p.max) {
        showError("Bad generator setting", `${p.label}: enter a number from ${p.min} to ${p.max}.`);
        return false;
      }
      params[p.name] = p.step === 1 ? Math.round(v) : v;
    }
    const out = g.make(params, card);
    ui.inputs.value = formatRows(out.inputs);
    ui.targets.value = out.targets ? formatRows(out.targets) : "";
    say(`Generated ${out.inputs.length} steps${out.note ? ` (${out.note})` : ""}.`);
    setState("ready");
    return true;
  }

  // ---------------------------------------------------------------- models

  function addInfo(term, value) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    ui.info.append(dt, dd);
  }

  function hasInternals(c) { return Boolean(c && c.onnx && c.onnx.internals); }

  /** Outputs that are the network's own (with targets); a TD critic's heads follow them. */
  function targetSize(c) { return c.critic ? c.architecture.output_size : c.output_size; }

  async function loadModels() {
    setState("loading");
    try {
      const { models } = await api("GET", "v1/models");
      if (!models.length) {
        showError("No models", "The server has no model to serve (check PEEPHOLE_MODEL_REPOSITORY).");
        return;
      }
      ui.model.replaceChildren(...models.map((m) => {
        const o = new Option(m.name, m.name);
        o.dataset.versions = JSON.stringify(m.versions);
        o.dataset.default = m.default_version;
        return o;
      }));
      const wanted = new URLSearchParams(location.search).get("model");
      if (wanted && models.some((m) => m.name === wanted)) ui.model.value = wanted;
      ui.model.disabled = false;
      fillVersions();
      await loadCard();
    } catch (err) {
      showFailure(err, "Loading the models");
    }
  }

  function fillVersions() {
    const o = ui.model.selectedOptions[0];
    const versions = JSON.parse(o.dataset.versions);
    ui.version.replaceChildren(...versions.slice().reverse().map((v) => {
      const def = String(v) === o.dataset.default;
      return new Option(def ? `${v} (default)` : String(v), v);
    }));
    ui.version.value = o.dataset.default;
    ui.version.disabled = false;
  }

  async function loadCard() {
    clearError();
    setState("loading");
    const name = ui.model.value;
    const version = ui.version.value;
    try {
      card = await api("GET", `v1/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`);
    } catch (err) {
      card = null;
      showFailure(err, `Loading ${name} version ${version}`);
      return;
    }
    const a = card.architecture;
    ui.info.replaceChildren();
    addInfo("Task", card.task);
    if (card.description) addInfo("About", card.description);
    addInfo("Inputs", card.input_names.join(", "));
    addInfo("Outputs", `${card.output_names.join(", ")} (${card.output_activation})`);
    addInfo("Network", `${a.blocks} block${a.blocks > 1 ? "s" : ""} × ${a.cells_per_block} cell${a.cells_per_block > 1 ? "s" : ""}` +
      `, g ${a.g}, h ${a.h}${a.peepholes ? ", peepholes" : ""}${a.forget_gate ? "" : ", no forget gate"}`);
    if (card.critic) {
      addInfo("TD critic", `γ ${card.critic.gamma}; outputs ${card.critic.outputs.join(", ")} ` +
        "after the network's own (frozen; its previous output, value and first-step flag ride in the state)");
    }
    addInfo("Cells and gates", hasInternals(card) ? "available (model.internals.onnx)" : "not exported for this version");
    addInfo("Provider", card.provider);
    ui.internals.disabled = !hasInternals(card);
    ui.internals.checked = hasInternals(card);
    fillGenerators();
    generate();
    say(`${card.name} version ${card.version} is ready. Generate or enter a sequence, then run it.`);
    setState("ready");
  }

  ui.model.addEventListener("change", () => { fillVersions(); loadCard(); });
  ui.version.addEventListener("change", loadCard);
  ui.generator.addEventListener("change", showGeneratorParams);
  ui.generate.addEventListener("click", generate);

  // ---------------------------------------------------------------- the run and its plots

  /** Everything plotted: per-step arrays, appended to while a live stream runs. */
  function newRun(c, withInternals, offset) {
    const blocks = c.architecture.blocks;
    const cells = blocks * c.architecture.cells_per_block;
    const cols = (n) => Array.from({ length: n }, () => []);
    return {
      model: c.name, version: c.version, internals: withInternals, offset,
      t: [], inputs: cols(c.input_size), outputs: cols(c.output_size), targets: cols(targetSize(c)),
      hasTargets: false, sparseTargets: false,
      cellStates: cols(cells), cellOutputs: cols(cells),
      gates: { input: cols(blocks), forget: cols(blocks), output: cols(blocks) },
    };
  }

  function append(run, inputs, targets, outputs, internals) {
    const start = run.offset + run.t.length;
    inputs.forEach((row, i) => {
      run.t.push(start + i);
      row.forEach((v, k) => run.inputs[k].push(v));
      outputs[i].forEach((v, k) => run.outputs[k].push(v));
      for (let k = 0; k < run.targets.length; k++) {
        const v = targets ? targets[i][k] : null;
        if (v === null) run.sparseTargets = true;
        else run.hasTargets = true;
        run.targets[k].push(v);
      }
      if (internals) {
        internals.cell_states[i].forEach((v, k) => run.cellStates[k].push(v));
        internals.cell_outputs[i].forEach((v, k) => run.cellOutputs[k].push(v));
        for (const g of GATES) internals.gates[g][i].forEach((v, k) => run.gates[g][k].push(v));
      }
    });
  }

  function blockColor(j, n) {
    return n <= PALETTE.length ? PALETTE[j] : `hsl(${Math.round((360 * j) / n)}, 65%, 42%)`;
  }

  function line(label, stroke, dash) {
    return { label, stroke, width: 1.6, dash: dash || undefined, points: { show: false } };
  }

  /** One figure per quantity; uPlot draws on a canvas, the cursor is shared by all. */
  function panels(run, c) {
    const a = c.architecture;
    const S = a.cells_per_block;
    const nIn = c.input_size;
    const stepMs = c.encoding && c.encoding.step_ms ? ` (one step = ${c.encoding.step_ms} ms)` : "";
    const own = targetSize(c); // the network's outputs; a critic's heads come after them
    const ownNames = c.output_names.slice(0, own);
    const out = [
      { id: "inputs", title: "Inputs", note: `x(t)${stepMs}`,
        series: c.input_names.map((n, k) => line(n, blockColor(k, nIn))),
        data: () => run.inputs },
      { id: "outputs", title: run.hasTargets ? "Outputs and targets" : "Outputs",
        note: run.hasTargets ? "solid: the network's output; dashed or dots: the target" : "the network's output",
        series: [
          ...ownNames.map((n, k) => line(n, blockColor(k, own))),
          ...(run.hasTargets ? ownNames.map((n, k) => {
            // One output: its target in black; several: each target in its output's colour.
            const color = own === 1 ? "#222" : blockColor(k, own);
            return run.sparseTargets
              ? { label: `${n} target`, stroke: color, width: 0, paths: () => null,
                points: { show: true, size: 7, space: 0, fill: "#fff", width: 2 } }
              : line(`${n} target`, color, [5, 4]);
          }) : []),
        ],
        data: () => {
          const mine = run.outputs.slice(0, own);
          return run.hasTargets ? [...mine, ...run.targets] : mine;
        },
        range: c.output_activation === "linear" ? null : [0, 1] },
    ];
    if (c.critic) {
      const heads = c.output_names.slice(own);
      out.push({ id: "td_error", title: "Dopamine: TD error δ and value V",
        note: `δ(t) = US(t) + ${c.critic.gamma}·V(t) − V(t−1), the critic's error (0 on the first step)`,
        series: heads.map((n, k) => line(n === "td_error" ? "td_error δ" : n === "value" ? "value V" : n,
          n === "td_error" ? "#d62728" : "#7f7f7f", n === "td_error" ? null : [5, 4])),
        data: () => run.outputs.slice(own) });
    }
    if (!run.internals) return out;
    const cellSeries = [];
    for (let j = 0; j < a.blocks; j++) {
      for (let v = 0; v < S; v++) {
        cellSeries.push(line(S > 1 ? `block ${j + 1} cell ${v + 1}` : `block ${j + 1}`,
          blockColor(j, a.blocks), DASHES[v % DASHES.length]));
      }
    }
    const blockSeries = () => Array.from({ length: a.blocks }, (_, j) => line(`block ${j + 1}`, blockColor(j, a.blocks)));
    out.push(
      { id: "cell_states", title: "Cell states s(t)", note: "the memory: s = forget · s(t-1) + input · g(net)",
        series: cellSeries.map((s) => ({ ...s })), data: () => run.cellStates },
      { id: "cell_outputs", title: "Cell outputs y(t)", note: "output gate · h(s)",
        series: cellSeries.map((s) => ({ ...s })), data: () => run.cellOutputs },
      { id: "gate_input", title: "Input gates", note: "how much of the new input enters the cells (0 to 1)",
        series: blockSeries(), data: () => run.gates.input, range: [0, 1] },
      { id: "gate_forget", title: "Forget gates", note: "how much of the cell state is kept (1: all)",
        series: blockSeries(), data: () => run.gates.forget, range: [0, 1] },
      { id: "gate_output", title: "Output gates", note: "how much of the cell is shown to the network and the output",
        series: blockSeries(), data: () => run.gates.output, range: [0, 1] },
    );
    return out;
  }

  let plots = []; // [{uplot, figure, data}]
  const resize = new ResizeObserver(() => {
    for (const p of plots) p.uplot.setSize({ width: chartWidth(p.figure), height: p.uplot.height });
  });

  function chartWidth(figure) { return Math.max(240, figure.clientWidth - 4); }

  function drawPlots(run, c) {
    for (const p of plots) p.uplot.destroy();
    plots = [];
    ui.plots.replaceChildren();
    resize.disconnect();
    const specs = panels(run, c);
    for (const spec of specs) {
      const figure = document.createElement("figure");
      figure.className = "plot";
      figure.id = `plot-${spec.id}`;
      const cap = document.createElement("figcaption");
      const strong = document.createElement("strong");
      strong.textContent = spec.title;
      const note = document.createElement("span");
      note.textContent = ` — ${spec.note}`;
      cap.append(strong, note);
      const chart = document.createElement("div");
      chart.className = "chart";
      chart.setAttribute("role", "img");
      chart.setAttribute("aria-label", `${spec.title} over time steps; the legend below gives the values at the cursor`);
      figure.append(cap, chart);
      ui.plots.append(figure);
      const opts = {
        width: chartWidth(figure),
        height: spec.id === "inputs" ? 130 : 170,
        cursor: { sync: { key: "peephole" }, drag: { x: true, y: false } },
        scales: { x: { time: false }, y: spec.range ? { range: spec.range } : {} },
        series: [{ label: "step" }, ...spec.series],
        axes: [{}, { size: 56 }],
        legend: { live: true },
      };
      const data = () => [run.t, ...spec.data()];
      const u = new uPlot(opts, data(), chart);
      plots.push({ uplot: u, figure, data });
      figure.dataset.points = String(run.t.length);
      resize.observe(figure);
    }
  }

  let redrawQueued = false;
  function redraw() {
    if (redrawQueued) return;
    redrawQueued = true;
    requestAnimationFrame(() => {
      redrawQueued = false;
      for (const p of plots) {
        const d = p.data();
        p.uplot.setData(d);
        p.figure.dataset.points = String(d[0].length);
      }
    });
  }

  function summarise(run, ms) {
    let sum = 0;
    let n = 0;
    run.targets.forEach((col, k) => col.forEach((v, i) => {
      if (v !== null) { sum += (run.outputs[k][i] - v) ** 2; n += 1; }
    }));
    const mse = n ? `; MSE against the ${n} targets ${sum / n < 1e-3 ? (sum / n).toExponential(3) : (sum / n).toFixed(4)}` : "";
    return `${run.model} v${run.version}: ${run.t.length} steps in ${Math.round(ms)} ms${mse}.`;
  }

  function offerDownload(run) {
    const body = JSON.stringify({
      model: run.model, version: run.version, offset: run.offset, steps: run.t,
      inputs: run.inputs, outputs: run.outputs, targets: run.hasTargets ? run.targets : null,
      internals: run.internals ? { cell_states: run.cellStates, cell_outputs: run.cellOutputs, gates: run.gates } : null,
    });
    if (ui.download.href) URL.revokeObjectURL(ui.download.href);
    ui.download.href = URL.createObjectURL(new Blob([body], { type: "application/json" }));
    ui.download.hidden = false;
  }

  function busy(on) {
    for (const el of [ui.run, ui.stream, ui.generate, ui.model, ui.version]) el.disabled = on;
    ui.stop.disabled = !on || !live;
  }

  async function runWhole() {
    clearError();
    if (!card) return;
    const seq = readSequenceOrShow();
    if (!seq) return;
    const withInternals = ui.internals.checked && hasInternals(card);
    setState("running");
    busy(true);
    say(`Running ${seq.inputs.length} steps.`);
    const t0 = performance.now();
    try {
      const body = { inputs: [seq.inputs] };
      if (withInternals) body.return_internals = true;
      const r = await api("POST", `v1/models/${encodeURIComponent(card.name)}/versions/${card.version}/predict`, body);
      const run = newRun(card, withInternals, 0);
      append(run, seq.inputs, seq.targets, r.outputs[0], withInternals ? r.internals[0] : null);
      drawPlots(run, card);
      offerDownload(run);
      say(summarise(run, performance.now() - t0));
      setState("done");
    } catch (err) {
      showFailure(err, "Running the model");
    } finally {
      busy(false);
    }
  }

  // ---------------------------------------------------------------- live sessions

  async function openSession() {
    const given = ui.sessionId.value.trim();
    if (given) {
      const s = await api("GET", `v1/sessions/${encodeURIComponent(given)}`);
      if (s.model !== card.name || s.version !== card.version) {
        throw new InputError(`Session ${given} runs ${s.model} version ${s.version}; select that model first.`);
      }
      return s;
    }
    const s = await api("POST", "v1/sessions", { model: card.name, version: card.version });
    ownSession = s.session_id;
    ui.sessionId.value = s.session_id;
    ui.endSession.disabled = false;
    return s;
  }

  async function startLive() {
    clearError();
    if (!card || live) return;
    const seq = readSequenceOrShow();
    if (!seq) return;
    const withInternals = ui.internals.checked && hasInternals(card);
    let session;
    setState("streaming");
    live = { stopped: false };
    busy(true);
    try {
      session = await openSession();
    } catch (err) {
      live = null;
      busy(false);
      showFailure(err, "Opening a session");
      return;
    }
    const run = newRun(card, withInternals, session.offset);
    // Targets only known to decide the plot style: mark them now, fill them as steps arrive.
    run.hasTargets = Boolean(seq.targets);
    run.sparseTargets = Boolean(seq.targets && seq.targets.some((r) => r.some((v) => v === null)));
    drawPlots(run, card);
    const delay = Math.max(0, Number(ui.delay.value) || 0);
    const t0 = performance.now();
    let i = 0;
    const ws = new WebSocket(wsUrl(`v1/sessions/${encodeURIComponent(session.session_id)}/stream`));
    live.ws = ws;
    const send = () => {
      if (live === null || live.stopped || ws.readyState !== WebSocket.OPEN) return;
      const msg = { inputs: [seq.inputs[i]], offset: session.offset + i };
      if (withInternals) msg.return_internals = true;
      ws.send(JSON.stringify(msg));
    };
    const finish = (text) => {
      if (!live) return;
      live = null;
      busy(false);
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000);
      redraw();
      offerDownload(run);
      if (text) say(text);
      if (document.body.dataset.state !== "error") setState("done");
    };
    ws.addEventListener("open", send);
    ws.addEventListener("message", (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { msg = { detail: "unreadable message", status: 0 }; }
      if (msg.status && msg.detail !== undefined && msg.outputs === undefined) {
        showError(`Step ${session.offset + i} failed (status ${msg.status})`, msg.detail);
        finish("The live stream stopped at an error.");
        return;
      }
      append(run, [seq.inputs[i]], seq.targets ? [seq.targets[i]] : null, msg.outputs, msg.internals || null);
      i += 1;
      redraw();
      say(`Live: session ${session.session_id}, offset ${msg.offset}, ${i} of ${seq.inputs.length} steps.`);
      ui.status.dataset.offset = String(msg.offset);
      if (i >= seq.inputs.length) {
        finish(`${summarise(run, performance.now() - t0)} Session ${session.session_id} stays open at offset ${msg.offset}.`);
      } else {
        setTimeout(send, delay);
      }
    });
    ws.addEventListener("close", (ev) => {
      if (!live) return;
      if (ev.code === 4401) showError("The WebSocket needs an API key", "The server refused the key (close code 4401).");
      else if (ev.code === 4404) showError("Session not found", "It expired or was deleted (close code 4404).");
      else if (!live.stopped) showError("The WebSocket closed", `close code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""}`);
      finish(`Stopped after ${i} steps.`);
    });
    ws.addEventListener("error", () => {
      if (live) showError("The WebSocket failed", "The connection could not be opened or broke.");
    });
    live.finish = finish;
    ui.stop.disabled = false;
  }

  function stopLive() {
    if (!live) return;
    live.stopped = true;
    live.finish("Stopped by you.");
  }

  async function endSession() {
    const id = ownSession || ui.sessionId.value.trim();
    if (!id) return;
    stopLive();
    try {
      await api("DELETE", `v1/sessions/${encodeURIComponent(id)}`);
      say(`Session ${id} ended.`);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) showFailure(err, "Ending the session");
    }
    ownSession = null;
    ui.sessionId.value = "";
    ui.endSession.disabled = true;
  }

  ui.run.addEventListener("click", runWhole);
  ui.stream.addEventListener("click", startLive);
  ui.stop.addEventListener("click", stopLive);
  ui.endSession.addEventListener("click", endSession);
  ui.sessionId.addEventListener("input", () => { ui.endSession.disabled = !ui.sessionId.value.trim(); });

  // For scripted use and tests: the generators and the plots.
  window.peephole = { GENERATORS, mackeyGlass, plots: () => plots };

  showKeyStatus();
  loadModels();
})();
