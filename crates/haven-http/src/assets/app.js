// Haven dashboard: polls the API every 2 s and draws the posture. No library, no CDN.
"use strict";
(function () {
  const POLL_MS = 2000;
  // A token can be given once as #token=... in the address; it stays in this tab only.
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { sessionStorage.setItem("haven-token", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  const token = sessionStorage.getItem("haven-token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  let lastOk = 0;
  let target = 60;
  // The partition whose own lag the chart shows (a row's data-partition), or null: all.
  let charted = null;

  const $ = (id) => document.getElementById(id);
  function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; }
  function row(cells, cls, attrs) {
    const tr = el("tr", undefined, cls);
    for (const c of cells) {
      const td = el("td");
      if (c instanceof Node) td.appendChild(c); else if (typeof c === "number") { td.textContent = fmtNum(c); td.className = "num"; } else td.textContent = c === null || c === undefined ? "-" : String(c);
      tr.appendChild(td);
    }
    for (const k in (attrs || {})) tr.setAttribute(k, attrs[k]);
    return tr;
  }
  function fill(id, rows, empty) {
    const tb = $(id).querySelector("tbody");
    tb.replaceChildren(...rows);
    if (!rows.length) { const tr = el("tr"); const td = el("td", empty); td.colSpan = 9; tr.appendChild(td); tb.appendChild(tr); }
  }
  function fmtNum(n) { return Number.isInteger(n) ? String(n) : n.toFixed(1); }
  function age(s) {
    if (s === null || s === undefined) return "never";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }
  function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "-"; }
  function secs(s) { return s === null || s === undefined ? "unknown" : (s < 10 ? s.toFixed(1) : Math.round(s)) + " s"; }

  async function get(path) {
    const r = await fetch(path, { headers, cache: "no-store" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((body.error && body.error.message) || ("HTTP " + r.status));
    return body;
  }

  function header(p) {
    const r = p.readiness;
    target = r.rpo_target_s;
    $("readiness").className = r.verdict;
    $("verdict").textContent = r.text;
    $("rpo-now").textContent = secs(r.rpo_now_s);
    $("rpo-target").textContent = "target " + secs(r.rpo_target_s);
    $("rto-last").textContent = r.rto_last_drill_s === null ? "not measured" : secs(r.rto_last_drill_s);
    $("rto-target").textContent = "target " + secs(r.rto_target_s);
    $("last-drill").textContent = r.last_drill ? r.last_drill.verdict + ", " + age(r.last_drill.age_s) : "none";
    $("last-restore").textContent = r.last_restore_test_at ? age(r.last_restore_test_age_s) : "none";
    const f = p.failover;
    $("region").textContent = f ? ("active: " + (f.active || "none") + " · epoch " + f.epoch) : "no failover configured";
  }

  function alerts(p) {
    const items = p.findings.map((f) => { const li = el("li", f.summary + " (" + f.alert + ")", f.severity); li.dataset.alert = f.alert; return li; });
    if (!items.length) items.push(el("li", "none", "none"));
    $("alerts").replaceChildren(...items);
    $("alert-count").textContent = p.findings.length ? "(" + p.findings.length + ")" : "";
  }

  // A mirror position read from the last checkpoint (a bulk copy) is a lower bound.
  function mirrorPos(r) { return (r.position_from_checkpoint ? "≥ " : "") + r.mirrored_to + " / " + r.source_high; }

  function partitions(p) {
    const all = [];
    for (const r of (p.failover ? p.failover.ledger : [])) all.push({ kind: "mirror " + r.mirror + " → " + r.into, key: "mirror:" + r.mirror + ":" + r.topic + "/" + r.partition, part: r.topic + "/" + r.partition, lag_s: r.lag_seconds, lag_n: r.lag_records, pos: mirrorPos(r), err: null });
    for (const m of p.mirrors) {
      if (m.error) all.push({ kind: "mirror " + m.name, key: "mirror:" + m.name, part: "-", lag_s: null, lag_n: null, pos: "-", err: m.error });
      for (const r of m.partitions) all.push({ kind: "mirror " + m.name, key: "mirror:" + m.name + ":" + r.topic + "/" + r.partition, part: r.topic + "/" + r.partition, lag_s: r.lag_seconds, lag_n: r.lag_records, pos: mirrorPos(r), err: null });
    }
    for (const b of p.backups) for (const r of b.partitions) all.push({ kind: "backup " + b.job, key: "backup:" + b.job + ":" + r.topic + "/" + r.partition, part: r.topic + "/" + r.partition, lag_s: r.lag_seconds, lag_n: r.lag_records, pos: r.durable + " / " + r.high_watermark, err: null });
    all.sort((a, b) => (b.lag_s === null ? Infinity : b.lag_s) - (a.lag_s === null ? Infinity : a.lag_s));
    fill("partitions", all.map((x) => {
      const bad = x.err || x.lag_s > target;
      const state = x.err ? "unreadable: " + x.err : (x.lag_s > target ? "behind the RPO target" : (x.lag_n > 0 ? "copying" : "caught up"));
      const tr = row([x.kind, x.part, x.lag_s === null ? "?" : x.lag_s, x.lag_n === null ? "?" : x.lag_n, x.pos, state], (bad ? "bad" : "") + (x.key === charted ? " charted" : ""), { "data-partition": x.key, title: "click: chart this partition's lag" });
      tr.addEventListener("click", () => { charted = x.key; drawChart(); });
      return tr;
    }), "no mirror or backup configured");
  }

  function backups(p) {
    const now = Date.now();
    fill("backups", p.backups.map((b) => {
      const durable = b.partitions.reduce((s, x) => s + x.durable, 0), high = b.partitions.reduce((s, x) => s + x.high_watermark, 0);
      const lost = b.partitions.reduce((s, x) => s + x.records_lost, 0);
      const behind = b.partitions.some((x) => x.lag_seconds > target);
      const state = b.error ? "unreadable: " + b.error : (behind ? "behind the RPO target" : "streaming");
      return row([b.job, b.repository, b.partitions.length, durable + " / " + high, b.last_flush_at ? age((now - b.last_flush_at) / 1000) : "never", lost, state], b.error || behind ? "bad" : (lost ? "warn" : ""));
    }), "no backup job in the config");
  }

  function postgres(p) {
    const dbs = p.failover ? p.failover.databases : [];
    fill("postgres", dbs.map((d) => {
      const ok = d.subscription_enabled === true;
      const behind = d.lag_seconds !== null && d.lag_seconds > target;
      return row([d.database, d.region, d.source, d.lag_seconds === null ? "?" : d.lag_seconds, d.lag_bytes === null ? "?" : d.lag_bytes, d.remote_lsn, ok ? (behind ? "behind the RPO target" : "replicating") : "not replicating"], !ok || behind ? "bad" : "");
    }), "no replicated database");
  }

  function drills(p) {
    fill("drills", p.drills.map((d) => {
      const a = el("a", "report"); a.href = "/api/v1/drills/" + encodeURIComponent(d.id) + "?format=html";
      if (token) a.addEventListener("click", (ev) => { ev.preventDefault(); fetch(a.href, { headers }).then((r) => r.text()).then((t) => { const w = window.open(); if (w) { w.document.write(t); w.document.close(); } }); });
      return row([d.started_at, d.scenario, d.verdict, d.rto_s === null ? "-" : d.rto_s, d.lost === null ? "-" : d.lost, a], d.verdict === "PASS" ? "" : "bad");
    }), "no drill on record");
  }

  function repositories(p) {
    const now = Date.now();
    fill("repositories", p.repositories.map((r) => row([r.name, r.segments, r.last_segment_at ? age((now - r.last_segment_at) / 1000) : "never", r.audit_entries, r.problems.length ? r.problems.join("; ") : "intact"], r.problems.length ? "bad" : "")), "no repository");
  }

  // The chart: every kind's worst lag, or the charted partition's own.
  function drawChart() {
    const one = charted;
    $("chart-for").textContent = one ? one : "all partitions";
    $("chart-all").hidden = !one; $("legend-all").hidden = !!one; $("legend-one").hidden = !one;
    for (const tr of document.querySelectorAll("#partitions tbody tr")) tr.classList.toggle("charted", !!one && tr.dataset.partition === one);
    if (!one) { get("/api/v1/history").then((h) => { if (!charted) chart(h.points, [["mirror_s", "#2f6fdf", 1.5], ["backup_s", "#8a3ffc", 1.5], ["database_s", "#0a8f7f", 1.5], ["rpo_s", "#000", 2.5]]); }).catch(() => {}); return; }
    get("/api/v1/history?partition=" + encodeURIComponent(one))
      .then((h) => { if (charted === one) chart(h.points, [["lag_s", "#000", 2.5]]); })
      .catch((e) => { if (charted === one) { chart([], []); $("chart-for").textContent = one + ": " + e.message; } });
  }

  function compliance(p) {
    const now = Date.now();
    fill("compliance", p.repositories.map((r) => {
      const c = r.compliance;
      const retention = (c.retention || "keep everything") + c.retention_topics.map(([t, d]) => "; " + t + ": " + d).join("");
      const holds = c.holds_error ? "unreadable: " + c.holds_error : (c.holds.length ? c.holds.map((h) => h.name + " (" + h.topics + ", since " + age((now - h.since) / 1000) + ", " + h.by + ")").join("; ") : "none");
      const key = !c.encrypted ? "not encrypted" : (c.key_id + ", current since " + (c.key_since ? age((now - c.key_since) / 1000) : "?") + (c.key_rotation_due ? ": rotation due" : "") + " · " + c.key_rotations + " rotation" + (c.key_rotations === 1 ? "" : "s"));
      const erased = c.erasures ? c.erasures + ", last " + age((now - c.last_erasure_at) / 1000) : "none";
      return row([r.name, retention, holds, key, erased], c.holds_error ? "bad" : (c.key_rotation_due ? "warn" : ""), { "data-repository": r.name });
    }), "no repository");
  }

  function chart(points, lines) {
    const svg = $("chart"), W = 800, H = 160, ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    if (!points.length) return;
    const t1 = points[points.length - 1].at, t0 = Math.min(points[0].at, t1 - 60000);
    const ymax = Math.max(target * 1.2, ...points.map((p) => Math.max(...lines.map((l) => p[l[0]])))) || 1;
    const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * (W - 10) + 5, y = (v) => H - 5 - (v / ymax) * (H - 20);
    const line = (key, color, width) => {
      const pl = document.createElementNS(ns, "polyline");
      pl.setAttribute("points", points.map((p) => x(p.at).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" "));
      pl.setAttribute("fill", "none"); pl.setAttribute("stroke", color); pl.setAttribute("stroke-width", width);
      svg.appendChild(pl);
    };
    const tl = document.createElementNS(ns, "line");
    tl.setAttribute("x1", 0); tl.setAttribute("x2", W); tl.setAttribute("y1", y(target)); tl.setAttribute("y2", y(target));
    tl.setAttribute("stroke", "#b3261e"); tl.setAttribute("stroke-dasharray", "6 4");
    svg.appendChild(tl);
    for (const [key, color, width] of lines) line(key, color, width);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 8); label.setAttribute("y", 14); label.setAttribute("font-size", 12);
    label.textContent = "max " + ymax.toFixed(1) + " s";
    svg.appendChild(label);
  }

  function audit(a) {
    fill("audit", a.entries.map((e) => row([e.seq === undefined ? "-" : e.seq, when(e.at), e.action, e.user + "@" + e.host, e.epoch === undefined ? "-" : e.epoch])), "no entry");
  }

  function freshness(err) {
    const f = $("freshness");
    const since = lastOk ? (Date.now() - lastOk) / 1000 : null;
    if (err) { f.textContent = "STALE: " + err + (since !== null ? " (last data " + age(since) + ")" : ""); f.className = "freshness stale"; }
  }

  async function tick() {
    try {
      const p = await get("/api/v1/posture");
      header(p); alerts(p); partitions(p); backups(p); postgres(p); drills(p); repositories(p); compliance(p);
      const f = $("freshness");
      f.textContent = "data from " + age(p.reading.age_s) + " (read in " + p.reading.took_ms + " ms)";
      f.className = p.reading.stale ? "freshness stale" : "freshness";
      if (p.reading.stale) f.textContent = "STALE: " + f.textContent;
      lastOk = Date.now();
      document.body.dataset.takenAt = String(p.reading.taken_at);
      drawChart();
      if (p.repositories.length) get("/api/v1/audit?limit=10").then(audit).catch(() => {});
    } catch (e) {
      freshness(e.message);
    }
  }
  $("chart-all").addEventListener("click", () => { charted = null; drawChart(); });
  tick();
  setInterval(tick, POLL_MS);
})();
