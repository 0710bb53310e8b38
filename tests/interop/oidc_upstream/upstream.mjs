// An upstream OpenID provider (node oidc-provider v9) shaped like Okta or Azure AD, driven by
// tests/interop/test_federation_oidc*.py:   node upstream.mjs '<json config>'
//
// config: {port, issuer, clients: [...], accounts: {login: {password, claims}}, scope_claims: {scope: [claims]},
//          template: {alias_path, issuer}  (Azure AD multi-tenant: discovery served at alias_path with the
//                                           {tenantid} issuer template, like login.microsoftonline.com/organizations)
//          graph: {path, groups: {accountId: [ids]}, page_size?, next_origin?}   (a Microsoft Graph-like memberOf
//                 endpoint for overage, paged with @odata.nextLink when page_size is set)}
// Prints "ready <port>" when listening. The login page is plain HTML (labels, no JavaScript): username,
// password and a "second factor" checkbox that decides the amr the IdP reports (["pwd"] or ["pwd", "mfa"]).
import http from 'node:http'
import { generateKeyPairSync } from 'node:crypto'
import Provider from 'oidc-provider'

const cfg = JSON.parse(process.argv[2])
const issuer = new URL(cfg.issuer)
const prefix = issuer.pathname.replace(/\/$/, '')
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'k1', use: 'sig', alg: 'RS256' }

const accounts = cfg.accounts
const provider = new Provider(cfg.issuer, {
  clients: cfg.clients,
  jwks: { keys: [jwk] },
  cookies: { keys: ['upstream-test-cookie-key-0123456789'] },
  conformIdTokenClaims: false, // email/groups/tid/oid in the ID token, as Okta and Azure AD do
  claims: cfg.scope_claims,
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => true },
  interactions: { url: (ctx, interaction) => `${prefix}/interaction/${interaction.uid}` },
  findAccount: async (ctx, id) => {
    const account = accounts[id]
    if (!account) return undefined
    return { accountId: id, claims: async () => ({ sub: id, ...account.claims }) }
  },
  ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 600, Grant: 600 },
})
provider.proxy = false

function page(uid, error) {
  return `<!doctype html><html><head><title>Upstream sign-in</title></head><body>
<h1>${cfg.title || 'Upstream IdP'} sign-in</h1>${error ? `<p role="alert">${error}</p>` : ''}
<form method="post" action="${prefix}/interaction/${uid}">
<label for="username">Username</label><input id="username" name="username" autocomplete="username">
<label for="password">Password</label><input id="password" name="password" type="password">
<label><input type="checkbox" name="mfa" value="1"> I confirmed with my second factor</label>
<button type="submit">Sign in upstream</button></form></body></html>`
}

async function readForm(req) {
  let body = ''
  for await (const chunk of req) body += chunk
  return Object.fromEntries(new URLSearchParams(body))
}

async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res)
  if (details.uid !== uid) throw new Error('interaction mismatch')
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html' })
    return res.end(page(uid))
  }
  const form = await readForm(req)
  const account = accounts[form.username]
  if (!account || account.password !== form.password) {
    res.writeHead(200, { 'content-type': 'text/html' })
    return res.end(page(uid, 'Wrong username or password'))
  }
  const grant = new provider.Grant({ accountId: form.username, clientId: details.params.client_id })
  grant.addOIDCScope(details.params.scope)
  const grantId = await grant.save()
  const amr = form.mfa === '1' ? ['pwd', 'mfa'] : ['pwd']
  return provider.interactionFinished(req, res, { login: { accountId: form.username, amr }, consent: { grantId } },
    { mergeWithLastSubmission: false })
}

async function graph(req, res) {
  const auth = req.headers.authorization || ''
  const token = auth.startsWith('Bearer ') ? await provider.AccessToken.find(auth.slice(7)) : undefined
  if (!token) {
    res.writeHead(401, { 'content-type': 'application/json' })
    return res.end('{"error":"invalid_token"}')
  }
  const all = (cfg.graph.groups[token.accountId] || []).map((id) => ({ '@odata.type': '#microsoft.graph.group', id }))
  // paging like Microsoft Graph: page_size entries per page, "@odata.nextLink" to the next one (on next_origin
  // when the test wants a hostile link to another host)
  const page = parseInt(new URL(req.url, 'http://x').searchParams.get('page') || '0', 10)
  const size = cfg.graph.page_size || Math.max(all.length, 1)
  const body = { value: all.slice(page * size, (page + 1) * size) }
  if ((page + 1) * size < all.length) {
    const origin = cfg.graph.next_origin || `http://127.0.0.1:${cfg.port}`
    body['@odata.nextLink'] = `${origin}${cfg.graph.path}?page=${page + 1}`
  }
  res.writeHead(200, { 'content-type': 'application/json' })
  return res.end(JSON.stringify(body))
}

async function templateDiscovery(req, res) {
  const r = await fetch(`${cfg.issuer}/.well-known/openid-configuration`)
  const doc = await r.json()
  doc.issuer = cfg.template.issuer
  res.writeHead(200, { 'content-type': 'application/json' })
  return res.end(JSON.stringify(doc))
}

const callback = provider.callback()
const server = http.createServer(async (req, res) => {
  try {
    const path = new URL(req.url, 'http://x').pathname
    const m = path.match(new RegExp(`^${prefix}/interaction/([A-Za-z0-9_-]+)$`))
    if (m) return await interaction(req, res, m[1])
    if (cfg.graph && path === cfg.graph.path) return await graph(req, res)
    if (cfg.template && path === `${cfg.template.alias_path}/.well-known/openid-configuration`) {
      return await templateDiscovery(req, res)
    }
    if (prefix && path.startsWith(prefix)) {
      req.originalUrl = req.url
      req.url = req.url.slice(prefix.length) || '/'
    }
    return callback(req, res)
  } catch (err) {
    res.writeHead(500, { 'content-type': 'text/plain' })
    res.end(String(err))
  }
})
server.listen(cfg.port, '127.0.0.1', () => process.stdout.write(`ready ${cfg.port}\n`))
