// The console's only script: confirm bulk actions, and keep the overview fresh while it is
// left open (never while the operator is typing or has a dialog open).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
const refresh = Number(document.body.dataset.refresh || 0);
if (refresh > 0) {
  setInterval(() => {
    const typing = document.activeElement && ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (!typing && document.visibilityState === "visible") window.location.reload();
  }, refresh * 1000);
}
