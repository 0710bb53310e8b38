// The OIDC connection form: the redirect URI to register at the identity provider, updated as the short name is
// typed. Without JavaScript the page shows the pattern with a placeholder (or the short name as sent).
(function () {
  document.querySelectorAll("[data-slug-source][data-template]").forEach(function (out) {
    var input = document.getElementById(out.getAttribute("data-slug-source"));
    if (!input) return;
    var template = out.getAttribute("data-template");
    function update() {
      var slug = input.value.trim().toLowerCase();
      out.textContent = template.replace("{slug}", slug || "<short name>");
    }
    input.addEventListener("input", update);
    update();
  });
})();
