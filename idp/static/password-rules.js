// Live checklist of the password rules beside a new-password field. The server enforces the same rules;
// the "commonly used" rule is only checked there.
(function () {
  "use strict";
  var checks = {
    // invisible and control characters count towards nothing (the server refuses them)
    length: function (v) { return v.replace(/[\p{Cc}\p{Cf}\p{Co}\p{Cn}\p{Zl}\p{Zp}]/gu, "").length >= 8; },
    upper: function (v) { return /\p{Lu}/u.test(v); },
    lower: function (v) { return /\p{Ll}/u.test(v); },
    digit: function (v) { return /\p{Nd}/u.test(v); },
    special: function (v) { return /[^\p{L}\p{N}]/u.test(v); }
  };
  document.querySelectorAll("ul.rules[data-rules-for]").forEach(function (list) {
    var input = document.getElementById(list.getAttribute("data-rules-for"));
    if (!input) { return; }
    var update = function () {
      var v = input.value;
      list.querySelectorAll("li[data-rule]").forEach(function (li) {
        var fn = checks[li.getAttribute("data-rule")];
        if (!fn) { return; }
        var ok = v.length > 0 && fn(v);
        li.classList.toggle("ok", ok);
        li.classList.toggle("todo", !ok);
      });
    };
    input.addEventListener("input", update);
    update();
  });
})();
