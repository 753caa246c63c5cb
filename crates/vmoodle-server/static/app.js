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
