// Runs first: a script error or a request the page's policy refused is shown at the
// top of the page (#report-errors), where a reader, and the browser test, see it.
window.schedyErrors = [];
function schedyError(message) {
  window.schedyErrors.push(String(message));
  var box = document.getElementById('report-errors');
  if (box) { box.style.display = 'block'; box.textContent = window.schedyErrors.join('\n'); }
}
window.addEventListener('error', function (e) { schedyError('error: ' + e.message); });
window.addEventListener('unhandledrejection', function (e) { schedyError('error: ' + e.reason); });
document.addEventListener('securitypolicyviolation', function (e) {
  schedyError('blocked request: ' + e.blockedURI + ' (' + e.violatedDirective + ')');
});
