// vmoodle web admin: small progressive enhancements; every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // "Select all" checkboxes.
  document.querySelectorAll("input[data-select-all]").forEach((all) => {
    all.addEventListener("change", () => {
      document.querySelectorAll(all.dataset.selectAll).forEach((c) => { c.checked = all.checked; });
    });
  });
  // Buttons that ask before acting.
  document.querySelectorAll("[data-confirm]").forEach((b) => {
    b.addEventListener("click", (e) => { if (!confirm(b.dataset.confirm)) e.preventDefault(); });
  });
});

// ---- live job pages (pages-ops) ---------------------------------------------------------------
// A job page whose job is still going carries data-events: its event stream sends the job's JSON
// whenever it changes; the state, live step, steps, log, error and children update in place, and
// the page reloads once the job has ended (to show Retry and what was undone).
document.addEventListener("DOMContentLoaded", () => {
  const root = document.querySelector("#job[data-events]");
  if (!root || !window.EventSource) return;
  const $ = (id) => document.getElementById(id);
  const text = (el, t) => { if (el && el.textContent !== t) el.textContent = t; };
  const badge = (el, state) => { if (!el) return; text(el, state); el.className = "badge " + state.replace(/ /g, "-"); };
  const src = new EventSource(root.dataset.events);
  src.addEventListener("job", (e) => {
    const s = JSON.parse(e.data);
    const j = s.job;
    badge($("job-state"), j.state);
    text($("job-duration"), s.duration);
    const l = s.live;
    text($("job-live"), l && l.step
      ? "Now: step " + l.n + " of " + l.total + ", " + l.step + (l.of > 0 ? " (" + l.done + " of " + l.of + " " + l.what + ")" : "")
      : "");
    const steps = $("job-steps");
    if (steps) {
      steps.replaceChildren(...j.steps.map((st) => {
        const li = document.createElement("li");
        li.textContent = st.step + " ";
        const ms = document.createElement("span");
        ms.className = "muted";
        ms.textContent = "(" + st.ms + " ms)";
        li.append(ms);
        return li;
      }));
    }
    text($("job-log"), j.log.map((x) => x + "\n").join(""));
    const err = $("job-error");
    if (err) { text(err, j.error || ""); err.hidden = !j.error; }
    s.children.forEach((c) => {
      const tr = document.querySelector('tr[data-child="' + c.id + '"]');
      if (!tr) return;
      badge(tr.querySelector(".badge"), c.state);
      text(tr.cells[3], c.step);
    });
    if (!s.active) { src.close(); window.location.reload(); }
  });
  src.onerror = () => { /* the browser reconnects by itself; a gone job just stops updating */ };
});

// New platform: typing the token fills the fields the naming schema gives (unless edited).
document.addEventListener("DOMContentLoaded", () => {
  const token = document.querySelector("input[data-expand]");
  if (!token) return;
  const form = token.form;
  const live = document.getElementById("p-token-live");
  form.querySelectorAll("[data-field]").forEach((el) => {
    el.addEventListener("input", () => { el.dataset.touched = "1"; });
  });
  let timer = null;
  token.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const v = token.value.trim();
      if (!v) return;
      try {
        const r = await fetch(token.dataset.expand + "?token=" + encodeURIComponent(v), { credentials: "same-origin" });
        const j = await r.json();
        if (!r.ok) { live.textContent = j.error || "invalid token"; token.setAttribute("aria-invalid", "true"); return; }
        live.textContent = ""; token.removeAttribute("aria-invalid");
        for (const k of ["host", "dbname", "dbuser", "dataroot", "prefix", "dbserver"]) {
          const el = form.querySelector('[data-field="' + k + '"]');
          if (el && !el.dataset.touched && j[k] != null) el.value = j[k];
        }
      } catch (e) { /* the server-side "Fill from token" button still works */ }
    }, 250);
  });
});
// Unticking one row unticks "select all" (which, sent, would take every row shown).
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[data-select-all]").forEach((all) => {
    document.querySelectorAll(all.dataset.selectAll).forEach((c) => {
      c.addEventListener("change", () => { if (!c.checked) all.checked = false; });
    });
  });
});
