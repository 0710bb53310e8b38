// node-saml (v5) as a SAML service provider of idhub, one phase per run, driven by tests/interop/test_saml_node.py.
// Everything it checks (signatures against idhub's metadata certificate, audience, InResponseTo, timestamps,
// decryption) is node-saml's own code. Usage: node sp.mjs PHASE '{json args}'; prints one JSON object.
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { SAML } from "@node-saml/node-saml";

const [phase, raw] = process.argv.slice(2);
const args = JSON.parse(raw || "{}");

// InResponseTo checks across phases (separate processes): node-saml's CacheProvider over a JSON file.
function fileCache(path) {
  const load = () => (existsSync(path) ? JSON.parse(readFileSync(path, "utf8")) : {});
  const save = (data) => writeFileSync(path, JSON.stringify(data));
  return {
    async saveAsync(key, value) {
      const data = load();
      if (data[key]) return null;
      data[key] = { value, createdAt: Date.now() };
      save(data);
      return data[key];
    },
    async getAsync(key) {
      const item = load()[key];
      return item ? item.value : null;
    },
    async removeAsync(key) {
      const data = load();
      const item = data[key];
      if (!item) return null;
      delete data[key];
      save(data);
      return key;
    },
  };
}

function sp(validateInResponseTo = "always") {
  const opts = {
    issuer: args.entity_id,
    callbackUrl: args.acs,
    entryPoint: args.sso,
    logoutUrl: args.slo,
    logoutCallbackUrl: args.sp_slo,
    idpCert: args.idp_cert,
    idpIssuer: args.idp_entity,
    audience: args.entity_id,
    wantAssertionsSigned: true,
    wantAuthnResponseSigned: true,
    identifierFormat: "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    privateKey: readFileSync(args.key_file, "utf8"),
    publicCert: readFileSync(args.cert_file, "utf8"),
    signatureAlgorithm: "sha256",
    digestAlgorithm: "sha256",
    validateInResponseTo,
    cacheProvider: fileCache(args.cache_file),
  };
  if (args.decryption_key_file) opts.decryptionPvk = readFileSync(args.decryption_key_file, "utf8");
  return new SAML(opts);
}

async function main() {
  const saml = sp();
  switch (phase) {
    case "metadata": {
      const dec = args.decryption_cert_file ? readFileSync(args.decryption_cert_file, "utf8") : null;
      return { metadata: saml.generateServiceProviderMetadata(dec, readFileSync(args.cert_file, "utf8")) };
    }
    case "authorize":
      return { url: await saml.getAuthorizeUrlAsync(args.relay_state, undefined, {}) };
    case "acs": {
      const container = { SAMLResponse: args.saml_response };
      if (args.relay_state != null) container.RelayState = args.relay_state;
      const { profile, loggedOut } = await saml.validatePostResponseAsync(container);
      return { profile, loggedOut };
    }
    case "logout":
      return { url: await saml.getLogoutUrlAsync(args.profile, args.relay_state, {}) };
    case "slo": {
      // A message idhub redirected the browser to (LogoutRequest or LogoutResponse), signature on the query.
      const url = new URL(args.url);
      const query = Object.fromEntries(url.searchParams.entries());
      const { profile, loggedOut } = await saml.validateRedirectAsync(query, url.search.slice(1));
      const out = { profile, loggedOut };
      if (query.SAMLRequest && profile) {
        out.response_url = await saml.getLogoutResponseUrlAsync(profile, query.RelayState, {}, true);
      }
      return out;
    }
    case "slo_post": {
      // A message idhub's page posted to the SP's SingleLogoutService (HTTP-POST, signed inside the XML).
      if (args.saml_request) {
        const { profile, loggedOut } = await saml.validatePostRequestAsync({ SAMLRequest: args.saml_request });
        const response_url = await saml.getLogoutResponseUrlAsync(profile, args.relay_state, {}, true);
        return { profile, loggedOut, response_url };
      }
      // validatePostResponseAsync only looks for InResponseTo on a <Response>, so with "always" it refuses every
      // LogoutResponse; the test checks our InResponseTo itself. Signature, issuer and status are node-saml's.
      const { profile, loggedOut } = await sp("ifPresent").validatePostResponseAsync({
        SAMLResponse: args.saml_response,
      });
      return { profile, loggedOut };
    }
    default:
      throw new Error(`unknown phase ${phase}`);
  }
}

main().then(
  (out) => process.stdout.write(JSON.stringify(out)),
  (err) => {
    process.stdout.write(JSON.stringify({ error: String(err && err.message ? err.message : err) }));
    process.exit(1);
  },
);
