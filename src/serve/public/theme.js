// The colour scheme chosen on the page ("light" or "dark"; none follows the system), set before
// the page is drawn so that it never flashes in the other one.
try {
  const theme = localStorage.getItem("smallhammer.theme");
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
} catch {}
