// Installed before any figure script: records errors so that the self-check can report them.
window.__ranksearchErrors = [];
window.addEventListener("error", function (e) {
  window.__ranksearchErrors.push(String(e.message));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__ranksearchErrors.push(Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
