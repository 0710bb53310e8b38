// Passkeys (WebAuthn): the browser's part of the ceremony. A form with data-passkey="create" (add a passkey) or
// "get" (sign in, confirm it's you) asks the server for options (data-options-url, a POST with the form's CSRF
// token), lets the browser's passkey dialog answer, puts the answer (JSON) into the form's hidden "credential"
// field and submits the form; the server verifies it and answers with a normal page. A form with
// data-passkey-autofill also offers the browser's passkey autofill (conditional mediation) on the email field.
(function () {
  "use strict";
  if (!window.PublicKeyCredential || !navigator.credentials) {
    document.querySelectorAll("[data-passkey-unsupported]").forEach(function (el) { el.hidden = false; });
    document.querySelectorAll("form[data-passkey] button").forEach(function (b) { b.disabled = true; });
    return;
  }

  function toBuf(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) { s += "="; }
    var bin = atob(s), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out.buffer;
  }
  function toB64u(buf) {
    var bytes = new Uint8Array(buf), s = "";
    for (var i = 0; i < bytes.length; i++) { s += String.fromCharCode(bytes[i]); }
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function ids(list) {
    (list || []).forEach(function (c) { c.id = toBuf(c.id); });
    return list;
  }
  function creation(o) {
    o.challenge = toBuf(o.challenge);
    o.user.id = toBuf(o.user.id);
    o.excludeCredentials = ids(o.excludeCredentials);
    return o;
  }
  function request(o) {
    o.challenge = toBuf(o.challenge);
    o.allowCredentials = ids(o.allowCredentials);
    return o;
  }
  function serialise(cred) {
    var r = cred.response;
    var out = {
      id: cred.id, rawId: toB64u(cred.rawId), type: cred.type,
      authenticatorAttachment: cred.authenticatorAttachment || undefined,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      response: { clientDataJSON: toB64u(r.clientDataJSON) }
    };
    if (r.attestationObject) {
      out.response.attestationObject = toB64u(r.attestationObject);
      out.response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      out.response.authenticatorData = toB64u(r.authenticatorData);
      out.response.signature = toB64u(r.signature);
      if (r.userHandle && r.userHandle.byteLength) { out.response.userHandle = toB64u(r.userHandle); }
    }
    return JSON.stringify(out);
  }
  function options(form) {
    var body = new FormData();
    var csrf = form.querySelector("input[name=csrf_token]");
    body.append("csrf_token", csrf ? csrf.value : "");
    return fetch(form.getAttribute("data-options-url"), { method: "POST", body: body, credentials: "same-origin" })
      .then(function (resp) {
        if (!resp.ok) { throw new Error("options"); }
        return resp.json();
      });
  }
  function say(form, text) {
    var box = form.querySelector("[data-passkey-message]");
    if (box) { box.textContent = text; box.hidden = !text; }
  }
  function finish(form, cred) {
    form.querySelector("input[name=credential]").value = serialise(cred);
    form.setAttribute("data-passkey-done", "1");
    form.submit();
  }

  var pending = null; // the autofill request, aborted when the person clicks a passkey button

  document.querySelectorAll("form[data-passkey]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (form.getAttribute("data-passkey-done")) { return; }
      event.preventDefault();
      if (pending) { pending.abort(); pending = null; }
      say(form, "");
      var creating = form.getAttribute("data-passkey") === "create";
      options(form).then(function (o) {
        return creating ? navigator.credentials.create({ publicKey: creation(o) })
                        : navigator.credentials.get({ publicKey: request(o) });
      }).then(function (cred) {
        if (!cred) { throw new Error("none"); }
        finish(form, cred);
      }).catch(function (err) {
        if (err && err.name === "InvalidStateError") {
          say(form, "This passkey is already registered for your account.");
        } else if (err && err.name === "NotAllowedError") {
          say(form, "The passkey request was cancelled or timed out. Try again.");
        } else {
          say(form, "Your browser could not use a passkey here. Reload the page and try again.");
        }
      });
    });
  });

  var auto = document.querySelector("form[data-passkey-autofill]");
  if (auto && PublicKeyCredential.isConditionalMediationAvailable) {
    PublicKeyCredential.isConditionalMediationAvailable().then(function (ok) {
      if (!ok) { return; }
      pending = new AbortController();
      var signal = pending.signal;
      options(auto).then(function (o) {
        return navigator.credentials.get({ publicKey: request(o), mediation: "conditional", signal: signal });
      }).then(function (cred) {
        if (cred) { finish(auto, cred); }
      }).catch(function () { /* aborted, or no passkey chosen: the form stays as it is */ });
    });
  }
})();
