// A relying party built on openid-client (v6), driven by tests/interop/test_oidc_node.py (with the sign-in
// pages driven by requests or by real Chromium).
//   node rp.mjs start  '{"issuer":…,"client_id":…,"client_secret":…,"redirect_uri":…[, "acr_values":…]}'
//       → {"url", "state", "nonce", "verifier"}           (discovery + authorization URL with S256 PKCE)
//   node rp.mjs finish '{…, "callback", "state", "nonce", "verifier", "post_logout_redirect_uri"}'
//       → the results of authorizationCodeGrant, fetchUserInfo, refreshTokenGrant, revocation, end-session URL
//   node rp.mjs callback '{…, "callback", "state", "nonce", "verifier"}'
//       → {"granted": true, "sub"} or openid-client's reading of an error answer {"error", "error_description"}
import * as client from 'openid-client'

const [, , phase, raw] = process.argv
const args = JSON.parse(raw)

async function configure() {
  // id_token_alg (optional): the client's registered id_token_signed_response_alg, which openid-client then
  // requires of every ID token (an ES256 client refuses an RS256 ID token and vice versa)
  const metadata = args.id_token_alg
    ? { client_secret: args.client_secret, id_token_signed_response_alg: args.id_token_alg }
    : args.client_secret
  return client.discovery(new URL(args.issuer), args.client_id, metadata, undefined, {
    execute: [client.allowInsecureRequests], // the LiveHub serves plain http on 127.0.0.1
  })
}

async function start() {
  const config = await configure()
  const verifier = client.randomPKCECodeVerifier()
  const challenge = await client.calculatePKCECodeChallenge(verifier)
  const state = client.randomState()
  const nonce = client.randomNonce()
  const params = {
    redirect_uri: args.redirect_uri,
    scope: 'openid profile email groups offline_access',
    code_challenge: challenge,
    code_challenge_method: 'S256',
    state,
    nonce,
  }
  if (args.acr_values) params.acr_values = args.acr_values // e.g. urn:idhub:acr:mfa: a second factor, please
  const url = client.buildAuthorizationUrl(config, params)
  return { url: url.href, state, nonce, verifier, server: config.serverMetadata() }
}

async function finish() {
  const config = await configure()
  const out = {}
  const tokens = await client.authorizationCodeGrant(config, new URL(args.callback), {
    pkceCodeVerifier: args.verifier,
    expectedState: args.state,
    expectedNonce: args.nonce,
    idTokenExpected: true,
  })
  const claims = tokens.claims()
  out.claims = claims
  out.id_token_header = JSON.parse(Buffer.from(tokens.id_token.split('.')[0], 'base64url').toString())
  out.token_type = tokens.token_type
  out.userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub)
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token)
  out.refreshed = { rotated: refreshed.refresh_token !== tokens.refresh_token, claims: refreshed.claims() ?? null }
  // the old refresh token was rotated away: replaying it must fail (and revoke the family)
  try {
    await client.refreshTokenGrant(config, tokens.refresh_token)
    out.replay = 'accepted'
  } catch (err) {
    out.replay = err.error ?? err.code ?? String(err)
  }
  const fresh = await client.refreshTokenGrant(config, refreshed.refresh_token).then(
    () => 'accepted', (err) => err.error ?? err.code ?? String(err))
  out.after_replay = fresh
  // a new sign-in's tokens are revoked through the revocation endpoint
  await client.tokenRevocation(config, tokens.access_token, { token_type_hint: 'access_token' })
  try {
    await client.fetchUserInfo(config, tokens.access_token, claims.sub)
    out.userinfo_after_revocation = 'accepted'
  } catch (err) {
    out.userinfo_after_revocation = err.status ?? err.code ?? String(err)
  }
  out.end_session_url = client.buildEndSessionUrl(config, {
    id_token_hint: tokens.id_token,
    post_logout_redirect_uri: args.post_logout_redirect_uri,
    state: 'bye',
  }).href
  return out
}

async function callback() {
  const config = await configure()
  try {
    const tokens = await client.authorizationCodeGrant(config, new URL(args.callback), {
      pkceCodeVerifier: args.verifier,
      expectedState: args.state,
      expectedNonce: args.nonce,
      idTokenExpected: true,
    })
    return { granted: true, sub: tokens.claims().sub }
  } catch (err) {
    return { granted: false, name: err.name, error: err.error ?? err.code, error_description: err.error_description }
  }
}

try {
  const phases = { start, finish, callback }
  const result = await phases[phase]()
  process.stdout.write(JSON.stringify(result))
} catch (err) {
  process.stdout.write(JSON.stringify({ failure: String(err), code: err.code, error: err.error, cause: String(err.cause ?? '') }))
  process.exit(1)
}
