// rlaif review: the list, the row page and keyboard labelling, over the JSON API of server.py.
// Plain DOM, no build step. Text from the datasets is only ever set as textContent.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const NAME_KEY = "rlaif-review-labeler";
const state = { meta: null, rows: [], cursor: 0, row: null, labeler: localStorage.getItem(NAME_KEY) || "" };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "onclick") node.addEventListener("click", v);
    else if (k === "className") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, options) {
  const headers = Object.assign({}, (options || {}).headers);
  if (TOKEN) headers["X-Review-Token"] = TOKEN;
  const res = await fetch(path, Object.assign({}, options, { headers }));
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

const pct = (x) => (x === null || x === undefined ? "n/a" : `${Math.round(100 * x)}%`);
const num = (x, d = 2) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(d));
const ci = (c) => (c ? `${(100 * c[0]).toFixed(0)}–${(100 * c[1]).toFixed(0)}%` : "n/a");
const ANSWER_NAMES = { a: "A better", b: "B better", tie: "tie", skip: "skipped", yes: "yes", no: "no" };

// ------------------------------------------------------------------ who is labelling

function askName() {
  $("name-dialog").hidden = false;
  $("name-input").value = state.labeler;
  $("name-input").focus();
}

$("name-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name-input").value.trim();
  if (!name) return;
  state.labeler = name;
  localStorage.setItem(NAME_KEY, name);
  $("labeler-name").textContent = name;
  $("name-dialog").hidden = true;
  route();
});
$("who").addEventListener("click", askName);

// ------------------------------------------------------------------ list

function filterQuery() {
  const q = new URLSearchParams();
  for (const [key, id] of [["dataset", "f-dataset"], ["kind", "f-kind"], ["principle", "f-principle"],
    ["soft_min", "f-soft-min"], ["soft_max", "f-soft-max"], ["q", "f-q"]]) {
    if ($(id).value) q.set(key, $(id).value);
  }
  if ($("f-flips").checked) q.set("flips", "1");
  if ($("f-failed").checked) q.set("failed", "1");
  for (const box of document.querySelectorAll("#f-flags input:checked")) q.append("flag", box.value);
  q.set("labeler", state.labeler);
  return q;
}

async function loadRows() {
  const body = await api(`/api/rows?${filterQuery()}`);
  let rows = body.rows;
  if ($("f-todo").checked) rows = rows.filter((r) => r.labelable && !Object.keys(r.mine).length);
  state.rows = rows;
  state.loaded = true;
  state.cursor = Math.min(state.cursor, Math.max(rows.length - 1, 0));
  renderRows();
}

function rowHref(r) {
  return `#/row?dataset=${encodeURIComponent(r.dataset)}&id=${encodeURIComponent(r.id)}`;
}

function renderRows() {
  const m = state.meta;
  const of = m.sample ? ` (a sample of ${m.shown} of ${m.total} rows, seed ${m.seed})` : ` of ${m.total}`;
  $("count").textContent = `${state.rows.length} rows shown${of}`;
  const tbody = $("rows").querySelector("tbody");
  tbody.replaceChildren(...state.rows.map((r, i) => {
    const tr = el("tr", { className: i === state.cursor ? "cursor" : "", "data-id": r.id, "data-dataset": r.dataset },
      el("td", {}, r.dataset),
      el("td", {}, r.id),
      el("td", { className: "prompt" }, r.prompt),
      el("td", {}, r.principles.map((p) => el("span", { className: "chip" }, p))),
      el("td", {}, r.flags.map((f) => el("span", { className: "chip flag" }, f)),
        r.flip ? el("span", { className: "chip flip" }, "flip") : null,
        r.failed ? el("span", { className: "chip failed" }, r.failed) : null),
      el("td", {}, r.soft === null ? "" : num(r.soft)),
      el("td", {}, Object.values(r.mine).map((a) => ANSWER_NAMES[a] || a).join(", ")));
    tr.addEventListener("click", () => { location.hash = rowHref(r); });
    return tr;
  }));
}

function fillSelect(id, values) {
  const sel = $(id);
  for (const v of values) sel.append(el("option", { value: v }, v));
}

function setupFilters(meta) {
  fillSelect("f-dataset", meta.datasets.map((d) => d.name));
  fillSelect("f-kind", meta.kinds);
  fillSelect("f-principle", meta.principles);
  $("f-flags").replaceChildren(...meta.flags.map((f) =>
    el("label", {}, el("input", { type: "checkbox", value: f }), ` ${f}`)));
  $("filters").addEventListener("change", () => { state.cursor = 0; loadRows(); });
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  let timer = null;
  $("f-q").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { state.cursor = 0; loadRows(); }, 200); });
}

// ------------------------------------------------------------------ agreement

function rateText(r) {
  return r.n ? `${pct(r.rate)} (95% CI ${ci(r.ci95)}) · n=${r.n}` : "no A/B labels yet";
}

async function loadAgreement() {
  const s = await api("/api/agreement");
  const pairs = s.human_ai.pairs, rev = s.human_ai.revision_better;
  const main = pairs.n ? pairs : rev;
  $("agreement").textContent = main.n
    ? `human–AI agreement: ${pct(main.rate)} (95% CI ${ci(main.ci95)}) · n=${main.n}`
    : "human–AI agreement: no labels yet";
  const panel = $("agreement-panel");
  const table = (title, r, extra, column = "agreement") => [
    el("h3", {}, title),
    el("table", {},
      el("tr", {}, el("th", {}, "principle"), el("th", {}, column), el("th", {}, "95% CI"), el("th", {}, "n")),
      el("tr", {}, el("td", {}, el("b", {}, "all")), el("td", {}, pct(r.rate)), el("td", {}, ci(r.ci95)), el("td", {}, r.n)),
      r.by_principle.map((p) => el("tr", {}, el("td", {}, p.principle_id), el("td", {}, pct(p.rate)),
        el("td", {}, ci(p.ci95)), el("td", {}, p.n)))),
    extra ? el("p", { className: "muted" }, extra) : null,
  ];
  const people = s.between_people;
  panel.replaceChildren(...[
    el("h2", {}, `Agreement so far (${s.labels} labels by ${s.labelers.length} people)`),
    ...table("Pairs: people who picked the response the AI chose", pairs,
      `ties ${pairs.ties}, skips ${pairs.skips} (not counted)`),
    ...(rev.n || rev.ties ? table("SL-CAI: the revision is better than the first answer", rev,
      `ties ${rev.ties}, skips ${rev.skips}, unchanged revisions ${rev.unchanged} (not counted)`) : []),
    ...(s.human_ai.critique_real.n ? table("SL-CAI: did the critique name a real problem?", s.human_ai.critique_real,
      `skips ${s.human_ai.critique_real.skips} (not counted)`, "yes") : []),
    el("h3", {}, "Between people (rows two people both labelled)"),
    people.length
      ? el("table", {},
        el("tr", {}, ["question", "people", "raw agreement", "95% CI", "n", "Cohen's kappa"].map((h) => el("th", {}, h))),
        people.map((p) => el("tr", {}, el("td", {}, p.question), el("td", {}, p.labelers.join(" & ")),
          el("td", {}, pct(p.rate)), el("td", {}, ci(p.ci95)), el("td", {}, p.n), el("td", {}, num(p.kappa)))))
      : el("p", { className: "muted" }, "no row labelled by two people yet")].filter(Boolean));
}

// ------------------------------------------------------------------ row page

function turns(list) {
  return list.map((t) => el("div", { className: `turn ${t.role}` }, el("span", { className: "role" }, t.role), t.content));
}

function diffView(ops) {
  return el("div", { className: "diff" }, ops.map(([op, text]) =>
    op === "=" ? text : el(op === "+" ? "ins" : "del", {}, text)));
}

function question(q, text, keys) {
  const mine = (state.row.mine || {})[q];
  return el("div", { className: "question", "data-question": q },
    el("p", {}, text),
    keys.map(([key, answer, label]) => el("button", {
      type: "button", className: mine && mine.answer === answer ? "chosen" : "",
      onclick: () => label_(q, answer),
    }, el("kbd", {}, key), ` ${label}`)),
    mine ? el("span", { className: "answered" }, `your answer: ${ANSWER_NAMES[mine.answer] || mine.answer}`) : null);
}

function aiPanel(r) {
  if (!r.questions) return null;
  if (!r.ai) {
    return el("div", { className: "ai hidden-label", id: "ai" }, "The AI's label is hidden until you answer.");
  }
  const mine = (r.mine[r.questions[0]] || {}).answer;
  const verdict = mine === "tie" ? null : mine === r.ai.label;
  const agree = verdict === null ? "" : verdict ? " · you agree" : " · you disagree";
  if (r.kind === "pair") {
    return el("div", { className: "ai", id: "ai" },
      el("p", {}, el("b", {}, `AI: ${r.ai.label.toUpperCase()} better`),
        ` · P(A better) ${num(r.ai.prob_a)} · soft label ${num(r.ai.preference_prob)}`,
        ` · both orders agree: ${r.ai.position_consistent === null ? "n/a" : r.ai.position_consistent ? "yes" : "no"}`,
        el("span", { className: verdict ? "agree-yes" : "agree-no" }, agree)),
      el("table", {},
        el("tr", {}, el("th", {}, "principle"), el("th", {}, "P(A better), A shown first"), el("th", {}, "P(A better), B shown first")),
        r.ai.principles.map((p) => el("tr", {}, el("td", {}, p.principle_id), el("td", {}, num(p.ab)), el("td", {}, num(p.ba))))));
  }
  return el("div", { className: "ai", id: "ai" },
    el("p", {}, el("b", {}, r.ai.changed ? "The job revised the answer (it claims B, the revision, is better)" : "The revisions left the answer unchanged"),
      el("span", { className: verdict ? "agree-yes" : "agree-no" }, agree)));
}

function renderRow() {
  const r = state.row;
  const pos = state.rows.findIndex((x) => x.dataset === r.dataset && x.id === r.id);
  const nav = el("span", { className: "nav muted" }, pos >= 0 ? `row ${pos + 1} of ${state.rows.length} · ` : "",
    el("a", { href: "#/" }, "back to the list"));
  const parts = [nav, el("h2", {}, `${r.dataset} · ${r.id}`),
    el("p", {}, r.principles.map((p) => el("span", { className: "chip" }, p)),
      r.flags.map((f) => el("span", { className: "chip flag" }, f)),
      r.flip ? el("span", { className: "chip flip" }, "position-bias flip") : null,
      r.failed ? el("span", { className: "chip failed" }, r.failed) : null),
    el("h3", {}, "Prompt"), ...turns(r.turns)];
  if (r.failure) parts.push(el("pre", { className: "turn" }, JSON.stringify(r.failure, null, 2)));
  if (r.kind === "pair") {
    parts.push(el("div", { className: "side-by-side" },
      el("div", { className: "turn assistant", id: "response-a" }, el("span", { className: "role" }, "response A"), r.response_a),
      el("div", { className: "turn assistant", id: "response-b" }, el("span", { className: "role" }, "response B"), r.response_b)));
    if (r.questions) {
      parts.push(question("pair", `Which response is better under ${r.principles.length > 1 ? "these principles" : "this principle"}: ${r.principles.join(", ") || "the constitution"}?`,
        [["1", "a", "A better"], ["2", "b", "B better"], ["=", "tie", "tie"], ["s", "skip", "skip"]]), aiPanel(r));
    }
  } else if (r.kind === "sl_cai") {
    parts.push(el("div", { className: "side-by-side" },
      el("div", { className: "turn assistant" }, el("span", { className: "role" }, "A: first answer"), r.response),
      el("div", { className: "turn assistant" }, el("span", { className: "role" }, "B: final revision"), r.revision)),
    el("h3", {}, "Word diff, first answer → final revision"), diffView(r.diff));
    if (r.questions) {
      parts.push(question("revision_better", "Is the revision better than the answer?",
        [["1", "a", "A: the answer"], ["2", "b", "B: the revision"], ["=", "tie", "same"], ["s", "skip", "skip"]]),
      question("critique_real", "Did the critique name a real problem?", [["y", "yes", "yes"], ["n", "no", "no"], ["s", "skip", "skip"]]),
      aiPanel(r));
    }
    r.rounds.forEach((rd, i) => parts.push(el("div", { className: "round" },
      el("h3", {}, `Round ${i + 1}: `, el("span", { className: "chip" }, rd.principle_id), rd.flags.map((f) => el("span", { className: "chip flag" }, f))),
      el("div", { className: "turn" }, el("span", { className: "role" }, "critique"), rd.critique),
      el("div", { className: "turn assistant" }, el("span", { className: "role" }, "revision (changes from the text it revised)"), diffView(rd.diff)))));
  } else if (r.kind === "policy_eval") {
    parts.push(el("div", { className: "side-by-side" }, Object.entries(r.answers).map(([name, a]) =>
      el("div", { className: "turn assistant" }, el("span", { className: "role" }, name), a.text,
        el("p", { className: "muted" }, Object.entries(a).filter(([k]) => k !== "text").map(([k, v]) => `${k} ${num(v)}`).join(" · "))))));
  } else if (r.fields) {
    parts.push(el("table", {}, Object.entries(r.fields).map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v))))));
  }
  if (r.questions) {
    const note = (Object.values(r.mine)[0] || {}).note || "";
    parts.push(el("label", { for: "note" }, "Note (sent with your next answer)"),
      el("textarea", { id: "note", placeholder: "why, or what is wrong with this row" }, note));
  }
  $("row-view").replaceChildren(...parts);
}

async function openRow(dataset, id) {
  state.row = await api(`/api/row?${new URLSearchParams({ dataset, id, labeler: state.labeler })}`);
  const pos = state.rows.findIndex((x) => x.dataset === dataset && x.id === id);
  if (pos >= 0) state.cursor = pos;
  renderRow();
}

async function label_(q, answer) {
  const r = state.row;
  if (!r || !r.questions || !r.questions.includes(q)) return;
  if (!state.labeler) { askName(); return; }
  const note = $("note") ? $("note").value : "";
  const body = await api("/api/labels", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ dataset: r.dataset, id: r.id, question: q, answer, labeler: state.labeler, note }),
  });
  r.mine = body.mine;
  r.ai = body.ai;
  const listed = state.rows.find((x) => x.dataset === r.dataset && x.id === r.id);
  if (listed) listed.mine = Object.fromEntries(Object.entries(body.mine).map(([k, v]) => [k, v.answer]));
  renderRow();
  await loadAgreement();
}

// ------------------------------------------------------------------ routing and keys

function move(step) {
  if (!state.rows.length) return;
  state.cursor = Math.max(0, Math.min(state.rows.length - 1, state.cursor + step));
  if (!$("row-view").hidden) location.hash = rowHref(state.rows[state.cursor]);
  else renderRows();
}

async function route() {
  const hash = location.hash || "#/";
  const rowView = hash.startsWith("#/row?");
  $("list-view").hidden = rowView;
  $("row-view").hidden = !rowView;
  if (rowView) {
    if (!state.loaded) await loadRows();
    const q = new URLSearchParams(hash.slice("#/row?".length));
    await openRow(q.get("dataset"), q.get("id"));
  } else {
    await loadRows();
  }
  window.scrollTo(0, 0);
}

document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (e.key === "Escape") {
    if (typing) document.activeElement.blur(); else location.hash = "#/";
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !$("name-dialog").hidden) return;
  const inRow = !$("row-view").hidden;
  const keys = { j: () => move(1), k: () => move(-1) };
  if (inRow) {
    const r = state.row || {};
    const first = (r.questions || [])[0];
    Object.assign(keys, {
      "1": () => label_(first, "a"), "2": () => label_(first, "b"), "=": () => label_(first, "tie"),
      s: () => label_(first, "skip"), y: () => label_("critique_real", "yes"), n: () => label_("critique_real", "no"),
    });
  } else {
    Object.assign(keys, {
      Enter: () => { if (state.rows[state.cursor]) location.hash = rowHref(state.rows[state.cursor]); },
      "/": () => $("f-q").focus(),
    });
  }
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});

window.addEventListener("hashchange", route);

(async function start() {
  state.meta = await api("/api/meta");
  $("folder").textContent = state.meta.folder;
  setupFilters(state.meta);
  $("labeler-name").textContent = state.labeler || "?";
  await loadAgreement();
  if (!state.labeler) askName();
  await route();
})();
