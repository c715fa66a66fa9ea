// shoal console: times in the viewer's zone, the live timeline (server-sent events), the
// replay slider and the spend chart. No framework, no build step.
"use strict";

const zoneFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
});

function localizeTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    if (t.dataset.local) continue;
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) { t.textContent = zoneFormat.format(d); t.dataset.local = "1"; }
  }
}

function timeTag(iso) {
  const t = document.createElement("time");
  t.setAttribute("datetime", iso);
  const d = new Date(iso);
  t.title = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  t.textContent = t.title;
  return t;
}

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls; s.textContent = text; return s;
}

function entryLine(e) {
  const li = document.createElement("li");
  li.className = "entry fresh t-" + e.type.replaceAll(".", "-") + (e.decision ? " decided-" + e.decision : "");
  li.dataset.seq = e.seq;
  li.append(span("seq", "#" + e.seq), " ", timeTag(e.time), " ");
  const b = document.createElement("b"); b.textContent = e.type; li.append(b, " ");
  li.append(span("actor", e.actor), " ", span("detail", e.detail));
  if (e.decision) li.append(" ", span("decision", e.decision));
  if (e.cost) li.append(" ", span("money", e.cost));
  setTimeout(() => li.classList.remove("fresh"), 1500);
  return li;
}

function nodeFor(tree, iid, parentiid) {
  let list = tree.querySelector(`ol.entries[data-iid="${CSS.escape(iid)}"]`);
  if (list) return list;
  const li = document.createElement("li");
  li.className = "node"; li.dataset.node = iid;
  const head = document.createElement("div"); head.className = "node-head";
  const a = document.createElement("a"); a.href = "/sessions/" + encodeURIComponent(iid); a.textContent = iid;
  head.append(a);
  list = document.createElement("ol"); list.className = "entries"; list.dataset.iid = iid;
  li.append(head, list);
  const parent = parentiid && tree.querySelector(`ol.entries[data-iid="${CSS.escape(parentiid)}"]`);
  (parent || tree).append(li);
  return list;
}

function followSession(box) {
  const tree = document.getElementById("tree");
  const state = document.getElementById("live-state");
  const iid = box.dataset.iid;
  let gid = box.dataset.gid;
  let refresh = null;
  const params = new URLSearchParams({ after: box.dataset.after });
  if (gid) params.set("gid", gid);
  const source = new EventSource(`/sessions/${encodeURIComponent(iid)}/stream?${params}`);
  source.addEventListener("open", () => { if (state) { state.textContent = "live"; state.classList.remove("off"); } });
  source.addEventListener("error", () => { if (state) { state.textContent = "reconnecting…"; state.classList.add("off"); } });
  source.addEventListener("entry", (msg) => {
    const e = JSON.parse(msg.data);
    if (tree.querySelector(`li.entry[data-seq="${e.seq}"]`)) return;
    const parent = e.iid === iid ? null : e.parentiid;
    const known = (x) => x && tree.querySelector(`ol.entries[data-iid="${CSS.escape(x)}"]`);
    // Of the goal's other sessions, only this one's descendants belong in its tree.
    if (e.iid !== iid && !known(e.iid) && !known(e.parentiid)) return;
    nodeFor(tree, e.iid, parent).append(entryLine(e));
    document.getElementById("waiting")?.remove();
    clearTimeout(refresh);
    refresh = setTimeout(() => refreshSummary(iid), 400);
  });
}

async function refreshSummary(iid) {
  const box = document.getElementById("summary");
  const answer = await fetch(`/sessions/${encodeURIComponent(iid)}/summary`, { credentials: "same-origin" });
  if (answer.status === 200 && box) { box.innerHTML = await answer.text(); localizeTimes(box); }
}

// A list page that keeps itself current: the same URL (same filters) fetched again every
// few seconds while the tab is visible, and its list swapped in (server-rendered, no state).
function liveList(box) {
  const state = document.getElementById("list-state");
  const every = 1000 * Number(box.dataset.every || 5);
  async function tick() {
    if (document.visibilityState === "visible") {
      try {
        const answer = await fetch(location.href, { credentials: "same-origin" });
        if (answer.status !== 200) throw new Error(String(answer.status));
        const page = new DOMParser().parseFromString(await answer.text(), "text/html");
        const fresh = page.getElementById("live-list");
        if (answer.redirected || !fresh) throw new Error("signed out? reload the page");
        box.innerHTML = fresh.innerHTML; localizeTimes(box);
        if (state) { state.textContent = "live"; state.classList.remove("off"); }
      } catch (e) {
        if (state) { state.textContent = "not refreshing (" + e.message + ")"; state.classList.add("off"); }
      }
    }
    setTimeout(tick, every);
  }
  setTimeout(tick, every);
}

function replaySlider() {
  const at = document.getElementById("at");
  const shown = document.getElementById("at-shown");
  if (!at || !shown) return;
  at.addEventListener("input", () => { shown.textContent = "#" + at.value; });
  at.addEventListener("change", () => at.form.submit());
}

const PALETTE = ["#1f5fbf", "#d9730d", "#137333", "#b3261e", "#7a2e9a", "#0f7b8a"];

function spendChart() {
  const el = document.getElementById("spend-chart");
  const raw = document.getElementById("spend-data");
  if (!el || !raw || typeof uPlot === "undefined") return;
  const d = JSON.parse(raw.textContent);
  const fleets = Object.keys(d.series).sort();
  const xs = d.times;  // epoch seconds, one per bucket
  const data = [xs, ...fleets.map((f) => d.series[f])];
  const usd = (v) => v == null ? "" : (Math.abs(v) >= 0.01 || v === 0 ? "$" + v.toFixed(2) : "$" + v.toFixed(6));
  const bars = uPlot.paths.bars({ size: [0.8, 40] });
  const opts = {
    width: el.clientWidth || 600, height: 260,
    series: [{}, ...fleets.map((f, i) => ({ label: f, stroke: PALETTE[i % 6], fill: PALETTE[i % 6] + "99", paths: bars, value: (u, v) => usd(v) }))],
    axes: [{}, { values: (u, vals) => vals.map(usd), size: 90 }],
    // The whole range asked for, so one busy hour is a bar, not the whole chart.
    scales: { x: { time: true, range: () => [d.start, d.end + d.step] } },
  };
  const plot = new uPlot(opts, data, el);
  window.addEventListener("resize", () => plot.setSize({ width: el.clientWidth, height: 260 }));
}

document.addEventListener("DOMContentLoaded", () => {
  localizeTimes(document);
  const box = document.getElementById("session");
  if (box && box.dataset.live === "yes") followSession(box);
  const list = document.getElementById("live-list");
  if (list) liveList(list);
  replaySlider();
  spendChart();
});
