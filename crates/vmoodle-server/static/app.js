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
