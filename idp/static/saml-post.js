// Submits the SAML response form to the app (the page also has a visible Continue button without JavaScript).
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("saml-post");
  if (form) { form.submit(); }
});
